"""A resumable chain of CLI stages: tokenizer -> token store -> Sorcen -> evaluation -> RepTok -> samples.

A pipeline is a list of stages, each one a registered ``unissl`` command with a config mapping (the same
keys the command's ``--config`` YAML takes), or a Python script with arguments (a benchmark arm). Strings may
reference ``{out}`` (the pipeline's run directory), ``{seed}`` and ``{stage:<name>}`` (another stage's output
directory).

A pipeline file may be derived from another one (:func:`resolve_pipeline`)::

    extends: fashion-mnist-study-fast.yaml   # this file, relative to the including one (or a shipped config)
    out: runs/fmnist-study-6ep               # top-level values replace the base's
    vars: {epochs: 6}                        # vars merge; "{epochs}" anywhere in a stage takes the value
    stages:                                  # a stage named like one of the base's overrides it: its
      - {name: sorcen, config: {loss: {mask_max: 0.7}}}   # config merges in; a new name is appended

and a grid item in ``stages`` writes an evaluation template once for every encoder (more axes: every
combination, the first axis outermost; a value that is a mapping is read field by field, ``{arm.lr}``; seeds
come from ``seeds:``)::

      - grid: {encoder: [sorcen, mage]}
        stages:
          - {name: "probe-{encoder}", command: eval linear-probe, output_key: run_dir,
             config: {extractor: "sorcen:{stage:{encoder}}", dataset: fashion-mnist, run_dir: "{out}/eval"}}

A whole-string ``"{name}"`` keeps the value's type (``epochs: "{epochs}"`` is the number 6), so a stage
written through vars or a grid has the same config, and the same hash, as the one written out by hand.

Bookkeeping lives in ``<out>/stages/<name>.json``: the stage's resolved config, its hash (of the command and
the settings the pipeline file gives it, so that options added to a command later do not invalidate finished
stages), its status and its wall-clock time; its output is kept in ``<out>/stages/<name>.log``. On a re-run a
stage whose status is ``done`` with the same hash is skipped; a stage that was ``started`` but never finished
(a crash, a kill) is run again, with ``train.resume = true`` where its config has a training section, so
training continues from its last checkpoint instead of starting over.

One scheduler runs every pipeline (:func:`run_pipeline`): ``jobs=1`` runs the stages one after another in
this process, ``jobs=N`` up to N independent ones at once, each in its own process.

A training stage (a command with a ``train`` section) may run data-parallel over several processes on this
machine, ``nproc: N`` beside its ``command`` (default 1)::

      - {name: sorcen, command: train sorcen, nproc: 2, config: {...}}

It is launched as ``python -m torch.distributed.run --standalone --nproc_per_node=N -m unissl <command>`` (gloo
on CPU; only rank 0's output reaches the stage log), also with ``jobs=1``, and holds N of the ``jobs`` slots: it
starts once N are free, and no stage after it in launch order starts while it waits, so it is never starved.
With ``N > jobs`` it still runs N processes, alone. DDP draws other random numbers than one process, so an
``nproc`` other than 1 is part of the stage's hash (``nproc: 1``, or no key, leaves the hash as it was).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from unissl.cli import COMMANDS
from unissl.config import from_dict, load_yaml, shipped_config, stable_hash, to_dict
from unissl.errors import ConfigError, UnisslError
from unissl.findings import INVOCATION_FILE
from unissl.utils.io import pid_alive, read_json, write_json

_NAME = r"[A-Za-z0-9_.\-]+"  # stage names: letters, digits, '_', '.', '-'
_REF = re.compile(r"\{(out|seed|stage:" + _NAME + r")\}")
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\}")  # {name}, {axis.field}
_RESERVED = {"out", "seed", "stage"}  # substituted when a stage runs, never by vars
_FILE_KEYS = {"extends", "out", "seed", "seeds", "vars", "stages", "goals"}  # what a base pipeline file may hold
SCRIPT = "script"  # the command of a stage that runs a Python script


@dataclass
class Stage:
    """One step of a pipeline: a registered command and its (partial) config, or a script and its arguments
    (``command`` is ``"script"``, ``config`` is ``{"script", "args", "output"}``)."""

    name: str
    command: str  # e.g. "tokenizer train", "eval linear-probe", or SCRIPT
    config: dict[str, Any]
    output_key: str | None = None  # the config key holding the stage's output directory (default: "out")
    shared: bool = False  # in a multi-seed pipeline: run once (first seed) in the root, not once per seed
    nproc: int = 1  # processes of a training stage (torchrun, data-parallel); holds this many `jobs` slots


# ---------------------------------------------------------------------------------------------- the file
def _fill(value: Any, names: dict[str, Any]) -> Any:
    """``value`` with every ``{name}`` of ``names`` replaced; a whole-string ``"{name}"`` keeps the type."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole and whole.group(1) in names:
            return copy.deepcopy(names[whole.group(1)])
        return _VAR.sub(lambda m: str(names[m.group(1)]) if m.group(1) in names else m.group(0), value)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def _check_names(names: dict[str, Any], where: str) -> None:
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in _RESERVED:
            raise UnisslError(f"pipeline: {where} name {name!r} must be an identifier other than "
                              f"{sorted(_RESERVED)}")


