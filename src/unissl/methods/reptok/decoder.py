"""RepTok's flow-matching decoder: a transformer that predicts the velocity of the image (or VAE latent)
path, conditioned in context on the single projected SSL token.

Reading order: presets -> time embedding -> block -> :class:`FlowDecoder`.

* The input ``x_t`` (B, C, H, W) is cut into p x p patches and linearly embedded (N = HW / p^2 tokens).
* The condition ``h`` (B, D) (the projected token, see :mod:`.projection`) is **prepended** as one extra
  token (with ``register_target='all'`` the projected registers come before it); it takes part in every
  attention layer and is dropped before unpatchify.
* The flow time enters only through adaptive RMSNorm (scale, shift, gate from a time embedding; the released
  presets use CompVis/RepTok's scale-only form, no shift or gate).
* ``shared_in_proj`` (the released presets): after the patch embedding, the condition token(s) and the patch
  tokens go through one shared bias-free Linear, as the release's ``mid_merge.proj`` does.
* Blocks: cosine attention with 2-D axial RoPE on the patch tokens, SwiGLU MLP; every residual branch's
  output projection and the final projection start at zero, so the untrained network predicts v = 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from unissl.errors import UnisslError
from unissl.layers.adaln import AdaRMSNorm, Modulation
from unissl.layers.cosine_attention import CosineAttention
from unissl.layers.fourier import FourierFeatures
from unissl.layers.patch import patchify, unpatchify
from unissl.layers.rmsnorm import RMSNorm
from unissl.layers.rope import axial_positions
from unissl.layers.swiglu import SwiGLU


@dataclass(frozen=True)
class DecoderPreset:
    """Size of a decoder transformer."""

    width: int  # token width D
    depth: int  # number of blocks
    head_dim: int  # channels per attention head (multiple of 8, for RoPE)
    ff_mult: int = 3  # SwiGLU hidden = ff_mult * width
    time_dim: int = 256  # width of the time embedding / mapping network
    mapping_depth: int = 2  # SwiGLU blocks in the time mapping network
    modulation: Modulation = "scale_shift_gate"  # adaptive RMSNorm form; "scale": the release's scale-only
    shared_in_proj: bool = False  # condition + patch tokens through one shared Linear (the release's mid_merge.proj)


# The paper's decoder: width 1152, depth 28, head dim 72 (16 heads); the others fit a CPU. `released-xl` is
# CompVis/RepTok's decoder exactly (configs/model/reptok.yaml: mapping width 1024, scale-only adaptive norm,
# the shared Linear after the patch merge); `released-tiny` is the same architecture at a CPU test size (the
# golden fixtures of tests/test_released_reptok.py are written by the released code at this size).
DECODER_PRESETS: dict[str, DecoderPreset] = {
    "tiny": DecoderPreset(width=64, depth=2, head_dim=16, time_dim=64, mapping_depth=1),
    "compact": DecoderPreset(width=128, depth=2, head_dim=32, time_dim=64, mapping_depth=1),  # CPU, tokens <= 128-d
    "small": DecoderPreset(width=128, depth=4, head_dim=32, time_dim=128, mapping_depth=1),
    "base": DecoderPreset(width=384, depth=12, head_dim=64, time_dim=256),
    "paper": DecoderPreset(width=1152, depth=28, head_dim=72, time_dim=256),
    "released-xl": DecoderPreset(width=1152, depth=28, head_dim=72, time_dim=1024, mapping_depth=2,
                                 modulation="scale", shared_in_proj=True),
    "released-tiny": DecoderPreset(width=64, depth=2, head_dim=16, time_dim=32, mapping_depth=2,
                                   modulation="scale", shared_in_proj=True),
}


def get_decoder_preset(name: str) -> DecoderPreset:
    """Look a preset up by name, with a one-line error listing the choices."""
    if name not in DECODER_PRESETS:
        raise UnisslError(f"unknown decoder preset {name!r}; choose one of {sorted(DECODER_PRESETS)}")
    return DECODER_PRESETS[name]


class TimeEmbedding(nn.Module):
    """t (B,) -> (B, time_dim): Fourier features, a linear map and a small residual SwiGLU mapping network."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.fourier = FourierFeatures(1, dim)
        self.inp = nn.Linear(dim, dim, bias=False)
        self.in_norm = RMSNorm(dim)
        self.norms = nn.ModuleList([RMSNorm(dim) for _ in range(depth)])
        self.mlps = nn.ModuleList([SwiGLU(dim, 3 * dim, zero_init_out=True) for _ in range(depth)])
        self.out_norm = RMSNorm(dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        x = self.in_norm(self.inp(self.fourier(t[:, None].float())))
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        return self.out_norm(x)


class DecoderBlock(nn.Module):
    """Adaptive-RMSNorm pre-norm block: (gated) cosine attention, then a (gated) SwiGLU MLP."""

    def __init__(self, p: DecoderPreset) -> None:
        super().__init__()
        self.norm1 = AdaRMSNorm(p.width, p.time_dim, modulation=p.modulation)
        self.attn = CosineAttention(p.width, p.head_dim, rope=True, zero_init_out=True)
        self.norm2 = AdaRMSNorm(p.width, p.time_dim, modulation=p.modulation)
        self.mlp = SwiGLU(p.width, p.ff_mult * p.width, zero_init_out=True)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, pos: torch.Tensor, n_prefix: int) -> torch.Tensor:
        y, gate = self.norm1(x, temb)  # (B, N, D), (B, 1, D) or None (scale-only)
        a = self.attn(y, pos, n_prefix)
        x = x + (a if gate is None else gate * a)
        y, gate = self.norm2(x, temb)
        m = self.mlp(y)
        return x + (m if gate is None else gate * m)


