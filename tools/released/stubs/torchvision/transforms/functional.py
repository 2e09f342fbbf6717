"""The two ``torchvision.transforms.functional`` calls the releases make (RepTok's DINOv2 input), nothing else.

``center_crop`` takes torchvision's offsets ``int(round((H - h) / 2))``; ``normalize`` is per-channel
``(x - mean) / std`` on a (..., C, H, W) tensor. Every other name is absent, so a release calling one fails loudly.
"""

from typing import Any

import torch


def center_crop(img: torch.Tensor, size: list[int]) -> torch.Tensor:
    h, w = img.shape[-2:]
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
    return img[..., top:top + size[0], left:left + size[1]]


def normalize(x: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s
