"""Run the released reference code (LTH14/mage, ImaGonEs/LEASE, CompVis/RepTok, dinov2) on this CPU machine.

Nothing here is copied from the releases: this module only puts their unmodified sources, their pure-Python
dependencies and a few stub modules on ``sys.path``, and applies the run-time patches that
``../shared/docs/released-code.md`` lists (``.cuda()`` as identity, ``np.float``, a ``torch.compile`` that keeps
the module). It is used by the fixture writers beside it, never by the library or the tests.

Layout expected under ``--released-root`` (default ``$UNISSL_RELEASED_ROOT`` or ``/work/released``)::

    mage/     LTH14/mage @ 1becb14          (git archive 1becb14 | tar -x)
    LEASE/    ImaGonEs/LEASE @ 171b157
    RepTok/   CompVis/RepTok @ 85c3519
    dinov2/   facebookresearch/dinov2
    deps/     pip install --no-deps --target deps einops omegaconf antlr4-python3-runtime==4.9.3 \
                  'lightning==2.6.*' 'pytorch-lightning==2.6.*' lightning-utilities torchmetrics hydra-core \
                  torchdiffeq jaxtyping wadler_lindig timm==0.4.12
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PINNED = {"mage": "1becb14", "LEASE": "171b157", "RepTok": "85c3519"}
STUBS = Path(__file__).resolve().parent / "stubs"


def released_root(root: str | os.PathLike[str] | None = None) -> Path:
    path = Path(root or os.environ.get("UNISSL_RELEASED_ROOT", "/work/released"))
    missing = [name for name in (*PINNED, "deps") if not (path / name).is_dir()]
    if missing:
        raise SystemExit(
            f"released code not found under {path}: missing {', '.join(missing)}; "
            "see tools/released/env.py's docstring for how to lay it out"
        )
    return path


def activate(repo: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Make ``repo`` (a key of PINNED, or 'dinov2') importable with its dependencies; return its folder."""
    base = released_root(root)
    import numpy as np
    import torch

    # Lightning must import before the torchvision stub is on the path, so torchmetrics sees no torchvision.
    deps = str(base / "deps")
    if deps not in sys.path:
        sys.path.append(deps)
    try:
        import lightning  # noqa: F401
        import pytorch_lightning  # noqa: F401
    except ImportError:
        pass
    if str(STUBS) not in sys.path:
        sys.path.append(str(STUBS))
    src = base / repo
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]  # released forwards call .cuda()
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]  # MAGE's util/pos_embed.py

    class Kept(torch.nn.Module):
        """What torch.compile(module) returns, run eagerly: the module sits under ``_orig_mod`` as in
        torch's OptimizedModule, so state-dict keys read as in the release's checkpoints (``mixer._orig_mod.N``)."""

        def __init__(self, mod: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = mod

        def forward(self, *args, **kwargs):
            return self._orig_mod(*args, **kwargs)

    def keep_module(fn=None, **_kwargs):  # RepTok compiles its mixer and DINOv2: run them eagerly
        if fn is None:  # used as @torch.compile(...)
            return lambda f: f
        return Kept(fn) if isinstance(fn, torch.nn.Module) else fn  # functions / bound methods stay as they are

    torch.compile = keep_module  # type: ignore[assignment]
    return src
