"""Ready for the first GPU hour: one command that checks the CUDA stack and times the papers' models.

On a CUDA machine it checks, in this order, and prints one table:

1. bf16 autocast: a matmul under ``torch.autocast(dtype=bfloat16)`` returns bf16 and agrees with fp32;
2. the SDPA flash backend: ``scaled_dot_product_attention`` restricted to ``SDPBackend.FLASH_ATTENTION`` runs at
   head dims 64 and 72 (RepTok's decoder) and agrees with the math backend; then one forward of every model
   below under the same restriction, so a model whose attention cannot take the flash kernel is named;
3. ``torch.compile`` without recompiles: the Sorcen ``small`` method's networks (``Method.compile_networks``)
   trained for a few steps while the mask ratio and the echo warm-up change every step; the number of graphs
   dynamo compiled after the first step (``torch._dynamo.utils.counters["stats"]["unique_graphs"]``) must be 0;
4. an NCCL process group (one process, world size 1): ``all_reduce`` of a CUDA tensor;

then times a few training steps (forward, backward, fused AdamW, the method's step-end hook; bf16 autocast,
fp32 weights) of each paper configuration of ``benchmarks/paper_sheet.py`` (Sorcen ViT-B / ViT-L, the RepTok
encoder side, decoder and generator) at its per-GPU batch (halved until it fits, which the row says):
ms per step, images/s, peak memory (``torch.cuda.max_memory_allocated``) next to the sheet's meta-device
estimate. Without CUDA it says so and exits 0. ``--smoke`` runs every code path at tiny sizes on the CPU
(gloo instead of NCCL; flash and compile are reported as skipped): the CI check that the script still runs.

    python benchmarks/gpu_check.py                  # on a GPU machine
    python benchmarks/gpu_check.py --steps 10 --only "Sorcen ViT-B"
    python benchmarks/gpu_check.py --smoke          # CPU, seconds
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_sheet import PaperConfig, measure, paper_configs, smoke_configs  # noqa: E402

from unissl.engine.method import Method  # noqa: E402
from unissl.methods.sorcen.config import EchoConfig, SorcenConfig  # noqa: E402
from unissl.methods.sorcen.method import build_method  # noqa: E402
from unissl.methods.sorcen.presets import PRESETS as SORCEN_PRESETS  # noqa: E402

GIB = 2**30


@dataclass
class Check:
    """One line of the checks table."""

    name: str
    status: str  # "ok", "FAIL" or "skipped"
    detail: str


def check_bf16(device: torch.device) -> Check:
    """A matmul under bf16 autocast is computed in bf16 and agrees with fp32 to bf16 precision."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(512, 512, device=device, generator=g)
    b = torch.randn(512, 512, device=device, generator=g)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        c = a @ b
    ref = a @ b
    rel = ((c.float() - ref).abs().max() / ref.abs().max()).item()
    ok = c.dtype == torch.bfloat16 and rel < 2e-2
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else True
    return Check("bf16 autocast", "ok" if ok and supported else "FAIL",
                 f"matmul dtype {c.dtype}, max rel. error vs fp32 {rel:.1e}, bf16 supported: {supported}")


def check_flash(device: torch.device, models: dict[str, tuple[Method, dict[str, torch.Tensor]]]) -> Check:
    """The flash kernel runs the attention shapes of the models, and every model's forward under it."""
    if device.type != "cuda":
        return Check("SDPA flash backend", "skipped", "CUDA only")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    errors = []
    for head_dim in (64, 72):
        q, k, v = (torch.randn(2, 8, 256, head_dim, device=device, dtype=torch.bfloat16) for _ in range(3))
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v)
        except RuntimeError as e:
            return Check("SDPA flash backend", "FAIL", f"head dim {head_dim}: {str(e).splitlines()[0]}")
        with sdpa_kernel(SDPBackend.MATH):
            ref = F.scaled_dot_product_attention(q, k, v)
        errors.append((out.float() - ref.float()).abs().max().item())
    refused = []
    for name, (method, batch) in models.items():
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16), \
                    torch.no_grad():
                method(batch)
        except RuntimeError as e:
            refused.append(f"{name} ({str(e).splitlines()[0][:80]})")
    ok = max(errors) < 2e-2 and not refused
    detail = f"head dims 64/72 max abs diff vs math {max(errors):.1e}"
    detail += f"; not flash-able: {', '.join(refused)}" if refused else "; every model's forward runs on it"
    return Check("SDPA flash backend", "ok" if ok else "FAIL", detail)


