"""Random resized crops and horizontal flips with plain torch ops (MAGE-C's two views).

All samples are cropped in one vectorised ``grid_sample`` call: each crop is an affine map of the
output grid into the input image, and a flip is a negative horizontal scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_resized_crop_flip(images: torch.Tensor, size: int, scale: tuple[float, float] = (0.2, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_prob: float = 0.5,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """A random crop per image covering ``scale`` of its area with aspect in ``ratio``, resized to ``size``.

    images (B, C, H, W) in [0, 1] -> (B, C, size, size); each crop is mirrored with ``flip_prob``.
    Crops are clipped to the image, so no padding enters the view.
    """
    b = images.shape[0]

    def rand(n: int) -> torch.Tensor:
        return torch.rand(n, generator=generator, dtype=torch.float64)

    area = scale[0] + (scale[1] - scale[0]) * rand(b)  # (B,) fraction of the image area
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand(b)
    aspect = torch.exp(log_r)  # (B,) width / height of the crop
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # (B,) crop width as a fraction of the image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)  # (B,) crop height as a fraction of the image height
    cx = (2 * rand(b) - 1) * (1 - w)  # (B,) crop centre in [-1, 1] normalised coordinates, inside the image
    cy = (2 * rand(b) - 1) * (1 - h)
    flip = torch.where(rand(b) < flip_prob, -1.0, 1.0)  # (B,)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)  # (B, S, S, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp(0.0, 1.0)
