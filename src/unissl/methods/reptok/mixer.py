"""RepTok stage (b), the network: an MLP-Mixer over slots that predicts the velocity of one token z.

Because an image is one vector z (D,), the generator needs no attention: it is an MLP-Mixer over a
handful of *slots*, ``[noisy z + learned position, condition slot(s), time embedding]``. Each block mixes
information across the slots (token-mixing MLP, the only place where z meets its condition) and then
within each slot (channel MLP), both pre-LayerNorm and residual. The velocity is read from slot 0.

Conditioning is either a class (embedding table with an extra *null* row, used for dropped labels and
classifier-free guidance) or text (:class:`unissl.methods.reptok.text.TextConditioner`). The method that
trains it, and its persistence, live in :mod:`unissl.methods.reptok.generator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from unissl.errors import ConfigError
from unissl.layers.mlp import FeedForward, TimestepEmbedding
from unissl.methods.reptok.text import TextConditioner

if TYPE_CHECKING:
    from unissl.methods.reptok.text import TextConditioner

Cond = dict[str, torch.Tensor]  # conditioning of a batch: {"label": (B,)} or {"text", "text_mask", "null"}


# --------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class MixerPreset:
    """Width/depth of the mixer; expansions follow the official MLPMixer1D (3x over slots, 4x channels)."""

    width: int
    depth: int
    slot_expansion: int = 3  # hidden size of the token-mixing MLP = n_slots * slot_expansion
    channel_expansion: float = 4.0  # hidden size of the channel MLP = width * channel_expansion
    time_scale: float = 1000.0  # t in [0, 1] is multiplied by this before the sinusoidal features (release: 1)
    # The time grid sampling uses by default (SamplingConfig.time_grid "model"): "float32" is the release's
    # torch.linspace grid, on which the guidance interval is tested (t = 0.29999998 falls outside [0.3, 0.9]).
    time_grid: Literal["float64", "float32"] = "float64"


GENERATOR_PRESETS: dict[str, MixerPreset] = {
    "tiny": MixerPreset(width=128, depth=2),  # unit tests
    "mini": MixerPreset(width=256, depth=4),  # Fashion-MNIST tokens on a shared CPU
    "small": MixerPreset(width=512, depth=6),
    "base": MixerPreset(width=768, depth=12),
    "paper": MixerPreset(width=1536, depth=28),  # RepTok's ImageNet generator
    # CompVis/RepTok's MLPMixer1D exactly: t enters its TimestepEmbedder unscaled, sampling on the float32 grid.
    "released-xl": MixerPreset(width=1536, depth=28, time_scale=1.0, time_grid="float32"),
    "released-tiny": MixerPreset(width=64, depth=2, time_scale=1.0, time_grid="float32"),  # golden-test size
}


# --------------------------------------------------------------------------------------------- blocks
class MixerBlock(nn.Module):
    """One mixer block: pre-LN token-mixing MLP across slots, then pre-LN channel MLP per slot."""

    def __init__(self, n_slots: int, width: int, slot_expansion: int, channel_expansion: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.token_mlp = FeedForward(n_slots, n_slots * slot_expansion)  # acts on the slot axis
        self.norm2 = nn.LayerNorm(width)
        self.channel_mlp = FeedForward(width, int(width * channel_expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, W) -> (B, S, W)
        y = self.norm1(x).transpose(1, 2)  # (B, W, S): mix along the slots
        x = x + self.token_mlp(y).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class TokenMixer(nn.Module):
    """Attention-free mixer over ``n_slots`` slots of size ``token_dim``; returns slot 0 (B, token_dim)."""

    def __init__(self, token_dim: int, n_slots: int, preset: MixerPreset):
        super().__init__()
        self.n_slots = n_slots
        self.in_proj = nn.Linear(token_dim, preset.width)  # shared by all slots (as the official code)
        self.blocks = nn.ModuleList(
            MixerBlock(n_slots, preset.width, preset.slot_expansion, preset.channel_expansion)
            for _ in range(preset.depth))
        self.norm = nn.LayerNorm(preset.width)
        self.out_proj = nn.Linear(preset.width, token_dim)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:  # (B, S, token_dim) -> (B, token_dim)
        if slots.shape[1] != self.n_slots:
            raise ValueError(f"expected {self.n_slots} slots, got {slots.shape[1]}")
        x = self.in_proj(slots)  # (B, S, W)
        for block in self.blocks:
            x = block(x)
        return self.out_proj(self.norm(x[:, 0]))  # slot 0 only: the noisy token's velocity


# --------------------------------------------------------------------------------------------- conditioning
class Conditioner(Protocol):
    """Turns a batch's condition into slots; also knows the null (unconditional) condition."""

    n_cond_slots: int

    def slots(self, x_slot: torch.Tensor, cond: Cond) -> torch.Tensor:
        """``x_slot`` (B, 1, D) -> ``[x_slot', cond slots]`` (B, 1 + n_cond_slots, D)."""
        ...

    def null(self, cond: Cond) -> Cond:
        """The unconditional condition with the same batch size."""
        ...

    def drop(self, cond: Cond, p: float) -> Cond:
        """Replace each sample's condition by the null one with probability ``p`` (training)."""
        ...