def _expand(items: Any, names: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The stage list ``items`` with grid items expanded and ``names`` filled in."""
    if not isinstance(items, list):
        raise UnisslError(f"pipeline: {where}: 'stages' must be a list, got {type(items).__name__}")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UnisslError(f"pipeline: {where}: stage #{i} must be a mapping, got {item!r}")
        if "grid" not in item:
            out.append(_fill(item, names))
            continue
        grid = item["grid"]
        extra = set(item) - {"grid", "stages"}
        if extra or not isinstance(grid, dict) or not grid or "stages" not in item:
            raise UnisslError(f"pipeline: {where}: a grid item is {{grid: {{axis: [values]}}, stages: [...]}}, "
                              f"got keys {sorted(item)}")
        _check_names(grid, f"{where}: grid axis")
        clash = sorted(set(grid) & set(names))
        if clash:
            raise UnisslError(f"pipeline: {where}: grid axis {clash} is also a var or an outer axis; rename one")
        for axis, values in grid.items():
            if not isinstance(values, list) or not values:
                raise UnisslError(f"pipeline: {where}: grid axis {axis!r} needs a non-empty list, got {values!r}")
        for combo in itertools.product(*grid.values()):
            local = dict(names)
            for axis, value in zip(grid, combo):
                local[axis] = value
                if isinstance(value, dict):  # a value with fields: {axis.field}
                    local.update({f"{axis}.{k}": v for k, v in value.items()})
            out.extend(_expand(item["stages"], local, where))
    return out


def _find_file(ref: Any, here: Path | None, where: str) -> Path:
    """The file ``extends: ref`` names: relative to the including file, the working directory, or shipped."""
    if not isinstance(ref, str) or not ref:
        raise UnisslError(f"pipeline: {where}: 'extends' must be a file name, got {ref!r}")
    candidates = [here / ref] if here is not None and not Path(ref).is_absolute() else []
    candidates += [Path(ref)]
    shipped = shipped_config(ref)
    candidates += [shipped] if shipped is not None else []
    for path in candidates:
        if path.is_file():
            return path
    raise UnisslError(f"pipeline: {where}: extends {ref!r}, which is not a file (looked for "
                      f"{', '.join(str(c) for c in candidates)}); give a path relative to the including file")


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``upd`` merged in (mappings merge, anything else is replaced); both are left intact."""
    merged = copy.deepcopy(base)
    for k, v in upd.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else copy.deepcopy(v)
    return merged


def resolve_pipeline(spec: dict[str, Any], here: str | Path | None = None) -> dict[str, Any]:
    """A pipeline mapping with ``extends``, ``vars`` and grids resolved into a plain one (``out``, ``seed``,
    ``seeds``, ``stages``: the keys it or its bases set), the format every stage list had before.

    ``here`` is the directory of the file ``spec`` came from (for a relative ``extends``). Later layers win:
    top-level values replace, ``vars`` merge, a stage of an earlier layer with the same name is overridden
    (``config`` merges in, other keys replace) and new stages are appended in order.
    """
    layers: list[tuple[dict[str, Any], str]] = [(spec, "the pipeline file")]
    seen: list[Path] = []
    current, current_dir = spec, Path(here) if here is not None else None
    while current.get("extends"):
        path = _find_file(current["extends"], current_dir, layers[0][1])
        if path.resolve() in seen:
            raise UnisslError(f"pipeline: {path} extends itself (through {[str(p) for p in seen]})")
        seen.append(path.resolve())
        current, current_dir = load_yaml(path), path.parent
        unknown = set(current) - _FILE_KEYS
        if unknown:
            raise UnisslError(f"pipeline: {path} has keys {sorted(unknown)} a base pipeline file cannot hold; "
                              f"a base holds {sorted(_FILE_KEYS)} (run options go on the command line)")
        layers.insert(0, (current, str(path)))
    plain: dict[str, Any] = {}
    names: dict[str, Any] = {}
    for layer, where in layers:
        for key, value in layer.items():
            if key == "vars":
                if not isinstance(value, dict):
                    raise UnisslError(f"pipeline: {where}: 'vars' must be a mapping, got {value!r}")
                _check_names(value, f"{where}: var")
                names.update(value)
            elif key not in ("extends", "stages"):
                plain[key] = value
    stages: list[dict[str, Any]] = []
    for depth, (layer, where) in enumerate(layers):
        index = {s.get("name"): i for i, s in enumerate(stages)}
        in_layer: set[Any] = set()
        for item in _expand(layer.get("stages") or [], names, where):
            name = item.get("name")
            if name in in_layer:
                raise UnisslError(f"pipeline: {where}: stage name {name!r} is used twice")
            in_layer.add(name)
            if depth and name in index:
                base = stages[index[name]]
                stages[index[name]] = {**base, **{k: v for k, v in item.items() if k != "config"},
                                       "config": _merge(base.get("config") or {}, item.get("config") or {})}
            else:
                stages.append(item)
    if names or any("grid" in s for layer, _ in layers for s in (layer.get("stages") or []) if isinstance(s, dict)):
        for item in stages:  # a {name} left over is a typo (a var or an axis that does not exist)
            left = sorted(set(_VAR.findall(json.dumps(item))) - _RESERVED)
            if left:
                raise UnisslError(f"pipeline: stage {item.get('name')!r} uses {{{left[0]}}}, which is neither a var "
                                  f"({sorted(names)}) nor a grid axis; define it under 'vars'")
    plain["stages"] = stages
    return plain


def load_pipeline(path: str | Path) -> dict[str, Any]:
    """Read a pipeline file (a path, or a config shipped with unissl) and resolve it (:func:`resolve_pipeline`)."""
    found = Path(path)
    if not found.is_file() and not found.is_absolute():
        found = shipped_config(found) or found
    return resolve_pipeline(load_yaml(found), found.parent)


def _substitute(value: Any, out: Path, seed: int, outputs: dict[str, str]) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            key = m.group(1)
            if key == "out":
                return str(out)
            if key == "seed":
                return str(seed)
            name = key.split(":", 1)[1]
            if name not in outputs:
                raise UnisslError(f"pipeline: {{{key}}} refers to stage {name!r}, which is not defined before it")
            return outputs[name]
        new = _REF.sub(repl, value)
        # keep integers integers when a whole value was a placeholder such as "{seed}"
        return int(new) if value == "{seed}" else new
    if isinstance(value, dict):
        return {k: _substitute(v, out, seed, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, out, seed, outputs) for v in value]
    return value


def _command_module(command: str):
    words = command.split()
    key = (words[0], words[1]) if len(words) == 2 else (None, words[0])
    if key not in COMMANDS:
        raise UnisslError(f"pipeline: unknown command {command!r}; see `unissl --help`")
    return importlib.import_module(COMMANDS[key].module)


def parse_stages(raw: list[dict[str, Any]]) -> list[Stage]:
    """Validate the ``stages`` list of a (resolved) pipeline config.

    A stage is ``{name, command, config, output_key, shared, nproc}`` or, for a script, ``{name, script, args,
    output, shared}`` (``args`` a list or one string split like a shell line; ``output`` the file or directory
    it writes, replaced when its settings change). Whether a stage with ``nproc > 1`` trains is checked by
    :func:`check_stages`, which imports the commands."""
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "name" not in item or ("command" in item) == ("script" in item):
            raise UnisslError(f"pipeline: stage #{i} needs a 'name' and either a 'command' or a 'script', "
                              f"got {item!r}")
        allowed = {"name", "shared", "nproc"} | ({"command", "config", "output_key"} if "command" in item
                                                 else {"script", "args", "output"})
        unknown = set(item) - allowed
        if unknown:
            raise UnisslError(f"pipeline: stage {item['name']!r} has unknown keys {sorted(unknown)}; "
                              f"it may have {sorted(allowed)}")
        if not isinstance(item["name"], str) or not re.fullmatch(_NAME, item["name"]):
            raise UnisslError(f"pipeline: stage name {item['name']!r} may only use letters, digits, '_', '.' and '-'")
        if item["name"] in seen:
            raise UnisslError(f"pipeline: stage name {item['name']!r} is used twice")
        seen.add(item["name"])
        shared = item.get("shared", False)
        if not isinstance(shared, bool):
            raise UnisslError(f"pipeline: stage {item['name']!r}: 'shared' must be true or false, got {shared!r}")
        nproc = item.get("nproc", 1)
        if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
            raise UnisslError(f"pipeline: stage {item['name']!r}: 'nproc' must be a whole number of processes "
                              f">= 1, got {nproc!r}")
        if "script" in item:
            if nproc != 1:
                raise UnisslError(f"pipeline: stage {item['name']!r}: nproc applies to training commands only, "
                                  f"not to a script")
            args = item.get("args") or []
            if not isinstance(args, (str, list)):
                raise UnisslError(f"pipeline: stage {item['name']!r}: 'args' must be a list or a string, got {args!r}")
            config = {"script": str(item["script"]), "args": args, "output": item.get("output")}
            stages.append(Stage(item["name"], SCRIPT, config, "output", shared))
            continue
        stages.append(Stage(item["name"], item["command"], dict(item.get("config") or {}), item.get("output_key"),
                            shared, nproc))
    return stages


def _stage_output(stage: Stage, resolved: dict[str, Any]) -> str | None:
    key = stage.output_key or "out"
    node: Any = resolved
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return None if node is None else str(node)


def _dependencies(stage: Stage) -> list[str]:
    """Names of the stages whose outputs ``stage`` reads (its ``{stage:NAME}`` references)."""
    return sorted(set(re.findall(r"\{stage:(" + _NAME + r")\}", json.dumps(stage.config))))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return path.resolve() != root.resolve()


@dataclass
class _Plan:
    """What to do with one stage now: ``run`` (with ``cfg`` and the ``record`` to write) or skip."""

    run: bool
    record: dict[str, Any]
    cfg: Any = None
    module: Any = None
    marker: Path | None = None


def _scope_outputs(stages: list[Stage], out: Path, seed: int, outputs: dict[str, str]) -> tuple[dict[str, str],
                                                                                          dict[str, int]]:
    """Every stage's output path in this scope (statically substituted) and how many stages write each path."""
    first = dict(outputs)
    produced_by: dict[str, int] = {}
    for stage in stages:
        p = _stage_output(stage, _substitute(copy.deepcopy(stage.config), out, seed, first))
        if p is not None:
            first[stage.name] = p
            produced_by[p] = produced_by.get(p, 0) + 1
    return first, produced_by


def _agrees(explicit: Any, recorded: Any) -> bool:
    """Whether every setting in ``explicit`` (a pipeline stage's config) has the same value in ``recorded``
    (a stage record's resolved config); lists and tuples compare alike, numbers by value."""
    if isinstance(explicit, dict):
        return isinstance(recorded, dict) and all(k in recorded and _agrees(v, recorded[k])
                                                  for k, v in explicit.items())
    if isinstance(explicit, (list, tuple)):
        return (isinstance(recorded, (list, tuple)) and len(explicit) == len(recorded)
                and all(_agrees(a, b) for a, b in zip(explicit, recorded)))
    if isinstance(explicit, (int, float)) and isinstance(recorded, (int, float)) \
            and not isinstance(explicit, bool) and not isinstance(recorded, bool):
        return float(explicit) == float(recorded)
    return explicit == recorded or (isinstance(recorded, str) and str(explicit) == recorded)


def _same_run(previous: dict[str, Any], explicit: dict[str, Any], stage: Stage,
              records: dict[str, dict[str, Any]]) -> bool:
    """A done record whose hash differs only because another unissl version wrote it: same command, every
    setting the pipeline gives agrees with the recorded config, and no stage it reads finished after it started."""
    if (previous.get("command") != stage.command or previous.get("nproc", 1) != stage.nproc
            or not _agrees(explicit, previous.get("config"))):
        return False
    started = previous.get("started_at")
    for d in _dependencies(stage):
        finished = records.get(d, {}).get("finished_at")
        if started is None or finished is None or finished > started:
            return False
    return True


def _plan_stage(stage: Stage, out: Path, seed: int, outputs: dict[str, str], records: dict[str, dict[str, Any]],
                produced_by: dict[str, int], only: list[str] | None, force: list[str] | None, dry_run: bool,
                log) -> _Plan:
    """Resolve and validate ``stage``, then decide: skip (done with the same hash, or not in ``only``), resume
    (started, same hash), or run (replacing stale outputs of an earlier config)."""
    explicit = _substitute(copy.deepcopy(stage.config), out, seed, outputs)
    module: Any = None
    if stage.command == SCRIPT:
        resolved = copy.deepcopy(explicit)
        args = explicit["args"]
        cfg: Any = [sys.executable, explicit["script"], *(shlex.split(args) if isinstance(args, str) else map(str, args))]
    else:
        module = _command_module(stage.command)
        cfg = from_dict(module.Config, copy.deepcopy(explicit))  # validates keys and types before anything runs
        resolved = to_dict(cfg)
    # A stage's identity is its command, the settings the pipeline gives it (not the command's defaults:
    # a new option with a default in a later unissl must not re-run, and delete, finished stages) and the
    # runs of the stages it reads from, so that re-running an upstream stage (new weights behind the same
    # path) re-runs everything downstream.
    upstream = {d: [records.get(d, {}).get("hash"), records.get(d, {}).get("finished_at")]
                for d in _dependencies(stage)}
    # More than one process draws other random numbers (a shard per rank): a stage of its own, while one
    # process keeps the hash every stage had before `nproc` existed.
    own = stable_hash([stage.command, explicit] + ([{"nproc": stage.nproc}] if stage.nproc != 1 else []))
    digest = own if not upstream else stable_hash([own, upstream])
    produced = _stage_output(stage, resolved)
    marker = out / "stages" / f"{stage.name}.json"
    previous = read_json(marker) if marker.is_file() else None
    if only and stage.name not in only:
        return _Plan(False, previous or {"status": "not run"})
    if (previous and previous.get("status") in ("done", "started") and previous.get("hash") != digest
            and stage.name not in (force or []) and _same_run(previous, explicit, stage, records)):
        # recorded by another unissl version (another hash scheme or defaults): the same settings and no
        # upstream stage re-run since, so it is the same stage (done: skipped; started: resumed); the
        # record moves to this hash
        previous = {**previous, "hash": digest}
        if not dry_run:
            write_json(marker, previous)
    if (previous and previous.get("status") == "done" and previous.get("hash") == digest
            and stage.name not in (force or [])):
        log(f"[pipeline] {stage.name}: done earlier with the same config ({digest}); skipped")
        return _Plan(False, previous)
    if (previous and previous.get("status") == "started" and previous.get("hash") == digest
            and isinstance(resolved.get("train"), dict) and "resume" in resolved["train"]):
        log(f"[pipeline] {stage.name}: an earlier attempt did not finish; resuming its training")
        resolved["train"]["resume"] = True
        cfg = from_dict(module.Config, resolved)
    elif (previous and produced is not None and produced_by.get(produced, 0) == 1
          and _inside(Path(produced), out) and Path(produced).exists()):
        # The stage ran before with another config (or is forced): its outputs are stale, and
        # training commands refuse to start over in a run directory that has checkpoints.
        log(f"[pipeline] {stage.name}: config changed or forced; replacing {produced}")
        if not dry_run:
            if Path(produced).is_dir():
                shutil.rmtree(produced)
            else:  # a stage whose output is one file (e.g. an interpolation strip)
                Path(produced).unlink()
    if dry_run:
        log(f"[pipeline] {stage.name}: would run `{_program(stage.command, resolved, stage.nproc)}` ({digest})")
        return _Plan(False, {"status": "dry run"})
    record = {"name": stage.name, "command": stage.command, "hash": digest, "status": "started",
              "config": resolved, "output": produced}
    if stage.nproc != 1:
        record["nproc"] = stage.nproc
    return _Plan(True, record, cfg, module, marker)


def _program(command: str, resolved: dict[str, Any], nproc: int = 1) -> str:
    """How a stage is named in the log: ``unissl eval knn``, ``torchrun --nproc_per_node=2 -m unissl train
    sorcen`` or ``python benchmarks/x.py``."""
    if command == SCRIPT:
        return f"python {resolved['script']}"
    return f"unissl {command}" if nproc == 1 else f"torchrun --nproc_per_node={nproc} -m unissl {command}"


def _start_record(plan: _Plan, log) -> float:
    program = _program(plan.record["command"], plan.record["config"], plan.record.get("nproc", 1))
    log(f"[pipeline] {plan.record['name']}: running `{program}` ({plan.record['hash']})")
    plan.record["started_at"] = time.time()
    assert plan.marker is not None
    write_json(plan.marker, plan.record)
    return time.perf_counter()


def _finish_record(plan: _Plan, t0: float, log) -> None:
    plan.record.update(status="done", seconds=round(time.perf_counter() - t0, 2), finished_at=time.time())
    assert plan.marker is not None
    write_json(plan.marker, plan.record)
    log(f"[pipeline] {plan.record['name']}: done in {plan.record['seconds']:.1f} s")


LOCK_FILE = ".pipeline.lock"


@contextlib.contextmanager
def scope_lock(directory: Path, dry_run: bool = False):
    """Hold ``<directory>/.pipeline.lock`` (the holder's pid) while stages run in ``directory``.

    A second pipeline on the same directory is refused with the holder's pid; a lock left by a process
    that no longer exists (a kill) is taken over.
    """
    if dry_run:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and pid_alive(holder):
                raise UnisslError(f"pipeline: {directory} is in use by another `unissl pipeline` (pid {holder}, "
                                  f"lock {lock}); wait for it or stop it") from None
            lock.unlink(missing_ok=True)  # a stale lock of a killed run
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- the scheduler
@dataclass
class _Unit:
    """One stage in one scope (the pipeline root, or a seed's directory) for the scheduler."""

    key: str  # record key: "<stage>" or "seed<s>/<stage>"
    stage: Stage
    out: Path
    seed: int
    outputs: dict[str, str]  # every stage's output path visible from this scope
    produced_by: dict[str, int]
    names: dict[str, str]  # stage name -> unit key in this scope (shared stages included)
    deps: set[str]  # unit keys this one waits for


def _reads(stage: Stage, out: Path, seed: int, outputs: dict[str, str], earlier: list[str]) -> set[str]:
    """Earlier stages whose output ``stage`` reads: its ``{stage:NAME}`` references and any config string
    inside an earlier stage's output path (e.g. ``{out}/samples/x.npz``)."""

    deps = set(_dependencies(stage))
    text = json.dumps(_substitute(copy.deepcopy(stage.config), out, seed, outputs))
    for name in earlier:
        path = outputs.get(name)
        if path and re.search(re.escape(path.rstrip("/")) + r"(/|\")", text):
            deps.add(name)
    return deps


def _row_first(units: dict[str, _Unit], key: str, order: list[str]) -> tuple[int, int, int]:
    """Launch priority of a unit in a multi-seed study: shared stages first, then one row at a time.

    A unit's row is the earliest stage (in file order) it descends from within its own scope, shared stages
    aside (every stage reads the shared tokens), so
    `probe-sorcen`, `samples-sorcen` and `fd-sorcen` share `sorcen`'s row. Rows go in file order, seeds
    within a row, so a study stopped part-way holds complete rows (an encoder on every seed with all of its
    evaluations) instead of every encoder trained on seed 0 and none evaluated on seed 2."""
    seen: dict[str, int] = {}

    def row(k: str) -> int:
        if k not in seen:
            unit = units[k]
            own = [d for d in unit.deps if units[d].out == unit.out and not units[d].stage.shared]
            seen[k] = min([order.index(unit.stage.name)] + [row(d) for d in own])
        return seen[k]

    unit = units[key]
    if unit.stage.shared:
        return (-1, 0, order.index(unit.stage.name))
    return (row(key), unit.seed, order.index(unit.stage.name))


def _units(stages: list[Stage], out: Path, seed: int, seeds: list[int] | None) -> dict[str, _Unit]:
    """Every stage in every scope (the root, and each seed's directory in a study) as a schedulable unit,
    in launch order (see :func:`_row_first`)."""
    units: dict[str, _Unit] = {}
    scopes: list[tuple[list[Stage], Path, int, str, dict[str, str], dict[str, str]]] = []
    if not seeds:
        scopes.append((stages, out, seed, "", {}, {}))
    else:
        shared = [s for s in stages if s.shared]
        shared_out, _ = _scope_outputs(shared, out, seeds[0], {})
        scopes.append((shared, out, seeds[0], "", {}, {}))
        for s in seeds:
            scopes.append(([st for st in stages if not st.shared], out / f"seed{s}", s, f"seed{s}/",
                           dict(shared_out), {st.name: st.name for st in shared}))
    for scope_stages, scope_out, scope_seed, prefix, inherited, inherited_names in scopes:
        outputs, produced_by = _scope_outputs(scope_stages, scope_out, scope_seed, inherited)
        names = dict(inherited_names)
        earlier = list(inherited_names)
        for stage in scope_stages:
            reads = _reads(stage, scope_out, scope_seed, outputs, earlier)
            names[stage.name] = prefix + stage.name
            units[prefix + stage.name] = _Unit(prefix + stage.name, stage, scope_out, scope_seed, outputs,
                                               produced_by, dict(names), {names[d] for d in reads if d in names})
            earlier.append(stage.name)
    return {k: units[k] for k in sorted(units, key=lambda k: _row_first(units, k, [s.name for s in stages]))}


def _keyed(log, key: str):
    """``log`` with the stage named by its unit key (``seed1/probe-sorcen``): parallel seeds interleave."""
    scope = key.rpartition("/")[0]
    if not scope:
        return log
    return lambda message: log(message.replace("[pipeline] ", f"[pipeline] {scope}/", 1))


class _LogTee(io.TextIOBase):
    """A text stream writing to ``console`` as is and to ``file`` line by line as a terminal would show it: of
    a line redrawn with carriage returns (a progress bar) only its last state is kept."""

    def __init__(self, console: TextIO, file: TextIO) -> None:
        self.console, self.file, self._pending = console, file, ""

    def write(self, text: str) -> int:
        self.console.write(text)
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self.file.write(line.rsplit("\r", 1)[-1] + "\n")
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def close_line(self) -> None:
        """Write what is left of an unfinished last line."""
        if self._pending.rsplit("\r", 1)[-1].strip():
            self.file.write(self._pending.rsplit("\r", 1)[-1] + "\n")
        self._pending = ""


def _argv(unit: _Unit, plan: _Plan) -> tuple[list[str], Path | None]:
    """The command line of a planned stage run in a child process and the resolved config file it reads (to
    delete once it ends; None for a script): ``unissl <command> --config <yaml>``, under torchrun with
    ``nproc > 1`` (a free rendezvous port of its own)."""
    if plan.module is None:
        return list(plan.cfg), None
    fd, cfg_name = tempfile.mkstemp(prefix=f".{unit.stage.name}.", suffix=".yaml", dir=unit.out / "stages")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(to_dict(plan.cfg), f)
    return [*_launcher(unit.stage.nproc), "-m", "unissl", *unit.stage.command.split(), "--config", cfg_name], \
        Path(cfg_name)


def _launcher(nproc: int) -> list[str]:
    """This Python, under torchrun for ``nproc > 1``. Every rank's output reaches the log: only rank 0 prints
    progress, so the other ranks write nothing but their own error (a rank that fails alone is named by it)."""
    if nproc <= 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def _run_here(unit: _Unit, plan: _Plan, log, env: dict[str, str]) -> dict[str, Any]:
    """Run a planned stage in this process (``--jobs 1``), its output on the console and in
    ``<scope>/stages/<name>.log``; a script stage, and one of several processes, runs as a child process (with
    ``env``) whose output is passed on."""
    log_path = unit.out / "stages" / f"{unit.stage.name}.log"
    t0 = _start_record(plan, log)
    with open(log_path, "w", encoding="utf-8") as log_file:
        if plan.module is None or unit.stage.nproc > 1:  # a script, or a torchrun job
            argv, cfg_path = _argv(unit, plan)
            log_file.write(shlex.join(argv) + "\n")
            tee = _LogTee(sys.stdout, log_file)
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        errors="replace", env=env if plan.module is not None else None)
                assert proc.stdout is not None
                try:
                    for line in proc.stdout:
                        tee.write(line)
                finally:
                    if proc.poll() is None:  # interrupted while it runs: no orphan
                        proc.terminate()
                    proc.wait()
                    tee.close_line()
            finally:
                if cfg_path is not None:
                    cfg_path.unlink(missing_ok=True)
            if proc.returncode != 0:
                log_file.flush()  # its last line is read back from the file
                raise UnisslError(f"pipeline: stage {unit.key} failed (exit {proc.returncode}): "
                                  f"{_last_line(log_path)}; its log is {log_path}")
        else:
            out_tee, err_tee = _LogTee(sys.stdout, log_file), _LogTee(sys.stderr, log_file)
            try:
                with contextlib.redirect_stdout(out_tee), contextlib.redirect_stderr(err_tee):
                    plan.module.run(plan.cfg)
            finally:
                out_tee.close_line()
                err_tee.close_line()
    _finish_record(plan, t0, log)
    return plan.record


