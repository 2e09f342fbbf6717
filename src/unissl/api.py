"""The Python API: trained unissl models in a few lines, without the command line.

    import unissl
    enc = unissl.load_sorcen("runs/sorcen-small")            # a `unissl train sorcen` run directory
    feats = enc.features(images)                              # images (B, C, H, W) in [0, 1] -> (B, D)
    samples = enc.sample(16)                                  # unconditional MaskGIT samples (16, C, H, W)

    tok = unissl.load_reptok("runs/reptok/tokenizer")         # a RepTok tokenizer directory
    z = tok.encode(images); rec = tok.decode(z)               # one continuous token per image, and back
    strip = tok.interpolate(images[0], images[1], points=8)   # decoded slerp between two tokens

    gen = unissl.load_generator("runs/reptok-gen")            # a `unissl train reptok-generator` run
    bags = gen.sample(classes=["Bag"], n=4)                   # class-conditional (or prompts=[...] for text)

Every object keeps the underlying library model (``.model``, ``.tokenizer``, ``.method``) for anything the
facade does not cover; every loader reads weights without executing code and fails with one line. Each loader
takes a saved model directory, a training run directory or a hub repo id (``org/name[@revision]``).

Images in: a ``torch.Tensor`` (or NumPy array) of shape (B, C, H, W), or one image (C, H, W), checked by
:func:`check_images` before anything runs, with one :class:`~unissl.errors.UnisslError` line naming what is
wrong. Converted, because the conversion is unambiguous: uint8 (0-255) -> float / 255; 1 channel <-> 3
channels when the model's channels say so (grey -> RGB by repetition, RGB -> grey by BT.601 luma). Refused:
other dtypes (int64, bool, ...), float values outside [0, 1] (0-255 floats, or normalised to [-1, 1] / by
ImageNet statistics), NaN/Inf, other channel counts (RGBA) and another image size, unless ``resize=True``
(bilinear, antialiased, centre-cropped to a square first: the datasets' own adaptation).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from unissl.data.base import match_channels
from unissl.engine.runtime import resolve_device
from unissl.errors import UnisslError
from unissl.methods.reptok.encoders import to_square
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.interpolation import INTERPOLATIONS
from unissl.methods.reptok.sampling import (
    SamplingConfig,
    decode_tokens,
    sample_conditions,
    sample_tokens,
)
from unissl.methods.reptok.tokenizer import DECODE_STEPS, RepTokTokenizer
from unissl.methods.sorcen.features import load_extractor
from unissl.methods.sorcen.maskgit import MaskGITConfig, maskgit_generate
from unissl.methods.sorcen.run import read_run_info

RANGE_TOLERANCE = 1e-3  # float images may overshoot [0, 1] by this much (rounding of an earlier resize)


def check_images(images: object, channels: int, size: int, where: str, resize: bool = False) -> torch.Tensor:
    """``images`` as float32 (B, channels, size, size) in [0, 1], or one line saying what is wrong with them.

    See the module docstring for what is converted (uint8, 1 <-> 3 channels, a single image, NumPy) and what
    is refused (other dtypes, values outside [0, 1], other channel counts, another size unless ``resize``).
    """
    if not isinstance(images, torch.Tensor):
        import numpy as np

        if not isinstance(images, np.ndarray):
            raise UnisslError(f"{where}: expected a torch.Tensor (B, C, H, W) in [0, 1], got {type(images).__name__}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    x = images
    if x.ndim == 3:
        x = x[None]  # one image (C, H, W)
    if x.ndim != 4 or x.shape[0] == 0:
        raise UnisslError(f"{where}: expected images (B, C, H, W) or one image (C, H, W), got shape {tuple(images.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise UnisslError(f"{where}: expected float images in [0, 1] or uint8 in 0-255, got {x.dtype}; convert "
                          f"with images.float() / 255 (0-255 values) or images.float() (0/1 values)")
    else:
        x = x.float()
        if not torch.isfinite(x).all():
            raise UnisslError(f"{where}: the images hold NaN or Inf values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            hint = ("they look like 0-255 values: divide by 255" if lo >= 0 and hi <= 255 else
                    "they look normalised (e.g. to [-1, 1] or by ImageNet statistics): pass the images in [0, 1]")
            raise UnisslError(f"{where}: float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; {hint}")
        x = x.clamp(0, 1)
    c = x.shape[1]
    if c != channels and {c, channels} != {1, 3}:
        raise UnisslError(f"{where}: the model takes {channels}-channel images, got {c} channels (shape "
                          f"{tuple(images.shape)}); pass grey (1) or RGB (3) images in (B, C, H, W) layout")
    if x.shape[-2:] != (size, size):
        if not resize:
            raise UnisslError(f"{where}: the model takes {size}x{size} images, got {x.shape[-2]}x{x.shape[-1]}; "
                              f"resize them, or pass resize=True (centre crop to a square, antialiased bilinear)")

        return to_square(x, size, channels)

    return match_channels(x, channels, where).contiguous()


def _device(device: str | torch.device) -> torch.device:
    return resolve_device(device)


class SorcenEncoder:
    """A trained Sorcen / MAGE / MAGE-C run: frozen features and unconditional samples."""

    def __init__(self, run: str | Path, device: str | torch.device = "auto") -> None:
        self.device = _device(device)
        self.info = read_run_info(run)
        self.extractor = load_extractor(str(run), self.device)
        self.model = self.extractor.model
        self.tokenizer = self.extractor.tokenizer

    @torch.no_grad()
    def features(self, images: torch.Tensor, resize: bool = False) -> torch.Tensor:
        """Mean-pooled encoder features (B, D) of images (B, C, H, W) in [0, 1] (the linear-probe features);
        inputs are checked and converted as the module docstring says."""
        assert self.extractor.input_channels is not None and self.extractor.input_size is not None
        x = check_images(images, self.extractor.input_channels, self.extractor.input_size, "features(images)", resize)
        return self.extractor.features(x.to(self.device)).cpu()

    @torch.no_grad()
    def sample(self, n: int = 16, steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """``n`` unconditional MaskGIT samples decoded by the run's VQ tokenizer: (n, C, H, W) in [0, 1]
        (``steps`` defaults to :class:`MaskGITConfig`'s)."""
        if n <= 0:
            raise UnisslError(f"n must be positive, got n={n}")
        mcfg = MaskGITConfig() if steps is None else MaskGITConfig(steps=steps)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        ids = maskgit_generate(self.model, n, mcfg, generator=gen, device=self.device)
        return self.tokenizer.decode(ids).float().clamp(0, 1).cpu()


class RepTok:
    """A trained RepTok tokenizer: images <-> one continuous token each."""

    def __init__(self, path: str | Path, device: str | torch.device = "auto") -> None:
        self.device = _device(device)
        self.tokenizer = RepTokTokenizer.from_pretrained(path, device=self.device)

    def _images(self, images: torch.Tensor, where: str, resize: bool) -> torch.Tensor:
        cfg = self.tokenizer.cfg
        return check_images(images, cfg.channels, cfg.image_size, where, resize).to(self.device)

    @property
    def token_dim(self) -> int:
        """Width D of a token."""
        return int(self.tokenizer.encoder.dim)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, resize: bool = False) -> torch.Tensor:
        """Tokens (B, D) of images (B, C, H, W) in [0, 1] (checked and converted as the module docstring says)."""
        return self.tokenizer.encode(self._images(images, "encode(images)", resize)).cpu()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from tokens (B, D) (``steps`` Euler steps of the flow decoder,
        default ``DECODE_STEPS``)."""
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.ndim not in (1, 2) \
                or z.shape[-1] != self.token_dim:
            got = f"{z.dtype} {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise UnisslError(f"decode(z): expected float tokens (B, {self.token_dim}) from encode(), got {got}")
        if not torch.isfinite(z).all():
            raise UnisslError("decode(z): the tokens hold NaN or Inf values")
        z = z.float().reshape(-1, self.token_dim)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return self.tokenizer.decode(z.to(self.device), steps=_decode_steps(steps), generator=gen) \
            .float().clamp(0, 1).cpu()

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, points: int = 8, method: str = "slerp",
                    steps: int | None = None, seed: int = 0, resize: bool = False) -> torch.Tensor:
        """Decoded images (points, C, H, W) along the path between the tokens of images ``a`` and ``b`` (one
        image each, (C, H, W) or (1, C, H, W))."""
        if method not in INTERPOLATIONS:
            raise UnisslError(f"unknown interpolation {method!r}; choose one of {sorted(INTERPOLATIONS)}")
        if points < 2:
            raise UnisslError(f"interpolate: points must be at least 2 (the two ends), got {points}")
        xa, xb = self._images(a, "interpolate(a)", resize), self._images(b, "interpolate(b)", resize)
        if xa.shape[0] != 1 or xb.shape[0] != 1:
            raise UnisslError(f"interpolate: a and b are one image each, got batches of {xa.shape[0]} and {xb.shape[0]}")
        z = self.tokenizer.encode(torch.cat([xa, xb]))  # (2, D)
        path = INTERPOLATIONS[method](z[0], z[1], torch.linspace(0, 1, points, device=self.device))
        gen = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn((1, *self.tokenizer.space.shape), generator=gen, device=self.device)
        return self.tokenizer.decode(path, steps=_decode_steps(steps), noise=noise.expand(points, -1, -1, -1).contiguous()) \
            .float().clamp(0, 1).cpu()


class Generator:
    """A trained RepTok token generator with its tokenizer: class- or text-conditional images."""

    def __init__(self, run: str | Path, tokenizer: str | Path | None = None,
                 device: str | torch.device = "auto") -> None:
        self.device = _device(device)
        self.method = TokenGeneratorMethod.from_pretrained(run, map_location=self.device)
        tok = tokenizer or self.method.cfg.tokenizer_path
        if not tok:
            raise UnisslError(f"the generator {run} holds no tokenizer (saved without one); pass "
                              f"tokenizer=<RepTok tokenizer dir or hub id>")
        self.tokenizer = RepTokTokenizer.from_pretrained(tok, device=self.device)
        self.classes: list[str] = list(self.method.cfg.classes)

    @torch.no_grad()
    def sample(self, classes: list[str | int] | None = None, prompts: list[str] | None = None, n: int = 4,
               cfg: float | None = None, steps: int | None = None, decode_steps: int | None = None,
               seed: int = 0) -> torch.Tensor:
        """``n`` images per class (names or indices) or per prompt: (len * n, C, H, W) in [0, 1]. ``cfg``
        (guidance scale) and ``steps`` (generator ODE steps) default to :class:`SamplingConfig`'s,
        ``decode_steps`` to ``DECODE_STEPS``."""
        cond, _ = sample_conditions(self.method, n, classes=[str(c) for c in classes] if classes else None,
                                    prompts=prompts, device=self.device)
        scfg = SamplingConfig()
        scfg = dataclasses.replace(scfg, steps=scfg.steps if steps is None else steps,
                                   cfg_scale=scfg.cfg_scale if cfg is None else cfg)
        z = sample_tokens(self.method, cond, scfg,
                          generator=torch.Generator().manual_seed(seed))
        return decode_tokens(self.tokenizer, z, steps=_decode_steps(decode_steps))


def load_sorcen(run: str | Path, device: str | torch.device = "auto") -> SorcenEncoder:
    """A :class:`SorcenEncoder` from a `unissl train sorcen` run directory (or one of its checkpoints)."""
    return SorcenEncoder(run, device)


def load_reptok(path: str | Path, device: str | torch.device = "auto") -> RepTok:
    """A :class:`RepTok` from a RepTok tokenizer directory (the --out of `unissl train reptok-tokenizer`)."""
    return RepTok(path, device)


def load_generator(run: str | Path, tokenizer: str | Path | None = None,
                   device: str | torch.device = "auto") -> Generator:
    """A :class:`Generator` from a `unissl train reptok-generator` run (its tokenizer from the run's record)."""
    return Generator(run, tokenizer, device)


def _decode_steps(steps: int | None) -> int:
    """``steps``, or the RepTok decoder's one default (imported here: ``import unissl`` stays light)."""
    return DECODE_STEPS if steps is None else steps


__all__ = ["Generator", "RepTok", "SorcenEncoder", "load_generator", "load_reptok", "load_sorcen"]
