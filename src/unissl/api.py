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
facade does not cover; every loader reads weights without executing code and fails with one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from unissl.errors import UnisslError


def _device(device: str | torch.device) -> torch.device:
    from unissl.engine.runtime import resolve_device

    return resolve_device(device)


class SorcenEncoder:
    """A trained Sorcen / MAGE / MAGE-C run: frozen features and unconditional samples."""

    def __init__(self, run: str | Path, device: str | torch.device = "auto") -> None:
        from unissl.methods.sorcen.features import load_extractor
        from unissl.methods.sorcen.run import read_run_info

        self.device = _device(device)
        self.info = read_run_info(run)
        self.extractor = load_extractor(str(run), self.device)
        self.model = self.extractor.model
        self.tokenizer = self.extractor.tokenizer

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoder features (B, D) of images (B, C, H, W) in [0, 1] (the linear-probe features)."""
        from unissl.eval.features import adapt_images

        x = adapt_images(images.to(self.device).float(), self.extractor.input_channels, self.extractor.input_size)
        return self.extractor.features(x).cpu()

    @torch.no_grad()
    def sample(self, n: int = 16, steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """``n`` unconditional MaskGIT samples decoded by the run's VQ tokenizer: (n, C, H, W) in [0, 1]
        (``steps`` defaults to :class:`MaskGITConfig`'s)."""
        from unissl.methods.sorcen.maskgit import MaskGITConfig, maskgit_generate

        if n <= 0:
            raise UnisslError(f"n must be positive, got n={n}")
        mcfg = MaskGITConfig() if steps is None else MaskGITConfig(steps=steps)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        ids = maskgit_generate(self.model, n, mcfg, generator=gen, device=self.device)
        return self.tokenizer.decode(ids).float().clamp(0, 1).cpu()


class RepTok:
    """A trained RepTok tokenizer: images <-> one continuous token each."""

    def __init__(self, path: str | Path, device: str | torch.device = "auto") -> None:
        from unissl.methods.reptok.tokenizer import RepTokTokenizer

        self.device = _device(device)
        self.tokenizer = RepTokTokenizer.from_pretrained(path, device=self.device)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        from unissl.eval.features import adapt_images

        x = images if images.ndim == 4 else images[None]
        return adapt_images(x.to(self.device).float(), self.tokenizer.cfg.channels, self.tokenizer.cfg.image_size)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens (B, D) of images (B, C, H, W) in [0, 1]."""
        return self.tokenizer.encode(self._images(images)).cpu()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from tokens (B, D) (``steps`` Euler steps of the flow decoder,
        default ``DECODE_STEPS``)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return self.tokenizer.decode(z.to(self.device), steps=_decode_steps(steps), generator=gen) \
            .float().clamp(0, 1).cpu()

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, points: int = 8, method: str = "slerp",
                    steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """Decoded images (points, C, H, W) along the path between the tokens of images ``a`` and ``b``."""
        from unissl.methods.reptok.interpolation import INTERPOLATIONS

        if method not in INTERPOLATIONS:
            raise UnisslError(f"unknown interpolation {method!r}; choose one of {sorted(INTERPOLATIONS)}")
        z = self.tokenizer.encode(torch.cat([self._images(a), self._images(b)]))  # (2, D)
        path = INTERPOLATIONS[method](z[0], z[1], torch.linspace(0, 1, points, device=self.device))
        gen = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn((1, *self.tokenizer.space.shape), generator=gen, device=self.device)
        return self.tokenizer.decode(path, steps=_decode_steps(steps), noise=noise.expand(points, -1, -1, -1).contiguous()) \
            .float().clamp(0, 1).cpu()


class Generator:
    """A trained RepTok token generator with its tokenizer: class- or text-conditional images."""

    def __init__(self, run: str | Path, tokenizer: str | Path | None = None,
                 device: str | torch.device = "auto") -> None:
        from unissl.methods.reptok.generator import TokenGeneratorMethod
        from unissl.methods.reptok.tokenizer import RepTokTokenizer

        self.device = _device(device)
        self.method = TokenGeneratorMethod.from_pretrained(run, map_location=self.device)
        tok = tokenizer or self.method.cfg.tokenizer_path
        if not tok or not Path(tok).is_dir():
            raise UnisslError(f"the generator's tokenizer {tok!r} was not found; pass tokenizer=<RepTok tokenizer dir>")
        self.tokenizer = RepTokTokenizer.from_pretrained(tok, device=self.device)
        self.classes: list[str] = list(self.method.cfg.classes)

    @torch.no_grad()
    def sample(self, classes: list[str | int] | None = None, prompts: list[str] | None = None, n: int = 4,
               cfg: float | None = None, steps: int | None = None, decode_steps: int | None = None,
               seed: int = 0) -> torch.Tensor:
        """``n`` images per class (names or indices) or per prompt: (len * n, C, H, W) in [0, 1]. ``cfg``
        (guidance scale) and ``steps`` (generator ODE steps) default to :class:`SamplingConfig`'s,
        ``decode_steps`` to ``DECODE_STEPS``."""
        from unissl.methods.reptok.sampling import (
            SamplingConfig,
            decode_tokens,
            sample_conditions,
            sample_tokens,
        )

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
    from unissl.methods.reptok.tokenizer import DECODE_STEPS

    return DECODE_STEPS if steps is None else steps


__all__ = ["Generator", "RepTok", "SorcenEncoder", "load_generator", "load_reptok", "load_sorcen"]