def _launch(unit: _Unit, plan: _Plan, env: dict[str, str], log) -> tuple[Any, _Plan, float, Path | None, Any, Path]:
    """Start a planned stage in its own process (``unissl <command> --config <resolved yaml>``, torchrun's
    processes, or the script), its output in ``<scope>/stages/<name>.log``; returns (process, plan, start time,
    config file, log file, log path)."""
    argv, cfg_path = _argv(unit, plan)
    log_path = unit.out / "stages" / f"{unit.stage.name}.log"
    t0 = _start_record(plan, log)
    log_file = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return proc, plan, t0, cfg_path, log_file, log_path


def check_stages(stages: list[Stage], out: Path, seed: int = 0, seeds: list[int] | None = None) -> None:
    """Check every stage's config (keys, types, values), in every scope, before the first stage runs, so a typo
    in the last stage is one line naming that stage instead of a failure after the stages before it ran."""
    scopes: list[tuple[list[Stage], Path, int, dict[str, str]]] = [(stages, out, seed, {})]
    if seeds:
        shared = [s for s in stages if s.shared]
        shared_out, _ = _scope_outputs(shared, out, seeds[0], {})
        scopes = [(shared, out, seeds[0], {})] + [([s for s in stages if not s.shared], out / f"seed{s}", s,
                                                    dict(shared_out)) for s in seeds]
    for scope_stages, scope_out, scope_seed, inherited in scopes:
        outputs, _ = _scope_outputs(scope_stages, scope_out, scope_seed, inherited)
        for stage in scope_stages:
            if stage.command == SCRIPT:
                continue
            where = f"pipeline: stage {(f'seed{scope_seed}/' if scope_out != out else '') + stage.name}"
            module = _command_module(stage.command)
            try:
                cfg = from_dict(module.Config, _substitute(copy.deepcopy(stage.config), scope_out, scope_seed,
                                                           outputs), source=where)
            except ConfigError as e:  # the stage and the key, never the pipeline command's flag
                raise ConfigError(e.path, e.reason, where) from None
            except UnisslError as e:
                raise UnisslError(f"{where}: {e}") from None
            if stage.nproc > 1 and not hasattr(getattr(cfg, "train", None), "resume"):  # no Trainer to join
                raise UnisslError(f"{where}: nproc applies to training commands only (a command with a `train` "
                                  f"section, e.g. train sorcen), not to {stage.command!r}")


