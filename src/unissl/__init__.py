"""unissl: unified self-supervised learning (Sorcen and RepTok) in PyTorch.

The Python API (:mod:`unissl.api`) is available at the top level: ``unissl.load_sorcen``,
``unissl.load_reptok``, ``unissl.load_generator`` (imported on first use).
"""

__version__ = "0.1.0"

from unissl.errors import UnisslError

_API = ("load_sorcen", "load_reptok", "load_generator", "SorcenEncoder", "RepTok", "Generator")


def __getattr__(name: str):
    if name in _API:
        from unissl import api

        return getattr(api, name)
    raise AttributeError(f"module 'unissl' has no attribute {name!r}")


__all__ = ["UnisslError", "__version__", *_API]