class ClassConditioner(nn.Module):
    """Class embedding with a null class (index ``num_classes``) used for dropped labels and CFG."""

    n_cond_slots = 1

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes + 1, dim)  # the last row is the null class

    def slots(self, x_slot: torch.Tensor, cond: Cond) -> torch.Tensor:
        y = self.embed(cond["label"]).unsqueeze(1)  # (B, 1, D)
        return torch.cat([x_slot, y.to(x_slot.dtype)], dim=1)  # (B, 2, D)

    def null(self, cond: Cond) -> Cond:
        return {"label": torch.full_like(cond["label"], self.num_classes)}

    def drop(self, cond: Cond, p: float) -> Cond:
        label = cond["label"]
        dropped = torch.rand(label.shape, device=label.device) < p
        return {"label": torch.where(dropped, torch.full_like(label, self.num_classes), label)}


def concat_cond(a: Cond, b: Cond) -> Cond:
    """Stack two conditions of the same kind along the batch (for one CFG forward pass)."""
    if a.keys() != b.keys():
        raise ValueError(f"cannot concatenate conditions with keys {sorted(a)} and {sorted(b)}")
    out = {}
    for k in a:
        x, y = a[k], b[k]
        if x.ndim >= 2 and x.shape[1] != y.shape[1]:  # text states of different lengths: right-pad
            n = max(x.shape[1], y.shape[1])
            x, y = _pad_to(x, n), _pad_to(y, n)
        out[k] = torch.cat([x, y], dim=0)
    return out


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    pad = [0, 0] * (x.ndim - 2) + [0, n - x.shape[1]]  # pad axis 1 at the end (zeros / False)
    return F.pad(x, pad)


# --------------------------------------------------------------------------------------------- network
@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator (stored as ``config.json`` next to the weights)."""

    token_dim: int
    preset: str = "mini"
    conditioning: Literal["class", "text"] = "class"
    num_classes: int = 10
    cond_dropout: float = 0.1  # probability of the null condition during training (CFG)
    # text conditioning only
    text_dim: int = 0  # width of the text encoder's hidden states
    n_queries: int = 4  # learnable query tokens attending to the text
    text_depth: int = 2  # cross-attention blocks
    text_heads: int = 4
    text_encoder: str = ""  # directory of the frozen text encoder (recorded for sampling)
    classes: list[str] = field(default_factory=list)  # class names (for prompts and reports)
    tokenizer_path: str = ""  # the RepTok tokenizer whose tokens the generator models

    def __post_init__(self) -> None:
        if self.preset not in GENERATOR_PRESETS:
            raise ConfigError("preset", f"{self.preset!r} is not one of {', '.join(GENERATOR_PRESETS)}")
        if self.token_dim <= 0:
            raise ConfigError("token_dim", f"must be positive, got {self.token_dim}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError("cond_dropout", f"must be in [0, 1), got {self.cond_dropout}")
        if self.conditioning == "class" and self.num_classes < 1:
            raise ConfigError("num_classes", f"class conditioning needs >= 1, got {self.num_classes}")
        if self.conditioning == "text" and self.text_dim <= 0:
            raise ConfigError("text_dim", "text conditioning needs > 0 (the text encoder's hidden size)")


class TokenGenerator(nn.Module):
    """Velocity network ``v(z_t, t, cond)`` over one token: slots ``[z_t + pos, cond..., t]`` -> mixer."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        d = cfg.token_dim
        self.pos = nn.Parameter(torch.zeros(1, 1, d))  # learned position of the noisy-token slot
        self.time_embed = TimestepEmbedding(d, t_scale=GENERATOR_PRESETS[cfg.preset].time_scale)
        self.conditioner: ClassConditioner | TextConditioner
        if cfg.conditioning == "class":
            self.conditioner = ClassConditioner(cfg.num_classes, d)
        else:
            self.conditioner = TextConditioner(d, cfg.text_dim, n_queries=cfg.n_queries, depth=cfg.text_depth,
                                               heads=cfg.text_heads)
        n_slots = 1 + self.conditioner.n_cond_slots + 1
        self.mixer = TokenMixer(d, n_slots, GENERATOR_PRESETS[cfg.preset])
        self.apply(_init_weights)
        nn.init.normal_(self.pos, std=0.02)
        # Zero output layer: the initial velocity is 0, so training starts from the identity flow.
        nn.init.zeros_(self.mixer.out_proj.weight)
        nn.init.zeros_(self.mixer.out_proj.bias)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """``z_t`` (B, D), ``t`` (B,) -> velocity (B, D)."""
        x = (z_t + self.pos[:, 0]).unsqueeze(1)  # (B, 1, D)
        slots = self.conditioner.slots(x, cond)  # (B, 1 + K, D)
        t_slot = self.time_embed(t).unsqueeze(1).to(slots.dtype)  # (B, 1, D)
        return self.mixer(torch.cat([slots, t_slot], dim=1))  # (B, D)


def _init_weights(m: nn.Module) -> None:
    """Xavier for linear layers (as DiT), zero biases, N(0, 0.02) embeddings; LayerNorm keeps (1, 0)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
