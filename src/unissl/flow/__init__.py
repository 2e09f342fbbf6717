"""Flow-matching math: probability paths, training-time samplers and ODE solvers (no networks)."""

from unissl.flow.path import LinearPath, PathSample, expand_time
from unissl.flow.solvers import SOLVERS, euler, heun, solve, time_grid
from unissl.flow.time import LogitNormalTime, TimeSampler, UniformTime

__all__ = ["LinearPath", "PathSample", "expand_time", "SOLVERS", "euler", "heun", "solve", "time_grid",
           "LogitNormalTime", "TimeSampler", "UniformTime"]
