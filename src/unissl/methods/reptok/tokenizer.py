"""The RepTok tokenizer (stage a): adapted SSL token -> projection -> flow-matching decoder.

``forward(batch)`` (an engine ``Method``) computes

    loss = || v_theta(x_t, t | h(z)) - (eps - x) ||^2  +  lambda * (1 - cos(z, z_frozen))

with x the image (pixels or VAE latents), x_t = (1 - t) x + t eps, t ~ logit-normal(0, 1), z the token of
the encoder with its trainable [cls] and z_frozen the original encoder's token. ``encode`` gives z,
``decode`` integrates the decoder's ODE from noise (t = 1) to data (t = 0).

Saved as a self-contained directory (:class:`unissl.utils.hub.PretrainedMixin`): ``config.json`` +
``model.safetensors`` (no pickled code) + a model card; a pretrained backbone (DINOv2, Sorcen) and a VAE are
left out of training checkpoints but saved inside the tokenizer (``encoder/``, ``vae/``, each in its own
saved format) or referenced by hub id, and checked against a checksum. The random-init backbone is in the
weights.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from unissl.config import arg
from unissl.engine.method import Method, load_saved_state, saved_state
from unissl.errors import ConfigError, UnisslError
from unissl.flow import LinearPath, LogitNormalTime, solve
from unissl.methods.reptok.decoder import DECODER_PRESETS, FlowDecoder, get_decoder_preset
from unissl.methods.reptok.encoders import SSLEncoder, backbone_checksum, build_encoder
from unissl.methods.reptok.projection import ResidualProjection, cosine_loss, token_drift
from unissl.methods.reptok.spaces import PixelSpace, VAESpace
from unissl.methods.sorcen.pretrained import PretrainedSorcen
from unissl.utils.hub import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    PretrainedMixin,
    frozen_dir,
    hub_id_of,
    is_repo_id,
    read_saved_config,
    resolve_pretrained,
    upgrade_hint,
)
from unissl.utils.io import sha256_file
from unissl.utils.weights import read_safetensors

FORMAT = "unissl-reptok-tokenizer-v1"  # the name of the format (its version is config.json's format_version)


DECODE_STEPS = 50  # Euler steps of the flow decoder wherever a caller does not choose (the one default)


@dataclass
class RepTokConfig:
    """Everything needed to rebuild a tokenizer (saved as config.json)."""

    encoder: dict[str, Any]  # SSLEncoder.spec(): {"kind": "dinov2"|"sorcen"|"random", ...}
    image_size: int  # side of the (square) images the tokenizer reconstructs
    channels: int  # 1 (grey) or 3
    decoder: str = arg("small", help="decoder preset", choices=DECODER_PRESETS)
    patch_size: int = arg(4, help="decoder patch size (on pixels or latents)")
    space: Literal["pixels", "vae"] = arg("pixels", help="decode pixels or the latents of a frozen AutoencoderKL")
    vae_path: str | None = arg(None, help="space=vae: local diffusers AutoencoderKL directory")
    cos_weight: float = arg(0.1, help="lambda: weight of the cosine regulariser 1 - cos(z, z_frozen)")
    cls_lr_scale: float = arg(1.0, help="learning-rate multiplier of the trainable [cls] (e.g. 20 lets the token "
                                        "move far enough for lambda to matter; drift is logged as drift_*)")
    time_mean: float = arg(0.0, help="mean of the logit-normal time sampler")
    time_std: float = arg(1.0, help="std of the logit-normal time sampler")
    # CompVis/RepTok's `nr_new_reg` / `new_target_key`: learned register tokens put beside z, through the same
    # token-wise projection. `only_nonreg` (the released config) drops them before the decoder, so they never
    # change the condition; `all` keeps them as extra in-context condition tokens (image-independent).
    new_registers: int = arg(0, help="learned register tokens beside the token (CompVis/RepTok: nr_new_reg 2)")
    register_target: Literal["only_nonreg", "all"] = arg(
        "only_nonreg", help="only_nonreg: the registers are dropped before the decoder (released config: no effect "
                            "on the token); all: they are extra condition tokens")
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (dataset, ...)

    def __post_init__(self) -> None:
        if self.cos_weight < 0:
            raise ConfigError("cos_weight", f"(lambda) must be >= 0, got {self.cos_weight}")
        if not self.cls_lr_scale > 0:
            raise ConfigError("cls_lr_scale", f"must be positive, got {self.cls_lr_scale}")
        if self.space == "vae" and not self.vae_path:
            raise ConfigError("vae_path", "space 'vae' needs it (a local diffusers AutoencoderKL directory)")
        if self.channels not in (1, 3):
            raise ConfigError("channels", f"must be 1 or 3, got {self.channels}")
        if self.new_registers < 0:
            raise ConfigError("new_registers", f"must be >= 0, got {self.new_registers}")
        if self.register_target not in ("only_nonreg", "all"):
            raise ConfigError("register_target", f"must be 'only_nonreg' or 'all', got {self.register_target!r}")


class RepTokTokenizer(Method, PretrainedMixin):
    """One continuous token per image: SSL encoder with a trainable [cls] + flow-matching decoder."""

    def __init__(self, cfg: RepTokConfig, encoder: SSLEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else build_encoder(cfg.encoder)
        if cfg.space == "pixels":
            self.space: PixelSpace | VAESpace = PixelSpace(cfg.channels, cfg.image_size)
        else:
            assert cfg.vae_path is not None  # RepTokConfig.__post_init__ refuses a VAE space without it
            self.space = VAESpace(cfg.vae_path, cfg.channels, cfg.image_size)
        c, s, _ = self.space.shape
        self.decoder = FlowDecoder(get_decoder_preset(cfg.decoder), c, s, cfg.patch_size)
        self.projection = ResidualProjection(self.encoder.dim, self.decoder.width)
        self.path = LinearPath(data_at=0.0)  # x_t = (1 - t) x + t eps; sample from t=1 to t=0
        self.time_sampler = LogitNormalTime(cfg.time_mean, cfg.time_std)
        # Created last, so that a run with registers starts every other module from the same weights.
        self.new_registers = (nn.Parameter(torch.randn(cfg.new_registers, self.encoder.dim))  # (R, D_z)
                              if cfg.new_registers else None)

    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's in-context condition of tokens z (B, D_z): (B, D_dec), or (B, R + 1, D_dec) with
        ``register_target='all'`` (the projected registers first, as in the released code).

        With ``only_nonreg`` the registers would pass the token-wise projection and be dropped, so the result
        is ``projection(z)`` alone (computed without them; they get no gradient).
        """
        h = self.projection(z)  # (B, D_dec)
        if self.new_registers is None or self.cfg.register_target == "only_nonreg":
            return h
        reg = self.projection(self.new_registers)  # (R, D_dec): the same token-wise map
        return torch.cat([reg.unsqueeze(0).expand(z.shape[0], -1, -1), h[:, None]], dim=1)  # (B, R + 1, D_dec)

    # ---------------------------------------------------------------- training
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Flow MSE + lambda * cosine loss on ``batch["image"]`` (B, C, H, W) in [0, 1]."""
        images = batch["image"]
        # With a frozen-encoder cache (:mod:`.frozen_cache`) the batch carries z_frozen and, for encoders
        # with a frozen first stage, its output (``frozen_input``): no frozen work is repeated per step.
        if "frozen_input" in batch:
            z = self.encoder.encode_prepared(batch["frozen_input"], self.encoder.cls)  # (B, D)
        else:
            z = self.encoder(images)  # (B, D), differentiable in encoder.cls
        if "z_frozen" in batch:
            z_frozen = batch["z_frozen"].to(z.dtype)
        else:
            with torch.no_grad():
                z_frozen = self.encoder.frozen(images)  # (B, D)
        l_cos = cosine_loss(z, z_frozen)
        x = self.space.encode(images)  # (B, c, h, w)
        t = self.time_sampler.sample(x.shape[0], device=x.device)  # (B,)
        ps = self.path.sample(x, t)
        v = self.decoder(ps.x_t, t, self.condition(z))  # (B, c, h, w)
        mse = (v.float() - ps.target.float()).pow(2).mean()
        loss = mse + self.cfg.cos_weight * l_cos
        return {"loss": loss, "flow_mse": mse.detach(), "cos_loss": l_cos.detach(),
                "cls_drift": (self.encoder.cls - self.encoder.cls_init).norm().detach(),
                **token_drift(z.detach(), z_frozen)}

    def lr_scales(self) -> dict[str, float]:
        """Engine hook: the [cls] learns at ``cls_lr_scale`` times the base learning rate."""
        return {"encoder.cls": self.cfg.cls_lr_scale} if self.cfg.cls_lr_scale != 1.0 else {}

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> tokens z (B, D)."""
        return self.encoder(images)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, steps: int = DECODE_STEPS, solver: str = "euler",
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens z (B, D) -> images (B, C, H, W) in [0, 1]: integrate from noise (t=1) to data (t=0)."""
        h = self.condition(z)  # (B, D_dec) or (B, R + 1, D_dec)
        if noise is None:
            noise = torch.randn((z.shape[0], *self.space.shape), generator=generator, device=z.device)
        x = solve(solver, lambda x_t, t: self.decoder(x_t, t, h), noise, self.path.noise_at,
                  self.path.data_at, steps)
        return self.space.decode(x)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, steps: int = DECODE_STEPS, solver: str = "euler",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """decode(encode(images))."""
        return self.decode(self.encode(images), steps=steps, solver=solver, generator=generator)

    @torch.no_grad()
    def log_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Up to 8 originals, each followed by its reconstruction (pairs side by side in an even-width grid)."""
        images = batch["image"][:8]
        rec = self.reconstruct(images, generator=torch.Generator(device=images.device).manual_seed(0))
        pairs = torch.stack([images.clamp(0, 1), rec], dim=1).flatten(0, 1)  # (2N, C, H, W)
        return {"reconstructions": pairs}

    # ---------------------------------------------------------------- save / load
    def frozen_state_prefixes(self) -> tuple[str, ...]:
        """The frozen parts rebuilt from their source (the VAE; a pretrained backbone, reloaded from its path):
        left out of training checkpoints and of the saved tokenizer."""
        skip = ["space.vae."]
        if not self.encoder.saves_backbone():
            skip += ["encoder.backbone.", "encoder.vq."]
        return tuple(skip)

    # ------------------------------------------------ saved model (utils/hub.py's convention)
    FORMAT = FORMAT
    WHAT = "RepTok tokenizer"
    MADE_BY = "`unissl train reptok-tokenizer` (its --out directory)"
    CARD_TITLE = "unissl RepTok tokenizer (one continuous token per image)"
    WEIGHTS_METADATA = {"format": FORMAT}

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return saved_state(self)  # the frozen parts live in their own sub-directories (save_frozen_parts)

    def pretrained_config(self) -> dict[str, Any]:
        cfg = asdict(self.cfg)
        cfg["encoder"] = self.encoder.spec()
        if "path" in cfg["encoder"]:
            cfg["encoder"]["path"] = ""  # where it lives is the "frozen" entry, never a training path
        if cfg["vae_path"]:
            cfg["vae_path"] = ""
        return cfg

    def pretrained_extra(self) -> dict[str, Any]:
        return {"backbone_checksum": backbone_checksum(self.encoder)}

    def save_frozen_parts(self, directory: Path) -> dict[str, Any]:
        """The frozen encoder (unless its weights are in model.safetensors) and VAE, each inside the saved
        tokenizer (``encoder/``, ``vae/``) or, when it was loaded from the hub, as its hub id plus checksum."""
        frozen: dict[str, Any] = {}
        if not self.encoder.saves_backbone():
            frozen["encoder"] = _save_encoder(self.encoder, directory / "encoder")
        if isinstance(self.space, VAESpace):
            hub = hub_id_of(self.space.vae_path)
            frozen["vae"] = {"hub_id": hub} if hub else {"dir": "vae"}
            frozen["vae"]["checksum"] = _module_checksum(self.space.vae)
            if not hub:
                self.space.vae.save_pretrained(str(directory / "vae"), safe_serialization=True)
        return frozen

    @classmethod
    def build_pretrained(cls, meta: dict[str, Any], state: dict[str, torch.Tensor], directory: Path,
                         encoder_path: str | None = None, **kwargs: Any) -> RepTokTokenizer:
        cfg = _config(meta.get("config"), directory)
        if "path" in cfg.encoder:
            cfg.encoder = {**cfg.encoder, "path": encoder_path or _local(frozen_dir(directory, meta, "encoder"))}
        if cfg.space == "vae":
            cfg.vae_path = _local(frozen_dir(directory, meta, "vae"))
        model = cls._assemble(cfg, meta, state, directory)
        expected = ((meta.get("frozen") or {}).get("vae") or {}).get("checksum")
        if isinstance(model.space, VAESpace) and expected and _module_checksum(model.space.vae) != expected:
            raise UnisslError(f"the VAE at {cfg.vae_path} differs from the one {directory} was saved with (checksum "
                              f"{_module_checksum(model.space.vae)} != {expected}); pass the original VAE")
        return model

    @classmethod
    def read_version0(cls, directory: Path, meta: dict[str, Any], encoder_path: str | None = None,
                      **kwargs: Any) -> RepTokTokenizer:
        """Version 0 referenced a pretrained encoder (and VAE) by the path training was given, often relative
        to where it ran: read when that path is still there, else one line saying how to convert it."""
        cfg = _config(meta.get("config"), directory)
        if encoder_path is not None and "path" in cfg.encoder:
            cfg.encoder = {**cfg.encoder, "path": encoder_path}
        for what, where in (("encoder", cfg.encoder.get("path")), ("VAE", cfg.vae_path)):
            if where and not Path(where).exists():
                raise UnisslError(f"{directory} was saved by an older unissl (format version 0) with its {what} "
                                  f"referenced as {where!r}, which is not there from {Path.cwd()}; "
                                  f"{upgrade_hint(directory)}")

        state = read_safetensors(directory / WEIGHTS_FILE, "re-save the tokenizer or retrain it")
        return cls._assemble(cfg, meta, state, directory)

    @classmethod
    def _assemble(cls, cfg: RepTokConfig, meta: dict[str, Any], state: dict[str, torch.Tensor],
                  directory: Path) -> RepTokTokenizer:
        model = cls(cfg)
        expected, got = meta.get("backbone_checksum"), backbone_checksum(model.encoder)
        if got != expected:
            raise UnisslError(f"the encoder weights at {cfg.encoder.get('path')} differ from those {directory} was "
                              f"trained with (checksum {got} != {expected}); pass the original weights")
        try:
            load_saved_state(model, state)
        except RuntimeError as e:
            raise UnisslError(f"{directory / WEIGHTS_FILE} does not match its config ({str(e).splitlines()[0]}); "
                              f"re-save the tokenizer") from None
        return model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",  # type: ignore[override]
                        encoder_path: str | None = None, **kwargs: Any) -> RepTokTokenizer:
        """Load a saved tokenizer (a local directory or a hub repo id); ``encoder_path`` overrides where its
        pretrained encoder is read from (checked against the saved checksum)."""
        return super().from_pretrained(path, device=device, encoder_path=encoder_path, **kwargs)

    @classmethod
    def embed(cls, source: str | os.PathLike, dest: Path) -> dict[str, Any]:
        """The ``frozen`` entry of a saved model that needs the tokenizer at ``source``: its hub id plus the
        checksum of its weights, or a self-contained copy written to ``dest`` (a version-0 tokenizer is
        loaded and saved again, which puts its encoder inside it)."""
        hub = hub_id_of(source)
        if hub is not None:
            local = resolve_pretrained(hub, cls.WHAT)
            return {"hub_id": hub, "checksum": sha256_file(local / WEIGHTS_FILE)}
        src = Path(source)
        meta = read_saved_config(src, (FORMAT,), cls.WHAT, cls.MADE_BY)
        if meta.get("format_version", 0) >= 1:
            shutil.copytree(src, dest, copy_function=_link_or_copy)  # hard links: no second copy on disk
        else:
            cls.from_pretrained(src).save_pretrained(dest)
        return {"dir": dest.name, "checksum": sha256_file(dest / WEIGHTS_FILE)}


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one (saved weights are never modified in place), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _config(raw: Any, directory: Path) -> RepTokConfig:
    if not isinstance(raw, dict) or not isinstance(raw.get("encoder"), dict):
        raise UnisslError(f"{directory / CONFIG_FILE} has no tokenizer config; re-save the tokenizer")
    if raw.get("space") == "vae" and not raw.get("vae_path"):
        raw = {**raw, "vae_path": "vae"}  # a saved tokenizer's VAE: set from its "frozen" entry by the caller
    try:
        return RepTokConfig(**raw)
    except TypeError as e:
        raise UnisslError(f"{directory / CONFIG_FILE}: invalid tokenizer config ({e}); re-save the tokenizer") from None


