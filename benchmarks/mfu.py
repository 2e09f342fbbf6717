"""Model FLOP utilisation of every training-step kind at the shipped small presets, on this machine.

In one process: the fp32 matmul peak (a 2048 x 2048 matmul, best of 3 per round) and, per step kind,
the time of one full training step through the engine's own code (forward, backward, gradient clipping,
AdamW, the method's hooks (EMA teacher, momentum), the weight EMA where the shipped config keeps one).
MFU = counted FLOPs of the step's forward + backward / step time / peak.

FLOP convention: forward + backward, 2 FLOPs per multiply-add, counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention). The CPU kernels of
``scaled_dot_product_attention`` are not registered with the counter (it reports 0 for them), so every
attention call adds its analytic term: 4 B H L S d forward (QK^T and AV), x3 with the backward.
Not counted: element-wise ops (norms, activations, softmax, losses), the optimizer and EMA updates,
embedding lookups and the echo's top-k; they cost time, so they lower the MFU, which is the point.
The peak is MKL's sgemm, not the core's: on the measuring CPU oneDNN's 3x3 convolutions ran at 2.2x the
512 x 512 matmul (docs/results.md), so the conv-heavy vq-tokenizer row can read above 100%.

Rounds interleave the kinds (peak, then one timed block of each kind, repeated), so a change of machine
load hits every kind alike; median and min over rounds are printed.

    OMP_NUM_THREADS=1 python benchmarks/mfu.py                  # 1 thread (the fair setting on 2 cores)
    python benchmarks/mfu.py --threads 2 --kinds sorcen mage    # a subset, 2 threads
    python benchmarks/mfu.py --amp bf16                         # CPU bf16 autocast rows
    OMP_NUM_THREADS=1 python benchmarks/mfu.py --kinds reptok-tokenizer-cached --profile   # where the time goes
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unissl.utils.flops import step_flops


# ---------------------------------------------------------------------------------------------- peak
def matmul_peak(n: int = 2048, repeats: int = 3) -> float:
    """Best fp32 matmul FLOP/s of ``repeats`` n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------------- step kinds
SMOKE_BATCH: int | None = None  # --smoke: every kind at this batch (the CI check that the script runs)


def _batch(default: int) -> int:
    return SMOKE_BATCH or default


def _sorcen(variant: str, tmp: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    from unissl.methods.sorcen.config import EchoConfig, SorcenConfig, TeacherConfig
    from unissl.methods.sorcen.method import build_method
    from unissl.methods.sorcen.presets import arch_for_store
    from unissl.tokenizers.vq import VQTokenizer, preset

    arch = arch_for_store("small", 512, (7, 7))
    tok = VQTokenizer(preset("fmnist")) if variant in ("mage-c", "mage-aug") else None
    # echo_warmup 0: the echo is sampled (top-k included), as after the warm-up of a long run
    loss = SorcenConfig(echo=EchoConfig(warmup=0.0), teacher=TeacherConfig(momentum=0.99))
    method = build_method(arch, variant, loss, num_classes=10, tokenizer=tok, steps_per_epoch=937)
    b = _batch(64)
    batch = {"label": torch.randint(0, 10, (b,))}
    if tok is not None:
        batch["image"] = torch.rand(b, 1, 28, 28)
    else:
        batch["ids"] = torch.randint(0, 512, (b, 7, 7))
    return method, batch, {"global_batch": b, "clip_grad": 3.0, "weight_decay": 0.05, "betas": (0.9, 0.95)}


def _vq(tmp: Path):
    from unissl.tokenizers.method import VQTokenizerMethod
    from unissl.tokenizers.vq import VQTokenizer, preset

    method = VQTokenizerMethod(VQTokenizer(preset("fmnist")))
    b = _batch(32)
    return method, {"image": torch.rand(b, 1, 28, 28), "label": torch.zeros(b, dtype=torch.long)}, \
        {"global_batch": b}


def _sorcen_run(tmp: Path) -> str:
    """A Sorcen `small` run directory over the fmnist VQ preset (random weights), for the RepTok encoder."""
    from unissl.engine import save_checkpoint
    from unissl.methods.sorcen.config import SorcenConfig
    from unissl.methods.sorcen.method import build_method
    from unissl.methods.sorcen.presets import arch_for_store
    from unissl.methods.sorcen.run import write_run_info
    from unissl.tokenizers.vq import VQTokenizer, preset

    run = tmp / "sorcen-run"
    if not (run / "sorcen.json").is_file():
        vq = VQTokenizer(preset("fmnist"))
        vq.save_pretrained(tmp / "vq")
        arch = arch_for_store("small", int(vq.codebook_size), tuple(vq.grid))
        method = build_method(arch, "sorcen", SorcenConfig(), num_classes=0)
        save_checkpoint(run, 1, method.state_dict(), {})
        write_run_info(run, arch, "sorcen", SorcenConfig(), 0, [], None, str(tmp / "vq"))
    return str(run)


def _reptok(tmp: Path, cached: bool):
    from unissl.data.base import InMemoryImageDataset
    from unissl.methods.reptok.frozen_cache import WithFrozenCache, build_frozen_cache
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    tok = RepTokTokenizer(RepTokConfig(encoder={"kind": "sorcen", "path": _sorcen_run(tmp)}, image_size=28,
                                       channels=1, decoder="compact", patch_size=4, cos_weight=0.1))
    b = _batch(64)
    images = torch.rand(b, 1, 28, 28)
    batch: dict[str, torch.Tensor] = {"image": images, "label": torch.zeros(b, dtype=torch.long)}
    if cached:
        data = InMemoryImageDataset("bench", "train", images, batch["label"], ["x"])
        batch = WithFrozenCache(data, build_frozen_cache(tok.encoder, data, tmp / "cache")).__getitems__(
            list(range(b)))
    return tok, batch, {"global_batch": b, "lr": 2e-3, "weight_decay": 0.0, "betas": (0.9, 0.99)}


def _generator(tmp: Path):
    from unissl.methods.reptok.generator import TokenGeneratorMethod
    from unissl.methods.reptok.mixer import GeneratorConfig

    d, b = 128, _batch(256)
    method = TokenGeneratorMethod(GeneratorConfig(token_dim=d, preset="mini", conditioning="class", num_classes=10),
                                  z_mean=torch.zeros(d), z_std=torch.tensor(1.0))
    return method, {"z": torch.randn(b, d), "label": torch.randint(0, 10, (b,))}, \
        {"global_batch": b, "ema_decay": 0.998, "weight_decay": 0.0, "betas": (0.9, 0.99)}


KINDS: dict[str, Callable[[Path], tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, Any]]]] = {
    "sorcen": lambda tmp: _sorcen("sorcen", tmp),
    "mage": lambda tmp: _sorcen("mage", tmp),
    "mage-c": lambda tmp: _sorcen("mage-c", tmp),
    "vq-tokenizer": _vq,
    "reptok-tokenizer": lambda tmp: _reptok(tmp, cached=False),
    "reptok-tokenizer-cached": lambda tmp: _reptok(tmp, cached=True),
    "generator": _generator,
}


