"""The FID Inception-v3 network (TensorFlow's 2015-12-05 graph), written in plain PyTorch.

Module and parameter names follow the ``pt_inception-2015-12-05-6726825d.pth`` state dict published by
pytorch-fid (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``),
so that file loads with ``torch.load(weights_only=True)`` and a strict key check. Differences from the
ImageNet Inception-v3 of torchvision that FID depends on: 1008 output classes, average pools that do not
count padding, and a max pool in the last block's pooling branch.

The weights are not shipped; download them once from pytorch-fid's release asset
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
and pass ``--extractor inception:/path/to/pt_inception-2015-12-05-6726825d.pth``.

Features: the 2048-d global average pool (pool3). Probabilities for the Inception Score: softmax of the
logits without the fc bias, as the original IS code computes them from pool3 and the softmax weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from unissl.errors import ConfigError, UnisslError
from unissl.utils.weights import read_torch_weights

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"

Size = int | tuple[int, int]


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, as in TensorFlow) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: Size, stride: int = 1, padding: Size = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool ignores the zero padding when averaging.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 and 7x1)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs; ``max_pool`` selects the FID graph's last-block quirk."""

    def __init__(self, cin: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        d = self.branch_pool(pooled)
        return torch.cat([a, b, c, d], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the FID reference implementation: images in [0, 1] -> pool3 (B, 2048), logits (B, 1008).

    Args:
        resize_to: input side the images are bilinearly resized to (299 for comparable FIDs; tests may
            use a smaller size, the network is fully convolutional down to 75x75).
    """

    def __init__(self, resize_to: int | None = 299) -> None:
        super().__init__()
        self.resize_to = resize_to
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def pool3(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 2048)."""
        x = images
        if self.resize_to is not None:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0  # the TensorFlow graph expects [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))  # global average pool, (B, 2048)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool3 (B, 2048), unbiased logits (B, 1008))."""
        f = self.pool3(images)
        return f, f @ self.fc.weight.T


class InceptionExtractor:
    """FeatureExtractor wrapper: 2048-d pool3 features, softmax probabilities for the Inception Score."""

    input_channels = 3
    input_size: int | None = None  # the network resizes internally

    def __init__(self, model: FIDInceptionV3, weights_id: str, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self._id = weights_id

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.pool3(images.to(self.device))

    @torch.no_grad()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device))[1].softmax(-1)

    def identity(self) -> str:
        return f"inception-fid({self._id},resize={self.model.resize_to})"


def load_inception_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the FID Inception weights safely (no code execution); a clear error if the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("extractor", f"Inception weights file {path} not found: download {WEIGHTS_NAME} from "
                                       f"{WEIGHTS_URL} and give inception:/path/to/{WEIGHTS_NAME} (no FID is "
                                       "computed without it)")

    state = read_torch_weights(path, f"expected pytorch-fid's {WEIGHTS_NAME} from {WEIGHTS_URL}")
    if not isinstance(state, dict):
        raise UnisslError(f"{path} does not hold a state dict; expected pytorch-fid's {WEIGHTS_NAME}")
    return state


def build_inception(state: dict[str, torch.Tensor], resize_to: int | None = 299) -> FIDInceptionV3:
    """A :class:`FIDInceptionV3` with ``state`` loaded strictly (``num_batches_tracked`` may be absent)."""
    model = FIDInceptionV3(resize_to)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    if expected != given:
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        raise UnisslError(f"Inception weights do not match the FID Inception-v3 layout: missing {missing[:3]}"
                          f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                          f"{'...' if len(unexpected) > 3 else ''}; expected pytorch-fid's {WEIGHTS_NAME}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UnisslError(f"Inception weights have wrong shapes ({str(e).splitlines()[-1].strip()}); "
                          f"expected pytorch-fid's {WEIGHTS_NAME}") from None
    return model


def load_extractor(checkpoint: str | None, device: torch.device, resize_to: int | None = 299) -> InceptionExtractor:
    """Loader registered as ``inception``: ``checkpoint`` is the path of the pytorch-fid weights file."""
    if not checkpoint:
        raise ConfigError("extractor", f"the inception extractor needs its weights file: inception:/path/to/"
                                       f"{WEIGHTS_NAME} (download it from {WEIGHTS_URL})")
    state = load_inception_state(checkpoint)
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:16]
    return InceptionExtractor(build_inception(state, resize_to), digest, device)
