"""The taming-transformers VQGAN as used by MAGE (``vqgan_jax_strongaug.ckpt``), on the tokenizer API.

MAGE's checkpoint is a port of MaskGIT's JAX VQGAN into taming-transformers' module names. Its
architecture (written here from the layout, not copied) differs from the original taming VQGAN in ways
that matter for loading, all visible in the key set:

* no attention blocks (``attn_resolutions: [16]`` in MAGE's YAML is ignored by its Encoder/Decoder)
  and no ``quant_conv`` / ``post_quant_conv``: the quantizer acts on ``encoder.conv_out``'s output
  directly (``z_channels == embed_dim``);
* the encoder downsamples with 2x2 average pooling (no ``downsample.conv`` weights); the decoder
  upsamples with nearest + a 3x3 conv (``decoder.up.N.upsample.conv``);
* residual blocks: GroupNorm(32, eps 1e-6) -> swish -> conv3x3 (no bias), twice; when the width
  changes the shortcut is a bias-free 1x1 ``nin_shortcut`` applied to the block's *output* (MaskGIT's
  quirk), not to its input;
* ``encoder.conv_in`` has no bias; encoder/decoder ``conv_out`` and ``decoder.conv_in`` have one;
* pixels in [0, 1] go in unscaled; decoded images are clamped to [0, 1].

Key layout (``ch_mult = (1, 1, 2, 2, 4)``, 2 blocks per level)::

    encoder.conv_in.weight
    encoder.down.{0..4}.block.{0,1}.{norm1,conv1,norm2,conv2[,nin_shortcut]}.*
    encoder.mid.block_{1,2}.*   encoder.norm_out.*   encoder.conv_out.{weight,bias}
    quantize.embedding.weight                                           (1024, 256)
    decoder.conv_in.*   decoder.mid.block_{1,2}.*
    decoder.up.{0..4}.block.{0,1}.*   decoder.up.{1..4}.upsample.conv.*
    decoder.norm_out.*   decoder.conv_out.*

``up`` is indexed by resolution level (``up.0`` is the full-resolution level, run last).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unissl.errors import UnisslError
from unissl.tokenizers.base import TokenizerBase
from unissl.utils.io import atomic_dir, sha256_file, write_json
from unissl.utils.weights import read_safetensors, read_torch_weights

TAMING_FORMAT = "taming-vqgan"  # value of "format" in a config.json that points at a checkpoint


@dataclass
class TamingConfig:
    """Hyper-parameters of the taming/MAGE VQGAN (defaults: MAGE's ``config/vqgan.yaml``)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    norm_groups: int = 32  # GroupNorm groups (32 in the checkpoint; smaller only for small test widths)

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if self.z_channels != self.embed_dim:
            raise ValueError(f"z_channels ({self.z_channels}) must equal embed_dim ({self.embed_dim}): "
                             "this layout has no quant_conv")
        f = 2 ** (len(self.ch_mult) - 1)
        if self.resolution % f:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor {f}")
        for m in self.ch_mult:
            if (self.ch * m) % self.norm_groups:
                raise ValueError(f"width {self.ch * m} is not divisible by norm_groups {self.norm_groups}")


TAMING_PRESETS: dict[str, TamingConfig] = {
    # MAGE's vqgan_jax_strongaug.ckpt: 256 px -> 16x16 ids, 1024 codes of dim 256
    "mage-vqgan": TamingConfig(),
}


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class TamingResBlock(nn.Module):
    """MaskGIT-style residual block (see the module docstring for the shortcut quirk)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(cout, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H, W)
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            return self.nin_shortcut(h) + h
        return x + h


class _Upsample(nn.Module):
    """``conv`` after a nearest 2x upsampling (the checkpoint's ``upsample.conv`` keys)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks) and an optional ``upsample.conv`` (decoder)."""

    block: nn.ModuleList
    upsample: _Upsample

    def __init__(self, blocks: list[nn.Module], upsample_ch: int | None = None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if upsample_ch is not None:
            self.upsample = _Upsample(upsample_ch)


def _levels(modules: nn.ModuleList) -> list[_Level]:
    """The levels of a ModuleList, typed."""
    return [m for m in modules if isinstance(m, _Level)]


class _Codebook(nn.Module):
    """The checkpoint's ``quantize.embedding`` (K, D)."""

    def __init__(self, n_embed: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, dim)


class _Mid(nn.Module):
    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.block_1 = TamingResBlock(ch, ch, groups)
        self.block_2 = TamingResBlock(ch, ch, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class TamingEncoder(nn.Module):
    """Images (B, 3, R, R) in [0, 1] -> latents (B, z_channels, R/f, R/f)."""

    def __init__(self, cfg: TamingConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for m in cfg.ch_mult:
            blocks: list[nn.Module] = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(TamingResBlock(cin, cfg.ch * m, g))
                cin = cfg.ch * m
            self.down.append(_Level(blocks))
        self.mid = _Mid(cin, g)
        self.norm_out = nn.GroupNorm(g, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(_levels(self.down)):
            for blk in level.block:
                h = blk(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)  # parameter-free downsampling
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class TamingDecoder(nn.Module):
    """Latents (B, z_channels, r, r) -> images (B, 3, r*f, r*f) (about [0, 1])."""

    def __init__(self, cfg: TamingConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        cin = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin, g)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):  # deepest level first
            blocks: list[nn.Module] = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(TamingResBlock(cin, cfg.ch * cfg.ch_mult[i], g))
                cin = cfg.ch * cfg.ch_mult[i]
            levels.append(_Level(blocks, upsample_ch=cin if i > 0 else None))
        self.up = nn.ModuleList(levels[::-1])  # indexed by resolution level
        self.norm_out = nn.GroupNorm(g, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        up = _levels(self.up)
        for i in reversed(range(len(up))):
            for blk in up[i].block:
                h = blk(h)
            if i > 0:
                h = up[i].upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(_swish(self.norm_out(h)))


class TamingVQGAN(TokenizerBase):
    """The MAGE VQGAN behind the tokenizer API (frozen use only: no training losses here)."""

    kind = "taming-vqgan"

    def __init__(self, cfg: TamingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = TamingEncoder(cfg)
        self.decoder = TamingDecoder(cfg)
        self.quantize = _Codebook(cfg.n_embed, cfg.embed_dim)
        g = cfg.resolution // 2 ** (len(cfg.ch_mult) - 1)
        self.codebook_size, self.grid = cfg.n_embed, (g, g)
        self.image_size, self.channels = cfg.resolution, cfg.in_channels

    def config_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.cfg)
        d["ch_mult"] = list(self.cfg.ch_mult)
        return d

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images.float())  # (B, D, h, w)
        b, d, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        codes = self.quantize.embedding.weight  # (K, D)
        dist = codes.pow(2).sum(1)[None, :] - 2.0 * z_flat @ codes.t()  # (N, K), ||z||^2 dropped
        return dist.argmin(1).view(b, h, w)

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        z_q = self.quantize.embedding(ids).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decoder(z_q)

    def save_pretrained(self, directory: str | Path) -> Path:
        """A directory ``load_tokenizer`` reads: ``config.json`` (``"format": "taming-vqgan"``, the config,
        ``"checkpoint": "model.safetensors"``) and the weights as safetensors (how a saved Sorcen encoder
        keeps the MAGE VQGAN its ids come from)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_dir(directory) as tmp:
            save_file(state, str(tmp / "model.safetensors"))
            write_json(tmp / "config.json", {"format": TAMING_FORMAT, "format_version": 1,
                                             "checkpoint": "model.safetensors", "config": self.config_dict()})
        return directory


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights-only ``torch.load`` of a taming checkpoint, unwrapped from ``{"state_dict": ...}``."""
    fix = "download MAGE's vqgan_jax_strongaug.ckpt again or pass the right path"
    obj: Any = read_safetensors(path, fix) if path.suffix == ".safetensors" else read_torch_weights(path, fix)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnisslError(f"{path} does not hold a state dict of tensors (nor {{'state_dict': ...}})")
    # taming training checkpoints also carry the discriminator / LPIPS weights under "loss."
    return {k: v for k, v in obj.items() if not k.startswith("loss.")}


def load_taming_checkpoint(path: str | Path, config: TamingConfig | None = None,
                           device: str | torch.device = "cpu") -> TamingVQGAN:
    """Load a taming/MAGE VQGAN ``.ckpt`` (default config: MAGE's ``mage-vqgan``), frozen, in eval mode."""
    path = Path(path)
    state = _read_state_dict(path)
    cfg = config if config is not None else dataclasses.replace(TAMING_PRESETS["mage-vqgan"])
    with torch.device("meta"):  # no random init: every parameter comes from the checkpoint
        model = TamingVQGAN(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UnisslError(f"{path}: key mismatch with the taming VQGAN layout ({len(missing)} missing, e.g. "
                          f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}); is it a "
                          "MAGE/taming VQGAN checkpoint with this config?")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise UnisslError(f"{path}: {len(bad)} tensor shape(s) differ from the config, e.g. {bad[:2]}; "
                          "pass the matching TamingConfig")
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model._weights_file = path
    model._weights_sha = sha256_file(path)
    return model.to(device).eval().requires_grad_(False)
