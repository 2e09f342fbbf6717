"""Empty ``torchvision.transforms`` for the released code's imports."""

from . import functional  # noqa: F401
