"""Training-step throughput of Sorcen (precomputed ids) versus MAGE-C (online tokenizer + two crops).

Both methods use the same encoder-decoder. A Sorcen step is one masked pass on stored ids plus the
EMA teacher's forward on the echo; a MAGE-C step crops every image twice, runs the frozen VQGAN
encoder on both crops and makes a masked pass on each. The paper's efficiency claim is about this
difference, so what matters is the cost of the tokenizer relative to the model. ``--scale paper``
measures MAGE's VQGAN encoder at 256 px against ViT-B (16 x 16 ids) and times that setting when the
hardware allows it. ``--scale bench`` (the default) picks a smaller encoder-decoder and a narrower
VQGAN of the same design whose tokenizer-to-model FLOP ratio matches the paper's, so that the ratio
can be timed on a CPU.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (matmuls,
convolutions and attention; element-wise ops are not counted). Steps are timed alternately (one Sorcen
step, then one MAGE-C step, ...) so that changing machine load affects both the same way. Every timed
step includes the backward pass, the AdamW update and the EMA-teacher update. Reading ids from a
memory-mapped store is not timed; it costs next to nothing beside a step.

    python benchmarks/sorcen_vs_magec.py                # bench scale, CPU
    python benchmarks/sorcen_vs_magec.py --scale paper --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from unissl.methods.sorcen.method import MaskedTokenMethod, build_method
from unissl.methods.sorcen.presets import PRESETS, SorcenArch
from unissl.tokenizers.taming import TamingConfig, TamingVQGAN

# Bench-scale encoder-decoder over an 8 x 8 id grid (64 px images, VQGAN downsampling 8).
BENCH_ARCH = SorcenArch(codebook_size=512, grid=(8, 8), dim=192, depth=6, heads=3, decoder_dim=192,
                        decoder_depth=4, decoder_heads=3, proj_hidden=1024, proj_dim=128, pred_hidden=512)
BENCH_IMAGE, BENCH_CH_MULT = 64, (1, 1, 2, 4)


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as counted by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def tokenizer_flops(cfg: TamingConfig) -> int:
    """Encoder FLOPs of the VQGAN ``cfg`` for one image (meta tensors: nothing is computed)."""
    with torch.device("meta"):
        tok = TamingVQGAN(cfg)
    x = torch.empty(1, cfg.in_channels, cfg.resolution, cfg.resolution, device="meta")
    return count_flops(lambda: tok.encode(x))


def method_step_flops(arch: SorcenArch, variant: str, batch: int = 2, tok_cfg: TamingConfig | None = None) -> int:
    """Forward + backward FLOPs per image of one training step of ``variant`` (meta tensors)."""
    with torch.device("meta"):
        tok = TamingVQGAN(tok_cfg) if tok_cfg is not None else None
        method = build_method(arch, variant, tokenizer=tok)
    method.on_train_step_end(500, 1000)  # past the echo warm-up: the echo is sampled from the logits
    if variant == "mage-c":
        res = tok_cfg.resolution
        batch_in = {"image": torch.empty(batch, 3, res, res, device="meta")}
    else:
        batch_in = {"ids": torch.zeros(batch, *arch.grid, dtype=torch.long, device="meta")}

    def step() -> None:
        method(batch_in)["loss"].backward()
    return count_flops(step) // batch


def mage_step_flops(arch: SorcenArch) -> int:
    """Per-image FLOPs of one masked MAGE pass (forward + backward) on one view."""
    return method_step_flops(arch, "mage")


def bench_tokenizer(target_ratio: float) -> tuple[TamingConfig, float]:
    """The VQGAN width whose encoder-to-model FLOP ratio at bench scale is closest to ``target_ratio``."""
    model = mage_step_flops(BENCH_ARCH)
    best: tuple[float, TamingConfig, float] | None = None
    for ch in range(8, 129, 4):
        cfg = TamingConfig(ch=ch, ch_mult=BENCH_CH_MULT, num_res_blocks=2, z_channels=64, embed_dim=64,
                           n_embed=BENCH_ARCH.codebook_size, resolution=BENCH_IMAGE, norm_groups=4)
        ratio = tokenizer_flops(cfg) / model
        if best is None or abs(ratio - target_ratio) < best[0]:
            best = (abs(ratio - target_ratio), cfg, ratio)
    assert best is not None
    return best[1], best[2]


def time_steps(methods: dict[str, tuple[MaskedTokenMethod, dict[str, torch.Tensor]]], steps: int, warmup: int,
               device: torch.device) -> dict[str, list[float]]:
    """Seconds per optimizer step for each method, measured alternately."""
    opts = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
            for name, (m, _) in methods.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(warmup + steps):
        for name, (method, batch) in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = method(batch)
            opts[name].zero_grad(set_to_none=True)
            out["loss"].backward()
            opts[name].step()
            method.on_train_step_end(500 + i, 1000)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=["bench", "paper"], default="bench")
    p.add_argument("--batch", type=int, default=32, help="images per step")
    p.add_argument("--steps", type=int, default=8, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts to time (each is reported; 1 avoids spin-wait stalls on a shared machine)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    paper_tok = TamingConfig()  # MAGE's VQGAN: 256 px -> 16 x 16 ids, 1024 codes
    paper_ratio = tokenizer_flops(paper_tok) / mage_step_flops(PRESETS["vit_b"])
    print(f"paper scale: VQGAN encoder @256px {tokenizer_flops(paper_tok) / 1e9:.1f} GFLOP/img, "
          f"ViT-B MAGE step (fwd+bwd, one view) {mage_step_flops(PRESETS['vit_b']) / 1e9:.1f} GFLOP/img, "
          f"tokenizer/model ratio {paper_ratio:.3f}")
    paper_flops = {"sorcen": method_step_flops(PRESETS["vit_b"], "sorcen"),
                   "mage-c": method_step_flops(PRESETS["vit_b"], "mage-c", tok_cfg=paper_tok)}
    print(f"paper scale step FLOPs per image: sorcen {paper_flops['sorcen'] / 1e9:.1f} G, mage-c "
          f"{paper_flops['mage-c'] / 1e9:.1f} G (mage-c / sorcen {paper_flops['mage-c'] / paper_flops['sorcen']:.2f}x)")
    if args.scale == "paper":
        arch, tok_cfg, ratio = PRESETS["vit_b"], paper_tok, paper_ratio
    else:
        arch = BENCH_ARCH
        tok_cfg, ratio = bench_tokenizer(paper_ratio)
        print(f"bench scale: {arch.dim}x{arch.depth} encoder, {arch.decoder_dim}x{arch.decoder_depth} decoder, "
              f"{arch.grid[0]}x{arch.grid[1]} ids; VQGAN ch={tok_cfg.ch} ch_mult={list(tok_cfg.ch_mult)} @"
              f"{tok_cfg.resolution}px: tokenizer/model ratio {ratio:.3f} (paper {paper_ratio:.3f})")
    flops = {"sorcen": method_step_flops(arch, "sorcen"), "mage-c": method_step_flops(arch, "mage-c", tok_cfg=tok_cfg)}

    tok = TamingVQGAN(tok_cfg).to(device).eval().requires_grad_(False)
    sorcen = build_method(arch, "sorcen").to(device).train()
    magec = build_method(arch, "mage-c", tokenizer=tok).to(device).train()
    ids = torch.randint(0, arch.codebook_size, (args.batch, *arch.grid), device=device)
    images = torch.rand(args.batch, 3, tok_cfg.resolution, tok_cfg.resolution, device=device)
    print("FLOPs: forward + backward, 2 per multiply-add, counted on meta tensors (attention included)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = time_steps({"sorcen": (sorcen, {"ids": ids}), "mage-c": (magec, {"image": images})},
                           args.steps, args.warmup, device)
        print(f"-- {threads} thread(s), steps alternating sorcen / mage-c")
        print(f"{'method':<8} {'GFLOP/img':>10} {'s/step (median)':>16} {'img/s':>8}")
        rate = {}
        for name in ("sorcen", "mage-c"):
            med = statistics.median(times[name])
            rate[name] = args.batch / med
            print(f"{name:<8} {flops[name] / 1e9:>10.2f} {med:>16.3f} {rate[name]:>8.1f}")
        print(f"throughput ratio sorcen / mage-c at {threads} thread(s): {rate['sorcen'] / rate['mage-c']:.2f}x "
              f"(FLOP ratio {flops['mage-c'] / flops['sorcen']:.2f}x; {device.type}, batch {args.batch}, "
              f"{args.steps} timed steps each)")


if __name__ == "__main__":
    main()
