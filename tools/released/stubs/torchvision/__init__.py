"""Stand-in for torchvision when running the released code here (never installed; see tools/released/env.py).

Only what the releases touch at import time exists: ``torchvision.transforms.functional`` (empty) and
``torchvision.utils.save_image`` (raises: the fixture writers never save images through it).
"""

from . import transforms, utils  # noqa: F401
