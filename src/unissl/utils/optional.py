"""Optional packages: imported where they are used, and a missing one is one line saying how to install it.

    transformers = require("transformers", "hf", "the dinov2 encoder")

raises ``UnisslError("the dinov2 encoder needs the transformers package: pip install 'unissl[hf]'")`` when
the import fails (not installed, or broken), instead of an ImportError traceback. Every ``extra`` named here
is a key of ``[project.optional-dependencies]`` in pyproject.toml (a test checks every call site).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from unissl.errors import UnisslError


def require(package: str, extra: str, purpose: str, alternative: str = "") -> ModuleType:
    """Import ``package`` (a module name, e.g. ``"transformers"`` or ``"huggingface_hub"``) for ``purpose``;
    when it is missing, one line with the ``pip install 'unissl[extra]'`` that supplies it (and
    ``alternative``, another way to do without it, when there is one)."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        top = package.split(".")[0]
        broken = "" if getattr(e, "name", None) in (None, top, package) else f" (importing it failed: {e})"
        raise UnisslError(f"{purpose} needs the {top} package{broken}: pip install 'unissl[{extra}]'"
                          + (f", or {alternative}" if alternative else "")) from None
