"""The papers' training configurations on the meta device: parameters, GFLOPs per image, memory per GPU.

Nothing runs: every model is built on ``torch.device("meta")`` (shapes only, no memory, no compute) and one
training step (forward + backward of the method's loss) is traced twice:

* FLOPs with :func:`unissl.utils.flops.step_flops` (``FlopCounterMode``: matmuls, convolutions and attention,
  which the counter sees on meta tensors; 2 FLOPs per multiply-add, forward + backward). The forward alone is
  given too in DiT's convention (1 FLOP per multiply-add, forward only), the one RepTok's paper quotes
  (generator about 1.9 GFLOPs per sample).
* Memory per GPU at the paper's per-GPU batch: fp32 weights, gradients and AdamW's two moments of the
  trainable parameters (16 bytes each), fp32 frozen parameters (4 bytes), plus the activations a step keeps
  for its backward: every tensor saved for backward is summed (``saved_tensors_hooks``), with the model in bf16
  (the papers train under bf16 autocast; LayerNorm / softmax outputs that autocast keeps in fp32 are counted at
  bf16, so the figure is a slight underestimate there) and attention saving what the flash kernel saves (q, k,
  v, the output and a float32 log-sum-exp per row), not the L x L matrix the meta device's math path would.
  Allocator slack, the CUDA context (~0.5 GiB) and communication buffers are not included:
  ``benchmarks/gpu_check.py`` measures the real peak on a GPU.

Configurations (the per-GPU batch and where it comes from are columns of the table):

* Sorcen ViT-B / ViT-L (MAGE's shapes, 1024 codes, 16 x 16 ids): the released launch script
  (LEASE launch_pretrain_sorcen.sh) trains on 8 nodes x 4 GPUs at ``--batch_size 128`` per GPU (4096 global).
* RepTok decoder (``paper`` preset and ``released-xl``, CompVis/RepTok's exact decoder) over SD-VAE latents
  4 x 32 x 32 with patch 2, conditioned on one 768-d token; the encoder side (DINOv2 ViT-B/14 at 224 px:
  gradients reach only the [cls] input, plus the frozen copy's forward) is its own row, with a random ViT of
  the same shapes (DINOv2's 4 registers left out). configs/reptok/imagenet-paper.yaml: global batch 256,
  per GPU 32 on 8 GPUs.
* RepTok generator (``paper`` and ``released-xl`` mixers over one 768-d token, 1000 classes), per GPU 256
  (not stated by the paper; the release's config does not say either).

    python benchmarks/paper_sheet.py                    # prints the table
    python benchmarks/paper_sheet.py --write docs/paper_configs.md
    python benchmarks/paper_sheet.py --smoke            # tiny presets, seconds (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unissl.engine.method import Method
from unissl.flow import LinearPath, LogitNormalTime
from unissl.methods.reptok.decoder import DECODER_PRESETS, FlowDecoder
from unissl.methods.reptok.encoders import RandomViT
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.mixer import GENERATOR_PRESETS, GeneratorConfig
from unissl.methods.sorcen.method import build_method
from unissl.methods.sorcen.presets import PRESETS as SORCEN_PRESETS
from unissl.utils.flops import count_flops, step_flops

GIB = 2**30


# ------------------------------------------------------------------------------------------- step methods
class DecoderStep(Method):
    """RepTok's decoder loss on precomputed latents (B, C, S, S) and tokens (B, D): x_t = (1-t) x + t eps,
    t ~ logit-normal, target eps - x, MSE; the token enters through a Linear to the decoder width (the
    projection of the tokenizer)."""

    def __init__(self, preset: str, token_dim: int = 768, channels: int = 4, size: int = 32, patch: int = 2):
        super().__init__()
        self.decoder = FlowDecoder(DECODER_PRESETS[preset], channels, size, patch)
        self.proj = nn.Linear(token_dim, self.decoder.width)
        self.path, self.time = LinearPath(data_at=0.0), LogitNormalTime()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["latent"]  # (B, C, S, S)
        t = self.time.sample(x.shape[0], device=x.device).to(x.dtype)  # (B,)
        ps = self.path.sample(x, t)
        v = self.decoder(ps.x_t, t, self.proj(batch["z"]))  # (B, C, S, S)
        return {"loss": F.mse_loss(v.float(), ps.target.float())}


class EncoderStep(Method):
    """RepTok's encoder side: a frozen ViT whose only trainable input is the [cls] embedding (gradients flow
    back through every block into it), plus the frozen copy's forward for the cosine term."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, patch: int = 14, image_size: int = 224):
        super().__init__()
        self.vit = RandomViT(dim, depth, heads, patch, image_size).requires_grad_(False)
        self.cls = nn.Parameter(torch.zeros(dim))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # (B, 3, 224, 224)
        z = self.vit(x, self.cls)  # (B, D), grad to cls only
        with torch.no_grad():
            z_frozen = self.vit(x, self.vit.cls_token)  # (B, D)
        return {"loss": (1 - F.cosine_similarity(z.float(), z_frozen.float(), dim=-1)).mean()}


