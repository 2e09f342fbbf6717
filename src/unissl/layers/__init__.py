"""Building blocks shared by the methods, one concept per file, re-exported flat:
``from unissl.layers import RMSNorm, SwiGLU, ProjectionHead``."""

from unissl.layers.adaln import AdaRMSNorm
from unissl.layers.cosine_attention import CosineAttention
from unissl.layers.cross_attention import CrossAttention
from unissl.layers.fourier import FourierFeatures
from unissl.layers.heads import ProjectionHead
from unissl.layers.mlp import FeedForward, TimestepEmbedding
from unissl.layers.patch import patchify, unpatchify
from unissl.layers.rmsnorm import RMSNorm, rms_norm
from unissl.layers.rope import AxialRoPE2D, apply_rotary, axial_positions
from unissl.layers.swiglu import SwiGLU
from unissl.layers.vit import Attention, Block, Mlp, init_vit_weights

__all__ = [
    "AdaRMSNorm", "Attention", "AxialRoPE2D", "Block", "CosineAttention", "CrossAttention", "FeedForward",
    "FourierFeatures", "Mlp", "ProjectionHead", "RMSNorm", "SwiGLU", "TimestepEmbedding", "apply_rotary",
    "axial_positions", "init_vit_weights", "patchify", "rms_norm", "unpatchify",
]
