"""Stand-in for ``wandb`` (imported by CompVis/RepTok's trainers, used only for logging images): importable,
and ``Image`` refuses to run. Used only when running the released code (tools/released/env.py)."""


class Image:
    def __init__(self, *_args, **_kwargs):
        raise RuntimeError("wandb stub: no logging when running the released code here")