@dataclass(frozen=True)
class PaperConfig:
    """One row: a method and its batch builder at the paper's shapes, and the per-GPU batch."""

    name: str
    build: Callable[[], Method]
    batch: Callable[[int, torch.device], dict[str, torch.Tensor]]
    per_gpu_batch: int
    batch_source: str


def _sorcen(preset: str) -> Callable[[], Method]:
    def build() -> Method:
        method = build_method(SORCEN_PRESETS[preset], "sorcen")
        method._progress = (0, 1)  # progress known without reading the (meta) step buffers
        return method
    return build


def _sorcen_batch(preset: str) -> Callable[[int, torch.device], dict[str, torch.Tensor]]:
    arch = SORCEN_PRESETS[preset]
    return lambda b, dev: {"ids": torch.randint(0, arch.codebook_size, (b, *arch.grid), device=dev)}


def _latent_batch(size: int = 32, channels: int = 4, token_dim: int = 768):
    return lambda b, dev: {"latent": torch.randn(b, channels, size, size, device=dev),
                           "z": torch.randn(b, token_dim, device=dev)}


def _token_batch(token_dim: int = 768, classes: int = 1000):
    return lambda b, dev: {"z": torch.randn(b, token_dim, device=dev),
                           "label": torch.randint(0, classes, (b,), device=dev)}


def _generator(preset: str, token_dim: int = 768, classes: int = 1000) -> Callable[[], Method]:
    return lambda: TokenGeneratorMethod(GeneratorConfig(token_dim=token_dim, preset=preset, num_classes=classes))


SORCEN_SOURCE = "LEASE launch script: 128 x 32 GPUs"
TOKENIZER_SOURCE = "imagenet-paper.yaml: 256 / 8 GPUs"
GENERATOR_SOURCE = "assumed (not published)"


def paper_configs() -> list[PaperConfig]:
    """The rows of the sheet (the decoder/generator ``released-xl`` rows only where the preset exists)."""
    rows = [PaperConfig("Sorcen ViT-B", _sorcen("vit_b"), _sorcen_batch("vit_b"), 128, SORCEN_SOURCE),
            PaperConfig("Sorcen ViT-L", _sorcen("vit_l"), _sorcen_batch("vit_l"), 128, SORCEN_SOURCE),
            PaperConfig("RepTok encoder side (ViT-B/14, 224 px)", EncoderStep,
                        lambda b, dev: {"image": torch.randn(b, 3, 224, 224, device=dev)}, 32, TOKENIZER_SOURCE)]
    for preset in ("paper", "released-xl"):
        if preset in DECODER_PRESETS:
            rows.append(PaperConfig(f"RepTok decoder `{preset}` (4x32x32, p2)", lambda p=preset: DecoderStep(p),
                                    _latent_batch(), 32, TOKENIZER_SOURCE))
    for preset in ("paper", "released-xl"):
        if preset in GENERATOR_PRESETS:
            rows.append(PaperConfig(f"RepTok generator `{preset}` (768-d token)", _generator(preset),
                                    _token_batch(), 256, GENERATOR_SOURCE))
    return rows


def smoke_configs() -> list[PaperConfig]:
    """The same kinds of rows at tiny sizes (the CI check that every code path still runs)."""
    return [PaperConfig("Sorcen tiny", _sorcen("tiny"), _sorcen_batch("tiny"), 4, "smoke"),
            PaperConfig("RepTok encoder side (tiny ViT)", lambda: EncoderStep(64, 2, 2, 8, 32),
                        lambda b, dev: {"image": torch.randn(b, 3, 32, 32, device=dev)}, 4, "smoke"),
            PaperConfig("RepTok decoder `tiny`", lambda: DecoderStep("tiny", 16, 4, 8, 2),
                        _latent_batch(8, 4, 16), 4, "smoke"),
            PaperConfig("RepTok generator `tiny`", _generator("tiny", 16, 10), _token_batch(16, 10), 4, "smoke")]


