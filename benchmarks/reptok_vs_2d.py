"""Why one token: a RepTok generator step vs a DiT-style step over the 2-D patch grid of the same images.

Both models are class-conditional flow-matching velocity networks of the SAME width and depth, trained
with the same loss and AdamW; they differ only in what they model:

* ``token``: the RepTok MLP-Mixer (:class:`~unissl.methods.reptok.generator.TokenGeneratorMethod`) over ONE
  token z (B, D) -> 3 slots (noisy token, class, time);
* ``grid``: a DiT-style transformer (patchify, learned positions, adaLN-Zero blocks with self-attention,
  unpatchify) over the image's (H/p)x(W/p) patch grid.

For each it times full training steps (forward, backward, optimizer step) and counts FLOPs per sample of
forward+backward (:mod:`unissl.utils.flops`: attention included, 2 FLOPs per multiply-add), then prints
the throughput ratio and the FLOP ratio. Defaults: Fashion-MNIST images (1x28x28, patch 2 -> 196 patches), token width 64,
the generator's ``small`` preset (width 512, depth 6).

Run: ``python benchmarks/reptok_vs_2d.py [--preset small] [--batch 32] [--rounds 3] [--threads 1 2]``;
``--smoke`` runs every code path at tiny sizes in seconds (the CI check that the script still runs; its
ratios mean nothing)
(the 2-D step costs ~1.4 TFLOP at batch 64: minutes on a CPU). Steps of the two models alternate over
interleaved rounds at every thread count asked for (1 and 2 by default), so a busy machine slows both
alike; the goal verdict rests on the FLOP ratio, which no load can flip. A paper-size row counts FLOPs
on meta tensors (the `paper` mixer vs a DiT over 4x32x32 SD-VAE latents).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from unissl.engine.method import Method
from unissl.flow import LinearPath
from unissl.layers import TimestepEmbedding
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.mixer import GENERATOR_PRESETS, GeneratorConfig
from unissl.utils.flops import step_flops


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


class GridMethod(Method):
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
    """FLOPs of one forward+backward (attention included, see unissl.utils.flops), per sample."""
    return step_flops(method, batch)[0] / next(iter(batch.values())).shape[0]


def interleaved_seconds(steps: dict[str, object], rounds: int, per_round: int) -> dict[str, list[float]]:
    """Per-step seconds of each step function, timed in alternation (A, B, A, B, ...) over ``rounds``."""
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - t0) / per_round)
    return times


def paper_row(token_dim: int = 768) -> dict[str, float]:
    """FLOPs per sample at the paper's size, counted on meta tensors (nothing runs): the `paper` mixer over
    one token vs a DiT of the same width and depth over SD-VAE latents of a 256 px image (4x32x32, patch 2)."""
    preset = GENERATOR_PRESETS["paper"]
    with torch.device("meta"):
        token = TokenGeneratorMethod(GeneratorConfig(token_dim=token_dim, preset="paper"))
        grid = GridMethod(GridDiT(4, 32, 2, preset.width, preset.depth, 1000))
        tb = {"z": torch.randn(2, token_dim), "label": torch.randint(0, 1000, (2,))}
        gb = {"image": torch.rand(2, 4, 32, 32), "label": torch.randint(0, 1000, (2,))}
    t, g = flops_per_sample(token, tb), flops_per_sample(grid, gb)
    return {"token_gflops": t / 1e9, "grid_gflops": g / 1e9, "flop_ratio": g / t, "saving_pct": 100 * (1 - t / g)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(GENERATOR_PRESETS))
    ap.add_argument("--token-dim", type=int, default=64, help="width of the RepTok token z")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (token, grid, token, grid, ...)")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per model per round")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="thread counts to measure (each one is reported; 1 is the fair default on 2 cores)")
    ap.add_argument("--no-paper", action="store_true", help="skip the paper-size FLOP row")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (preset tiny, 8x8 images, batch 4, one round, "
                                                         "one thread): checks that the script runs, in seconds")
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.token_dim, args.image_size, args.batch = "tiny", 16, 8, 4
        args.rounds, args.steps, args.threads = 1, 1, [1]
    torch.manual_seed(0)
    dev = torch.device(args.device)
    preset = GENERATOR_PRESETS[args.preset]
    b = args.batch

    token = TokenGeneratorMethod(GeneratorConfig(token_dim=args.token_dim, preset=args.preset)).to(dev)
    grid = GridMethod(GridDiT(args.channels, args.image_size, args.patch, preset.width, preset.depth, 10)).to(dev)
    token_batch = {"z": torch.randn(b, args.token_dim, device=dev), "label": torch.randint(0, 10, (b,), device=dev)}
    grid_batch = {"image": torch.rand(b, args.channels, args.image_size, args.image_size, device=dev),
                  "label": torch.randint(0, 10, (b,), device=dev)}

    def synced(step):
        def run() -> None:
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return run

    flops = {"token": flops_per_sample(token, token_batch), "grid": flops_per_sample(grid, grid_batch)}
    steps = {"token": synced(step_fn(token, token_batch)), "grid": synced(step_fn(grid, grid_batch))}
    n_patches = (args.image_size // args.patch) ** 2
    flop_ratio = flops["grid"] / flops["token"]
    summary: dict = {"setting": {"preset": args.preset, "width": preset.width, "depth": preset.depth, "batch": b,
                                 "token_dim": args.token_dim, "grid_tokens": n_patches, "device": str(dev),
                                 "torch": torch.__version__,
                                 "flop_convention": "forward+backward, 2 FLOPs per multiply-add, attention included"},
                     "gflops_per_sample": {k: v / 1e9 for k, v in flops.items()}, "flop_ratio": flop_ratio,
                     "by_threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = interleaved_seconds(steps, args.rounds, args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        summary["by_threads"][threads] = {
            "samples_per_s": {k: b / v for k, v in med.items()},
            "throughput_ratio_median": med["grid"] / med["token"],
            "throughput_ratio_min": min(times["grid"]) / max(times["token"]),
            "throughput_ratio_max": max(times["grid"]) / min(times["token"])}
    if not args.no_paper:
        summary["paper"] = paper_row()  # meta tensors: costs no compute, so the smoke run checks it too
    print(json.dumps(summary, indent=2))
    # The verdict rests on the FLOP ratio (machine-independent); the throughput ratios are measured in
    # interleaved rounds at every thread count, so machine load hits both models alike.
    ok = flop_ratio >= 15
    print(f"FLOPs per sample: token {flops['token'] / 1e9:.4g} G, 2-D grid ({n_patches} patches) "
          f"{flops['grid'] / 1e9:.4g} G -> x{flop_ratio:.1f} ({'meets' if ok else 'misses'} the >= 15x goal)")
    for threads, r in summary["by_threads"].items():
        print(f"  {threads} thread(s): throughput x{r['throughput_ratio_median']:.1f} (median of {args.rounds} "
              f"interleaved rounds; range x{r['throughput_ratio_min']:.1f}-x{r['throughput_ratio_max']:.1f}), "
              f"{r['samples_per_s']['token']:.0f} vs {r['samples_per_s']['grid']:.1f} samples/s")
    if "paper" in summary:
        pr = summary["paper"]
        print(f"  paper size (meta tensors, not timed): token {pr['token_gflops']:.3g} G vs DiT on 4x32x32 latents "
              f"{pr['grid_gflops']:.3g} G per sample: -{pr['saving_pct']:.1f}% FLOPs (the paper reports -92% "
              f"training cost)")
    if not all(math.isfinite(r["throughput_ratio_median"]) for r in summary["by_threads"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
