"""unissl: unified self-supervised learning (Sorcen and RepTok) in PyTorch."""

__version__ = "0.1.0"

from unissl.errors import UnisslError

__all__ = ["UnisslError", "__version__"]