@dataclasses.dataclass
class Kind:
    name: str
    step: Callable[[], None]
    flops: int
    attn_flops: int
    times: list[float] = dataclasses.field(default_factory=list)


class _NoStop:
    signal = None


def build_kind(name: str, tmp: Path, amp: str) -> Kind:
    """The method, a fixed batch and a Trainer around them; ``step()`` runs one full optimizer step."""
    from unissl.engine import TrainConfig, Trainer

    torch.manual_seed(0)
    method, batch, train_kw = KINDS[name](tmp)
    flops, attn = step_flops(method, batch)
    cfg = TrainConfig(run_dir=str(tmp / f"run-{name}"), steps=10**6, num_workers=0, tensorboard=False, progress=False,
                      device="cpu", amp=amp, **train_kw)
    trainer = Trainer(method, [0] * cfg.global_batch, cfg)
    method.train()

    def step() -> None:
        logs = trainer._forward_backward(batch)
        trainer._optimizer_step(logs, _NoStop())  # type: ignore[arg-type]

    step()  # warm-up: allocations, first-call overheads
    return Kind(name, step, flops, attn)


def op_shares(step: Callable[[], None], steps: int = 3) -> tuple[list[tuple[str, float]], float]:
    """Self CPU time per operator over ``steps`` steps (torch.profiler), as shares of the total, largest first;
    and the total in ms per step. Self time, so a composite op does not count its children twice."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = [(e.key, float(e.self_cpu_time_total)) for e in prof.key_averages()]
    total = sum(t for _, t in rows)
    rows.sort(key=lambda r: -r[1])
    return [(name, t / total) for name, t in rows], total / steps / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per kind per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--amp", choices=["fp32", "bf16"], default="fp32", help="bf16: CPU autocast rows")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, print each kind's top operators by self CPU time (torch.profiler)")
    ap.add_argument("--top", type=int, default=10, help="operators shown per kind with --profile")
    ap.add_argument("--smoke", action="store_true", help="every kind at batch 4, one round of one step, a 256 x 256 "
                                                         "peak matmul: checks that the script runs (CI); no MFU claim")
    args = ap.parse_args()
    global SMOKE_BATCH
    peak_n = 2048
    if args.smoke:
        SMOKE_BATCH, args.rounds, args.steps, peak_n = 4, 1, 1, 256
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        kinds = [build_kind(k, tmp, "bf16" if args.amp == "bf16" else "fp32") for k in args.kinds]
        peaks = []
        for _ in range(args.rounds):
            peaks.append(matmul_peak(peak_n))
            for k in kinds:
                t = time.perf_counter()
                for _ in range(args.steps):
                    k.step()
                k.times.append((time.perf_counter() - t) / args.steps)
        profiles = {k.name: op_shares(k.step, args.steps) for k in kinds} if args.profile else {}
    peak = statistics.median(peaks)
    print(f"threads {args.threads}, amp {args.amp}, rounds {args.rounds} x {args.steps} steps; fp32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s (median; min {min(peaks) / 1e9:.1f}, max {max(peaks) / 1e9:.1f})")
    print("FLOPs: forward + backward, 2 per multiply-add; attention added analytically; element-wise ops, "
          "optimizer and EMA not counted")
    print(f"{'kind':<26}{'GFLOP/step':>11}{'attn %':>8}{'ms/step med':>13}{'min':>8}{'GFLOP/s med':>13}"
          f"{'MFU med':>9}{'MFU best':>9}")
    for k in kinds:
        med, best = statistics.median(k.times), min(k.times)
        print(f"{k.name:<26}{k.flops / 1e9:>11.3f}{100 * k.attn_flops / max(k.flops, 1):>8.1f}{1e3 * med:>13.1f}"
              f"{1e3 * best:>8.1f}{k.flops / med / 1e9:>13.1f}{100 * k.flops / med / peak:>8.1f}%"
              f"{100 * k.flops / best / peak:>8.1f}%")
    for name, (shares, ms) in profiles.items():
        matmul = sum(f for op, f in shares if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
        print(f"\n{name}: {ms:.1f} ms per profiled step (profiler overhead included); matmuls (mm, addmm, bmm) "
              f"{100 * matmul:.1f}% of self CPU time")
        for op, f in shares[: args.top]:
            print(f"  {op:<48}{100 * f:>6.1f}%")


if __name__ == "__main__":
    main()