class FlowDecoder(nn.Module):
    """Velocity network v(x_t, t | h) over a (C, H, W) image or latent, with an in-context condition token."""

    def __init__(self, preset: DecoderPreset, channels: int, size: int, patch_size: int) -> None:
        super().__init__()
        if size % patch_size:
            raise ValueError(f"input size {size} is not a multiple of the patch size {patch_size}")
        self.preset, self.channels, self.size, self.patch_size = preset, channels, size, patch_size
        self.grid = size // patch_size
        d = preset.width
        self.patch_in = nn.Linear(channels * patch_size**2, d, bias=False)
        # The release's mid_merge.proj: one Linear over [condition tokens, patch tokens] (default init).
        self.in_proj = nn.Linear(d, d, bias=False) if preset.shared_in_proj else None
        self.time = TimeEmbedding(preset.time_dim, preset.mapping_depth)
        self.blocks = nn.ModuleList([DecoderBlock(preset) for _ in range(preset.depth)])
        self.out_norm = RMSNorm(d)
        self.patch_out = nn.Linear(d, channels * patch_size**2, bias=False)
        nn.init.zeros_(self.patch_out.weight)  # predict v = 0 at start
        self.register_buffer("pos", axial_positions(self.grid, self.grid), persistent=False)  # (N, 2)

    @property
    def width(self) -> int:
        """Width of the condition token the decoder expects."""
        return self.preset.width

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C p p), row-major patches."""
        return patchify(x, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C p p) -> (B, C, H, W), the inverse of :meth:`patchify`."""
        return unpatchify(x, self.patch_size, self.channels, (self.grid, self.grid))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x_t`` (B, C, H, W), ``t`` (B,), ``cond`` (B, D) or (B, K, D) condition tokens -> velocity (B, C, H, W)."""
        tokens = self.patch_in(self.patchify(x_t))  # (B, N, D)
        cond = cond[:, None, :] if cond.dim() == 2 else cond  # (B, K, D)
        k = cond.shape[1]
        x = torch.cat([cond.to(tokens.dtype), tokens], dim=1)  # (B, K + N, D)
        if self.in_proj is not None:
            x = self.in_proj(x)  # the same Linear for the condition and the patch tokens
        temb = self.time(t)  # (B, T)
        for block in self.blocks:
            x = block(x, temb, self.pos, n_prefix=k)
        x = self.patch_out(self.out_norm(x[:, k:]))  # drop the condition tokens: (B, N, C p p)
        return self.unpatchify(x)

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable)."""
        return {"preset": asdict(self.preset), "channels": self.channels, "size": self.size,
                "patch_size": self.patch_size}