# ------------------------------------------------------------------------------------------- counting
class _FlashAttention(torch.autograd.Function):
    """Shapes-only attention that saves for backward what the flash kernel saves (q, k, v, out, lse)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = torch.empty_like(q)  # (B, H, L, d)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # (B, H, L)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def _flash_like_attention() -> Iterator[None]:
    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):
        return _FlashAttention.apply(q, k, v)

    F.scaled_dot_product_attention = sdpa  # type: ignore[assignment]
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original  # type: ignore[assignment]


def saved_activation_bytes(method: Method, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors one forward keeps for its backward (parameters and their views excluded)."""
    params = {id(p) for p in method.parameters()}
    seen: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # keep the packed tensors alive so that ids stay unique

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(t) not in params and id(base) not in params:
            seen.setdefault(id(base), base.numel() * base.element_size())
            keep.append(base)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _flash_like_attention():
        method(batch)["loss"]
    return sum(seen.values())


@dataclass
class SheetRow:
    """The numbers of one configuration."""

    name: str
    params_m: float  # all parameters, millions
    trainable_m: float
    gflops_train: float  # forward + backward, 2 FLOPs per multiply-add, per image
    gflops_fwd_dit: float  # forward only, 1 FLOP per multiply-add (DiT / RepTok paper convention), per image
    per_gpu_batch: int
    batch_source: str
    state_gib: float  # weights + grads + AdamW moments (trainable), frozen weights
    activations_gib: float  # saved for backward at the per-GPU batch, bf16
    total_gib: float


def measure(cfg: PaperConfig, flop_batch: int = 2) -> SheetRow:
    """Build ``cfg`` on the meta device and count its parameters, FLOPs and memory."""
    meta = torch.device("meta")
    with meta:
        torch.manual_seed(0)
        method = cfg.build().train()
    total = sum(p.numel() for p in method.parameters())
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    batch = cfg.batch(flop_batch, meta)
    train_flops, _ = step_flops(method, batch)
    with torch.no_grad():
        fwd_flops, _ = count_flops(lambda: method(batch))
    method_bf16 = method.to(torch.bfloat16)
    big = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
           for k, v in cfg.batch(cfg.per_gpu_batch, meta).items()}
    act = saved_activation_bytes(method_bf16, big)
    state = 16 * trainable + 4 * (total - trainable)
    return SheetRow(cfg.name, total / 1e6, trainable / 1e6, train_flops / flop_batch / 1e9,
                    fwd_flops / 2 / flop_batch / 1e9, cfg.per_gpu_batch, cfg.batch_source, state / GIB,
                    act / GIB, (state + act) / GIB)


def markdown(rows: list[SheetRow]) -> str:
    """The sheet as a Markdown table."""
    head = ("| configuration | params (M) | trainable (M) | GFLOPs / image, train (fwd+bwd, 2/MAC) | "
            "GFLOPs / image, fwd (1/MAC, DiT) | batch / GPU | batch source | weights+grads+AdamW (GiB) | "
            "activations, bf16 (GiB) | memory / GPU (GiB) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r.name} | {r.params_m:.1f} | {r.trainable_m:.3g} | {r.gflops_train:.4g} | "
                     f"{r.gflops_fwd_dit:.4g} | {r.per_gpu_batch} | {r.batch_source} | {r.state_gib:.2f} | "
                     f"{r.activations_gib:.2f} | {r.total_gib:.1f} |")
    return "\n".join(lines)


DOC_HEAD = """# The papers' configurations, computed on the meta device

Written by `python benchmarks/paper_sheet.py --write docs/paper_configs.md` (nothing runs: shapes only). What
each column counts, and what it leaves out, is in the script's docstring; in short: FLOPs are counted by
`FlopCounterMode` (attention included), memory is fp32 weights + gradients + AdamW moments of the trainable
parameters, fp32 frozen weights, and the bf16 tensors one step keeps for its backward with flash attention;
no allocator slack, CUDA context or communication buffers (`benchmarks/gpu_check.py` measures the real peak).

"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", type=Path, default=None, help="also write the sheet as Markdown to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny presets instead of the papers' (seconds; CI)")
    args = ap.parse_args()
    rows = [measure(cfg) for cfg in (smoke_configs() if args.smoke else paper_configs())]
    table = markdown(rows)
    print(table)
    for r in rows:
        if not all(math.isfinite(v) and v > 0 for v in (r.params_m, r.gflops_train, r.total_gib)):
            raise SystemExit(f"paper_sheet: {r.name}: a count is not positive")
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(DOC_HEAD + table + "\n", encoding="utf-8")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