def _local(where: str | None) -> str:
    """A frozen part's local directory: a hub id is resolved through the hub cache."""
    if not where:
        return ""
    return str(resolve_pretrained(where, "frozen part")) if is_repo_id(where) else where


def _module_checksum(module: nn.Module) -> str:
    """sha256 (16 hex digits) of a module's parameters (as :func:`backbone_checksum` for an encoder)."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _save_encoder(encoder: SSLEncoder, dest: Path) -> dict[str, Any]:
    """The ``frozen`` entry of a pretrained encoder: a Sorcen encoder saved in its own format, a DINOv2
    backbone as a transformers directory, or the hub id it came from; with the backbone's checksum."""
    checksum = backbone_checksum(encoder)
    source = getattr(encoder, "path", None)  # where the adapter read its backbone (a directory, file or hub id)
    hub = hub_id_of(str(source)) if encoder.kind == "dinov2" and isinstance(source, str) else None
    if hub is not None:
        return {"hub_id": hub, "checksum": checksum}
    if encoder.kind == "sorcen":
        PretrainedSorcen.from_encoder(encoder).save_pretrained(dest)
    elif encoder.kind == "dinov2":
        encoder.backbone.save_pretrained(str(dest), safe_serialization=True)  # type: ignore[operator]
    else:
        raise UnisslError(f"cannot save a {encoder.kind!r} encoder inside a tokenizer")
    return {"dir": dest.name, "checksum": checksum}


def load_reptok_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> RepTokTokenizer:
    """Shorthand for :meth:`RepTokTokenizer.from_pretrained`."""
    return RepTokTokenizer.from_pretrained(path, device=device)
