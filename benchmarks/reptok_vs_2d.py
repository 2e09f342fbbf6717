"""Why one token: a RepTok generator step vs a DiT-style step over the 2-D patch grid of the same images.

Both models are class-conditional flow-matching velocity networks of the SAME width and depth, trained
with the same loss and AdamW; they differ only in what they model:

* ``token``: the RepTok MLP-Mixer (:class:`~unissl.methods.reptok.generator.TokenGeneratorMethod`) over ONE
  token z (B, D) -> 3 slots (noisy token, class, time);
* ``grid``: a DiT-style transformer (patchify, learned positions, adaLN-Zero blocks with self-attention,
  unpatchify) over the image's (H/p)x(W/p) patch grid.

For each it times full training steps (forward, backward, optimizer step) and counts FLOPs per sample of
forward+backward with ``torch.utils.flop_counter.FlopCounterMode``, then prints the throughput ratio
and the FLOP ratio. Defaults: Fashion-MNIST images (1x28x28, patch 2 -> 196 patches), token width 64,
the generator's ``small`` preset (width 512, depth 6).

Run: ``python benchmarks/reptok_vs_2d.py [--preset small] [--batch 32] [--steps 3] [--threads 2]``
(the 2-D step costs ~1.4 TFLOP at batch 64: minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from unissl.flow import LinearPath
from unissl.methods.reptok.generator import (
    GENERATOR_PRESETS,
    GeneratorConfig,
    TimestepEmbedding,
    TokenGeneratorMethod,
)


# --------------------------------------------------------------------------------------------- 2-D baseline
class DiTBlock(nn.Module):
    """Self-attention + MLP, each modulated by adaLN-Zero from the condition vector (as DiT)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, int(width * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(width * mlp_ratio), width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (B, N, W), (B, W)
        b, n, w = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c)[:, None].chunk(6, dim=-1)  # each (B, 1, W)
        h = self.norm1(x) * (1 + sc1) + sh1
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w)
        x = x + g1 * self.proj(a)
        return x + g2 * self.mlp(self.norm2(x) * (1 + sc2) + sh2)


class GridDiT(nn.Module):
    """A DiT-style class-conditional velocity network over the patch grid of (C, S, S) images."""

    def __init__(self, channels: int, image_size: int, patch: int, width: int, depth: int, num_classes: int,
                 head_dim: int = 64):
        super().__init__()
        self.c, self.p, self.g = channels, patch, image_size // patch
        self.patch_in = nn.Linear(channels * patch * patch, width)
        self.pos = nn.Parameter(torch.randn(1, self.g * self.g, width) * 0.02)
        self.t_embed = TimestepEmbedding(width)
        self.y_embed = nn.Embedding(num_classes + 1, width)  # + null class, like the token generator
        self.blocks = nn.ModuleList(DiTBlock(width, max(1, width // head_dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out = nn.Linear(width, channels * patch * patch)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (B, C, S, S)
        b, p, g = x.shape[0], self.p, self.g
        tokens = x.view(b, self.c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)  # (B, N, C p p)
        h = self.patch_in(tokens) + self.pos
        c = self.t_embed(t) + self.y_embed(y)  # (B, W)
        for blk in self.blocks:
            h = blk(h, c)
        out = self.out(self.norm(h))  # (B, N, C p p)
        return out.view(b, g, g, self.c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, self.c, g * p, g * p)


class GridMethod(nn.Module):
    """Same flow-matching loss as the token generator (data_at=1, t ~ U(0, 1)) on images."""

    def __init__(self, net: GridDiT):
        super().__init__()
        self.net, self.path = net, LinearPath(data_at=1.0)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"] * 2 - 1
        t = torch.rand(x.shape[0], device=x.device)
        ps = self.path.sample(x, t)
        return {"loss": F.mse_loss(self.net(ps.x_t, t, batch["label"]), ps.target)}


# --------------------------------------------------------------------------------------------- measurement
def step_fn(method: nn.Module, batch: dict[str, torch.Tensor]):
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4)

    def step() -> None:
        loss = method(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def flops_per_sample(method: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """FLOPs of one forward+backward, divided by the batch size."""
    with FlopCounterMode(display=False) as counter:
        method(batch)["loss"].backward()
    method.zero_grad(set_to_none=True)
    return counter.get_total_flops() / next(iter(batch.values())).shape[0]


def time_steps(step, steps: int, warmup: int = 2) -> float:
    """Median seconds of one training step."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(GENERATOR_PRESETS))
    ap.add_argument("--token-dim", type=int, default=64, help="width of the RepTok token z")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    preset = GENERATOR_PRESETS[args.preset]
    b = args.batch

    token = TokenGeneratorMethod(GeneratorConfig(token_dim=args.token_dim, preset=args.preset)).to(dev)
    grid = GridMethod(GridDiT(args.channels, args.image_size, args.patch, preset.width, preset.depth, 10)).to(dev)
    token_batch = {"z": torch.randn(b, args.token_dim, device=dev), "label": torch.randint(0, 10, (b,), device=dev)}
    grid_batch = {"image": torch.rand(b, args.channels, args.image_size, args.image_size, device=dev),
                  "label": torch.randint(0, 10, (b,), device=dev)}

    def sync_step(step):
        def run() -> None:
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return run

    res = {}
    for name, method, batch in (("token", token, token_batch), ("grid", grid, grid_batch)):
        params = sum(p.numel() for p in method.parameters())
        flops = flops_per_sample(method, batch)
        sec = time_steps(sync_step(step_fn(method, batch)), args.steps)
        res[name] = {"params_M": params / 1e6, "gflops_per_sample_fwd_bwd": flops / 1e9,
                     "step_s": sec, "samples_per_s": b / sec}
    n_patches = (args.image_size // args.patch) ** 2
    summary = {
        "setting": {"preset": args.preset, "width": preset.width, "depth": preset.depth, "batch": b,
                    "token_dim": args.token_dim, "grid_tokens": n_patches, "device": str(dev),
                    "threads": args.threads, "torch": torch.__version__},
        **res,
        "throughput_ratio": res["token"]["samples_per_s"] / res["grid"]["samples_per_s"],
        "flop_ratio": res["grid"]["gflops_per_sample_fwd_bwd"] / res["token"]["gflops_per_sample_fwd_bwd"],
    }
    print(json.dumps(summary, indent=2))
    ok = summary["throughput_ratio"] >= 15
    print(f"token generator: {res['token']['samples_per_s']:.0f} samples/s, "
          f"{res['token']['gflops_per_sample_fwd_bwd']:.4g} GFLOPs/sample | 2-D grid ({n_patches} patches): "
          f"{res['grid']['samples_per_s']:.0f} samples/s, {res['grid']['gflops_per_sample_fwd_bwd']:.4g} GFLOPs/sample"
          f" | throughput x{summary['throughput_ratio']:.1f} ({'meets' if ok else 'misses'} the >= 15x goal), "
          f"FLOPs x{summary['flop_ratio']:.1f}")
    if not math.isfinite(summary["throughput_ratio"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