def check_compile(device: torch.device, steps: int = 4) -> Check:
    """Sorcen's compiled networks are compiled on the first step and never again."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(0)
    arch = SORCEN_PRESETS["small"]
    method = build_method(arch, "sorcen", SorcenConfig(echo=EchoConfig(warmup=0.5))).to(device).train()
    compiled = method.compile_networks()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4)
    graphs = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        ids = torch.randint(0, arch.codebook_size, (8, *arch.grid), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = method({"ids": ids})["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_train_step_end(step, steps)  # the echo turns on half-way: a Python branch outside the graphs
        graphs.append(int(counters["stats"]["unique_graphs"]))
    later = graphs[-1] - graphs[0]
    return Check("torch.compile, no recompiles", "ok" if graphs[0] > 0 and later == 0 else "FAIL",
                 f"{len(compiled or [])} modules compiled, {graphs[0]} graphs on step 1, {later} after it "
                 f"({steps} steps, {time.perf_counter() - t0:.0f} s incl. compilation)")


def check_process_group(device: torch.device) -> Check:
    """A one-process group (NCCL on CUDA, gloo on CPU) all-reduces a tensor."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        return Check(f"{backend} process group", "FAIL", "torch.distributed / NCCL not available in this build")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        x = torch.arange(4.0, device=device)
        dist.all_reduce(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ok = x.tolist() == [0.0, 1.0, 2.0, 3.0]
        nccl = torch.cuda.nccl.version() if backend == "nccl" else "-"
        version = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    finally:
        dist.destroy_process_group()
    return Check(f"{backend} process group", "ok" if ok else "FAIL",
                 f"world size 1, all_reduce {'correct' if ok else 'WRONG'}; NCCL {version}")


@dataclass
class Timing:
    """One timed configuration."""

    name: str
    batch: int
    ms_per_step: float
    images_per_s: float
    peak_gib: float
    sheet_gib: float | None
    note: str


def time_config(cfg: PaperConfig, device: torch.device, steps: int, warmup: int, sheet: bool) -> Timing:
    """Train ``cfg`` for ``warmup + steps`` steps at its per-GPU batch (halved on OOM) and time the last ones."""
    torch.manual_seed(0)
    method = cfg.build().to(device).train()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4,
                            fused=device.type == "cuda")
    batch_size, note = cfg.per_gpu_batch, ""
    while True:
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            batch = cfg.batch(batch_size, device)
            t0 = 0.0
            for i in range(warmup + steps):
                if i == warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = method(batch)["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                method.on_train_step_end(i + 1, warmup + steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - t0) / steps
            break
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            if batch_size == 1:
                raise
            batch_size //= 2
            note = f"OOM at the paper's {cfg.per_gpu_batch}"
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")
    estimate = measure(PaperConfig(cfg.name, cfg.build, cfg.batch, batch_size, cfg.batch_source)).total_gib \
        if sheet else None
    return Timing(cfg.name, batch_size, 1000 * seconds, batch_size / seconds, peak, estimate, note)


def table(checks: list[Check], timings: list[Timing]) -> str:
    """Both tables as Markdown."""
    lines = ["| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {c.status} | {c.detail} |" for c in checks]
    lines += ["", "| model (bf16 autocast, fused AdamW) | batch / GPU | ms / step | images / s | peak GiB | "
              "sheet GiB | note |", "|---|---|---|---|---|---|---|"]
    for t in timings:
        sheet = f"{t.sheet_gib:.1f}" if t.sheet_gib is not None else "-"
        lines.append(f"| {t.name} | {t.batch} | {t.ms_per_step:.1f} | {t.images_per_s:.1f} | {t.peak_gib:.2f} | "
                     f"{sheet} | {t.note} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    ap.add_argument("--only", nargs="+", default=None, help="time only these configurations (names as printed)")
    ap.add_argument("--no-sheet", action="store_true", help="skip the meta-device memory estimate per row")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU, every code path (CI)")
    args = ap.parse_args()
    if args.smoke:
        device = torch.device("cpu")
        configs, args.steps, args.warmup = smoke_configs(), 1, 1
    elif not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, built with CUDA "
              f"{torch.version.cuda}); nothing to check. `--smoke` runs the code paths on the CPU at tiny sizes.")
        return 0
    else:
        device = torch.device("cuda")
        configs = paper_configs()
        print(f"gpu_check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA "
              f"{torch.version.cuda}", flush=True)
    if args.only:
        unknown = set(args.only) - {c.name for c in configs}
        if unknown:
            raise SystemExit(f"gpu_check: unknown configuration(s) {sorted(unknown)}; choose from "
                             f"{[c.name for c in configs]}")
        configs = [c for c in configs if c.name in args.only]

    checks = [check_bf16(device)]
    probes = {}
    for cfg in configs:  # one small batch per model for the flash check
        torch.manual_seed(0)
        probes[cfg.name] = (cfg.build().to(device).train(), cfg.batch(2, device))
    checks.append(check_flash(device, probes))
    del probes
    checks.append(check_compile(device) if device.type == "cuda"
                  else Check("torch.compile, no recompiles", "skipped", "CUDA only (--smoke)"))
    checks.append(check_process_group(device))
    for c in checks:
        print(f"[check] {c.name}: {c.status} ({c.detail})", flush=True)
    timings = []
    for cfg in configs:
        timings.append(time_config(cfg, device, args.steps, args.warmup, sheet=not args.no_sheet))
        print(f"[time] {cfg.name}: {timings[-1].images_per_s:.1f} images/s", flush=True)
    print(table(checks, timings))
    return 1 if any(c.status == "FAIL" for c in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
