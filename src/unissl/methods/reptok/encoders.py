"""SSL encoder adapters: images -> one token z, with exactly one trainable parameter (the input [cls]).

Every adapter wraps a **frozen** backbone (``requires_grad=False``, always in eval mode) and owns

* ``cls`` (D,): the trainable input class embedding, initialised from the backbone's own;
* ``cls_init`` (D,): a frozen copy of that initial value (a buffer).

``forward(images)`` runs the backbone with ``cls`` in the class slot; gradients flow back through the
frozen blocks into ``cls`` only. ``frozen(images)`` runs the same frozen weights with ``cls_init``, which
is exactly the original encoder (all other weights are shared and never change), so it gives the
``z_frozen`` of the cosine regulariser without holding a second copy of the network.

Kinds (:data:`ENCODERS`): ``dinov2`` (transformers Dinov2Model / Dinov2WithRegistersModel from a local
directory, or a facebookresearch/dinov2 torch-hub ``.pth`` state dict), ``sorcen`` (image -> frozen VQ
tokenizer -> frozen Sorcen encoder), ``random`` (a randomly initialised small ViT over pixel patches, the
paper's ablation).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from unissl.data.base import adapt_images
from unissl.errors import ConfigError, UnisslError
from unissl.layers.patch import patchify
from unissl.layers.vit import Block, init_vit_weights
from unissl.methods.reptok.dinov2_hub import load_hub_dinov2
from unissl.utils.optional import require
from unissl.utils.weights import load_pretrained_dir, refuse_file, weights_file_kind

if TYPE_CHECKING:
    from unissl.methods.sorcen.model import SorcenModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_square(images: torch.Tensor, size: int, channels: int = 3) -> torch.Tensor:
    """Centre-crop to a square, then the datasets' adaptation (:func:`unissl.data.base.adapt_images`:
    bilinear antialiased resize to ``size``, grey -> RGB).

    ``images`` (B, C, H, W) in [0, 1] -> (B, channels, size, size).
    """
    h, w = images.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        images = images[:, :, top:top + s, left:left + s]
    return adapt_images(images, channels, size, where="the encoder's input")


def released_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """CompVis/RepTok's ``better_resize``: centre crop to a square (torchvision's offsets, ``round((H - s) / 2)``),
    average-pool by the integer factor ``s // size`` when it exceeds 1, then bilinear resize **without**
    antialiasing. Grey images are repeated to RGB.

    ``images`` (B, C, H, W) -> (B, 3, size, size) (any value range: every step is an affine average).
    """
    h, w = images.shape[-2:]
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    x = images[:, :, top:top + s, left:left + s]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if s // size > 1:
        x = F.avg_pool2d(x, s // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


class SSLEncoder(nn.Module):
    """Base class: a frozen ``backbone`` plus one trainable input class embedding ``cls`` (D,)."""

    backbone: nn.Module  # set by each adapter
    cls_init: torch.Tensor  # buffer

    kind: str = ""

    def __init__(self, cls_init: torch.Tensor) -> None:
        super().__init__()
        cls_init = cls_init.detach().reshape(-1).float().clone()
        self.cls = nn.Parameter(cls_init.clone())  # (D,) the only trainable parameter
        self.register_buffer("cls_init", cls_init)  # (D,) the original value, for z_frozen

    @property
    def dim(self) -> int:
        """Width D of the token z."""
        return int(self.cls.shape[0])

    def freeze_backbone(self) -> None:
        """Every backbone weight frozen and in eval mode (dropout off, no running-stat updates)."""
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> SSLEncoder:
        super().train(mode)
        self.backbone.eval()  # the backbone is frozen and stays in eval mode
        return self

    def encode_with(self, images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> z (B, D) with ``cls`` (D,) as the input class embedding."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, D)
        return self.encode_with(images, self.cls)

    @torch.no_grad()
    def frozen(self, images: torch.Tensor) -> torch.Tensor:
        """z_frozen (B, D): the original encoder's token (``cls_init`` in the class slot)."""
        return self.encode_with(images, self.cls_init)

    # A frozen, cls-independent first stage (the Sorcen adapter's VQ ids) can be computed once per image:
    # ``prepare(images)`` gives it, ``encode_prepared(x, cls)`` continues from it. The default has none.
    def prepare(self, images: torch.Tensor) -> torch.Tensor | None:
        """The backbone input that does not depend on ``cls`` and is worth caching, or None."""
        return None

    def encode_prepared(self, prepared: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """z (B, D) from :meth:`prepare`'s output with ``cls`` in the class slot."""
        raise NotImplementedError(f"{type(self).__name__} has no cacheable first stage")

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable arguments that rebuild this adapter with :func:`build_encoder`."""
        raise NotImplementedError

    def saves_backbone(self) -> bool:
        """Whether the backbone's weights belong in the tokenizer checkpoint (False: reloaded from a path)."""
        return False


# ---------------------------------------------------------------- DINOv2 (transformers)
class Dinov2Encoder(SSLEncoder):
    """DINOv2 (with registers when it has them) from a local transformers directory or a torch-hub state dict
    (``dinov2_vitb14_reg4_pretrain.pth``, the format CompVis/RepTok loads; :mod:`.dinov2_hub`).

    z is the class token after the final LayerNorm (``pooler_output``). Inputs are resized to
    ``image_size`` (a multiple of the patch size; default 224, the paper's) and ImageNet-normalised.
    ``resize="released"`` resizes as CompVis/RepTok does (:func:`released_resize`: no antialiasing) instead of
    the datasets' antialiased resize; ``dtype="bfloat16"`` runs the backbone under bf16 autocast, as the release
    encodes (the token is returned in float32).
    """
    mean: torch.Tensor  # buffer
    std: torch.Tensor  # buffer

    kind = "dinov2"

    def __init__(self, path: str | Path, image_size: int | None = None,
                 resize: Literal["antialias", "released"] = "antialias",
                 dtype: Literal["float32", "bfloat16"] = "float32") -> None:
        if resize not in ("antialias", "released"):
            raise UnisslError(f"DINOv2 resize must be 'antialias' or 'released', got {resize!r}")
        if dtype not in ("float32", "bfloat16"):
            raise UnisslError(f"DINOv2 dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        path = Path(path)
        backbone = self._load_hub_file(path) if path.is_file() else self._load_directory(path)
        super().__init__(backbone.embeddings.cls_token)
        self.backbone = backbone
        self.freeze_backbone()
        self.path = str(path)
        patch, native = backbone.config.patch_size, backbone.config.image_size  # ints (or pairs) in the config
        self.patch = int(patch if isinstance(patch, int) else patch[0])
        size = image_size or min(224, int(native if isinstance(native, int) else native[0]))
        self.image_size = max(self.patch, round(size / self.patch) * self.patch)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.resize, self.dtype = resize, dtype

    @staticmethod
    def _load_hub_file(path: Path) -> Any:
        """A torch-hub state dict (``dinov2_vitb14_reg4_pretrain.pth``), read weights-only; any other file is
        named for what it is (a code pickle is never unpickled)."""
        if weights_file_kind(path) != "torch-weights":
            raise ConfigError("encoder_path", str(refuse_file(
                path, "DINOv2 encoder path", "pass a DINOv2 torch-hub state dict (e.g. dinov2_vitb14_reg4_pretrain.pth) "
                "or a local transformers directory (config.json + model.safetensors, e.g. "
                "facebook/dinov2-with-registers-base)")))

        return load_hub_dinov2(path)

    @staticmethod
    def _load_directory(path: Path) -> Any:
        """A transformers Dinov2Model / Dinov2WithRegistersModel saved with ``save_pretrained``."""
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ConfigError("encoder_path", f"DINOv2 directory {path} has no config.json; download the weights "
                              "elsewhere (e.g. facebook/dinov2-with-registers-base) and pass that local directory, "
                              "or save a model there with save_pretrained")
        try:
            model_type = json.loads(cfg_file.read_text()).get("model_type", "dinov2")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise UnisslError(f"{cfg_file} is not a valid transformers config ({type(e).__name__}); download the "
                              f"DINOv2 directory again") from None

        transformers = require("transformers", "hf", "the dinov2 encoder")
        cls_ = transformers.Dinov2WithRegistersModel if model_type == "dinov2_with_registers" else transformers.Dinov2Model

        return load_pretrained_dir(lambda: cls_.from_pretrained(str(path), local_files_only=True), path, "DINOv2",
                                   "pass a complete local transformers directory (config.json + weights)")

    def encode_with(self, images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        square = (released_resize(images, self.image_size) if self.resize == "released"
                  else to_square(images, self.image_size))
        x = (square - self.mean) / self.std  # (B, 3, S, S)
        # Run the frozen model with its cls_token parameter swapped for `cls` (differentiable in `cls`).
        # bf16: autocast as the release encodes; float32 leaves any autocast of the caller (training amp) alone
        amp = (torch.autocast(x.device.type, dtype=torch.bfloat16) if self.dtype == "bfloat16"
               else contextlib.nullcontext())
        with amp:
            out = torch.func.functional_call(self.backbone, {"embeddings.cls_token": cls.view(1, 1, -1)}, (x,))
        return out.pooler_output.float()  # (B, D): class token after the final LayerNorm

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": self.kind, "path": self.path, "image_size": self.image_size}
        if self.resize != "antialias":  # only when set, so the configs of existing tokenizers stay as they were
            spec["resize"] = self.resize
        if self.dtype != "float32":
            spec["dtype"] = self.dtype
        return spec


# ---------------------------------------------------------------- Sorcen (unissl)
class SorcenEncoder(SSLEncoder):
    """image -> frozen VQ tokenizer -> frozen Sorcen encoder; the class slot's input word embedding trains.

    z is the class-slot output after the encoder's final norm.
    """

    kind = "sorcen"
    backbone: SorcenModel

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise ConfigError("encoder_path", f"Sorcen run directory {path} not found; train one with "
                              "`unissl train sorcen` and pass its run directory")
        if path.is_file():
            raise ConfigError("encoder_path", str(refuse_file(path, "Sorcen encoder path",
                                                              "pass the run directory of `unissl train sorcen`")))
        try:
            from unissl.methods.sorcen import load_sorcen
        except ImportError as e:
            raise UnisslError("this unissl build has no Sorcen loader (unissl.methods.sorcen.load_sorcen)") from e
        model, vq = load_sorcen(path)
        super().__init__(model.embed.word.weight[model.special.cls])
        self.backbone = model
        self.vq = vq
        self.freeze_backbone()
        self.vq.requires_grad_(False)
        self.vq.eval()
        self.path = str(path)

    def train(self, mode: bool = True) -> SorcenEncoder:
        super().train(mode)
        self.vq.eval()
        return self

    def encode_with(self, images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return self.encode_prepared(self.prepare(images), cls)

    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen VQ ids (B, h, w) int64 of images (B, C, H, W) in [0, 1]."""
        size, ch = int(self.vq.image_size), int(self.vq.channels)
        if images.shape[-1] != size or images.shape[-2] != size or images.shape[1] != ch:
            images = to_square(images, size, channels=ch)
        return self.vq.encode(images)

    def encode_prepared(self, prepared: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(prepared.long(), class_embedding_override=cls)[:, 0]  # (B, D)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


# ---------------------------------------------------------------- random-init ViT (ablation)
class RandomViT(nn.Module):
    """A small pre-norm ViT over pixel patches, randomly initialised and never trained."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, image_size: int) -> None:
        super().__init__()

        if image_size % patch:
            raise UnisslError(f"random ViT: image size {image_size} is not a multiple of the patch {patch}")
        self.patch, self.grid = patch, image_size // patch
        self.patch_embed = nn.Linear(3 * patch * patch, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.cls_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(init_vit_weights)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) normalised, cls (D,) -> class output after the final norm (B, D)."""
        b, patches = x.shape[0], patchify(x, self.patch)  # (B, N, 3 p p)
        tokens = torch.cat([cls.view(1, 1, -1).expand(b, 1, -1), self.patch_embed(patches)], dim=1)
        tokens = tokens + self.pos_embed  # (B, 1 + N, D)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 0]


# Sizes of the random-init ablation encoder (patch 4 suits 28-32 px images, patch 14 the paper's 224 px).
RANDOM_VIT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "depth": 4, "heads": 4, "patch": 4},
    "small": {"dim": 192, "depth": 6, "heads": 3, "patch": 4},
    "base": {"dim": 768, "depth": 12, "heads": 12, "patch": 14},
}


class RandomViTEncoder(SSLEncoder):
    """The random-init ablation: a seeded random ViT; its weights are saved with the tokenizer."""

    kind = "random"

    def __init__(self, image_size: int = 28, dim: int = 64, depth: int = 4, heads: int = 4, patch: int = 4,
                 seed: int = 0) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = RandomViT(dim, depth, heads, patch, image_size)
        super().__init__(backbone.cls_token)
        self.backbone = backbone
        self.freeze_backbone()
        self.args = {"image_size": image_size, "dim": dim, "depth": depth, "heads": heads, "patch": patch,
                     "seed": seed}

    def encode_with(self, images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        x = to_square(images, self.args["image_size"]) * 2.0 - 1.0  # (B, 3, S, S) in [-1, 1]
        return self.backbone(x, cls)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.args}

    def saves_backbone(self) -> bool:
        return True


ENCODERS: dict[str, type[SSLEncoder]] = {"dinov2": Dinov2Encoder, "sorcen": SorcenEncoder, "random": RandomViTEncoder}


def build_encoder(spec: dict[str, Any]) -> SSLEncoder:
    """An adapter from its :meth:`SSLEncoder.spec` (``{"kind": ..., **kwargs}``)."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in ENCODERS:
        raise UnisslError(f"unknown encoder kind {kind!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[kind](**spec)


def backbone_checksum(encoder: SSLEncoder) -> str:
    """sha256 (16 hex digits) of the backbone's parameters: detects a reloaded backbone that differs."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(encoder.backbone.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