def _slots(nproc: int, jobs: int) -> int:
    """The ``jobs`` slots a stage of ``nproc`` processes holds while it runs: one per process, all of them
    when it has more processes than there are slots (it then runs alone rather than never)."""
    return min(nproc, jobs)


def run_pipeline(stages: list[Stage], out: str | Path, seed: int = 0, only: list[str] | None = None,
                 force: list[str] | None = None, dry_run: bool = False, log=print,
                 seeds: list[int] | None = None, jobs: int = 1) -> dict[str, dict[str, Any]]:
    """Run (or skip) every stage; returns each stage's record.

    ``jobs=1`` runs the stages one after another in this process (a script stage, and a training stage with
    ``nproc > 1``, in child processes); with ``jobs=N`` up to N slots of independent stages run at once, each
    in its own ``unissl`` process with one intra-op thread (``OMP_NUM_THREADS=1``); a stage of ``nproc``
    torchrun processes holds ``nproc`` slots (:func:`_slots`). A stage starts when every stage it reads from
    has finished and its slots are free (until they are, no later stage starts); among the ready ones, a
    study finishes one encoder's row on every seed before the next (:func:`_row_first`).
    Either way a stage's output is kept in ``<scope>/stages/<name>.log``.

    With ``seeds`` (a multi-seed study) the stages marked ``shared`` run once, with the first seed, and
    write below ``out``; every other stage runs once per seed with ``{out}`` = ``out/seed<s>`` and
    ``{seed}`` = s. Records are then keyed ``"<stage>"`` for shared stages and ``"seed<s>/<stage>"``.
    """
    out = Path(out)
    if jobs < 1:
        raise UnisslError(f"pipeline: jobs must be >= 1, got {jobs}")
    for setting, asked in (("only", only), ("force", force)):
        unknown = sorted(set(asked or []) - {s.name for s in stages})
        if unknown:
            raise ConfigError(setting, f"names unknown stage(s) {unknown}; stages are {[s.name for s in stages]}")
    if seeds:
        if len(set(seeds)) != len(seeds):
            raise UnisslError(f"pipeline: seeds {seeds} repeat a value")
        names = {s.name for s in stages if s.shared}
        for stage in stages:
            late = [d for d in _dependencies(stage) if d not in names]
            if stage.shared and late:
                raise UnisslError(f"pipeline: shared stage {stage.name!r} reads per-seed stage(s) {late}; "
                                  "a shared stage may only read other shared stages")
    check_stages(stages, out, seed, seeds)  # every stage's config before the first one runs
    units = _units(stages, out, seed, seeds)
    records: dict[str, dict[str, Any]] = {}
    running: dict[str, tuple[subprocess.Popen, _Plan, float, Path | None, Any, Path]] = {}
    slots: dict[str, int] = {}  # the `jobs` slots each running stage holds
    waiting: dict[str, _Plan] = {}  # planned stages that wait for enough free slots
    pending = list(units)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def _stop(signum, frame):  # a SIGTERM (kill, a job scheduler) must not leave orphaned stage processes
        raise SystemExit(128 + signum)

    with contextlib.ExitStack() as locks:  # every lock taken so far is released, also when a later one is refused
        if not dry_run:  # a dry run creates nothing
            for scope_dir in dict.fromkeys(u.out for u in units.values()):
                locks.enter_context(scope_lock(scope_dir))
                (scope_dir / "stages").mkdir(parents=True, exist_ok=True)
        main_thread = threading.current_thread() is threading.main_thread()
        children = jobs > 1 or any(s.nproc > 1 for s in stages)  # stage processes to stop with this one
        previous_handler = signal.signal(signal.SIGTERM, _stop) if children and main_thread else None
        try:
            while pending or running:
                for key in list(pending):
                    used = sum(slots.values())
                    if used >= jobs:
                        break
                    unit = units[key]
                    if not unit.deps <= set(records):
                        continue
                    if key in waiting:
                        plan = waiting.pop(key)
                    else:
                        scope_records = {name: records[k] for name, k in unit.names.items() if k in records}
                        plan = _plan_stage(unit.stage, unit.out, unit.seed, unit.outputs, scope_records,
                                           unit.produced_by, only, force, dry_run, _keyed(log, key))
                    if not plan.run:
                        pending.remove(key)
                        records[key] = plan.record
                        continue
                    need = _slots(unit.stage.nproc, jobs)
                    if used + need > jobs:  # it waits for slots, and so does every stage after it: none starves
                        waiting[key] = plan
                        break
                    pending.remove(key)
                    if unit.stage.nproc > jobs:
                        _keyed(log, key)(f"[pipeline] {unit.stage.name}: {unit.stage.nproc} processes, more than "
                                         f"--jobs {jobs}: no other stage runs beside it")
                    if jobs == 1:
                        records[key] = _run_here(unit, plan, _keyed(log, key), env)
                    else:
                        running[key] = _launch(unit, plan, env, _keyed(log, key))
                        slots[key] = need
                for key, (proc, plan, t0, cfg_path, log_file, log_path) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log_file.close()
                    if cfg_path is not None:
                        cfg_path.unlink(missing_ok=True)
                    del running[key], slots[key]
                    if proc.returncode != 0:
                        raise UnisslError(f"pipeline: stage {key} failed (exit {proc.returncode}): "
                                          f"{_last_line(log_path)}; its log is {log_path}")
                    _finish_record(plan, t0, _keyed(log, key))
                    records[key] = plan.record
                if running:
                    time.sleep(0.2)
        finally:
            for proc, *_ in running.values():
                proc.terminate()
            for proc, _, _, cfg_path, log_file, _ in running.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log_file.close()
                if cfg_path is not None:
                    cfg_path.unlink(missing_ok=True)
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
    return records


def record_invocation(out: str | Path, records: dict[str, dict[str, Any]], since: float, seconds: float) -> None:
    """Write ``<out>/pipeline.json``: this invocation's wall seconds and how many stages it ran or reused
    (a stage started before ``since``, a ``time.time()``, was reused). The report's ``wall_minutes`` goal
    reads it: only an invocation that reused nothing timed the whole job."""
    ran = sum(1 for r in records.values() if float(r.get("started_at", 0) or 0) >= since)
    write_json(Path(out) / INVOCATION_FILE, {"wall_seconds": round(seconds, 1), "stages_run": ran,
                                             "stages_reused": len(records) - ran, "finished_at": time.time()})


def _last_line(path: Path) -> str:
    """The last non-empty line of a stage log (its one-line error, usually); of a torchrun job the last one
    before torchrun's report of the failed processes."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    report = next((i for i, ln in enumerate(lines) if _TORCHRUN_LOG.match(ln)), None)
    if report:
        lines = lines[:report]
    return lines[-1] if lines else "no output"


_TORCHRUN_LOG = re.compile(r"[EWI]\d{4} [\d:.]+ +\d+ \S*torch/distributed/elastic/")  # a line of torchrun's agent
