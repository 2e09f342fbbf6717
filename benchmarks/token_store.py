"""Token-store throughput: can the memory-mapped store feed a Sorcen training step?

Writes synthetic VQ stores of realistic size (Fashion-MNIST-like 60k x 7x7 ids, ImageNet-like 20k x 16x16
ids, both with a flipped copy) into a temporary directory with :func:`write_token_store`, then measures

* write throughput (images/s, ids come from a random "tokenizer", so this is the store's own cost);
* random-batch read throughput (tokens/s) of ``TokenStore.__getitems__`` for batch 256, directly and
  through a ``DataLoader`` with the :class:`ShardedBatchSampler` (what the trainer does);
* if ``unissl.methods.sorcen`` is importable, the tokens/s one training step of its ``small`` preset
  consumes (:func:`model_tokens_per_second`), and the ratio read / consumed.

Run: ``python benchmarks/token_store.py [--n-small 60000] [--n-large 20000] [--batch 256] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from unissl.data import InMemoryImageDataset, collate_batched
from unissl.data.token_store import TokenStore
from unissl.data.token_writer import write_token_store


class RandomTokenizer:
    """Stands in for a VQ tokenizer: uniform random ids of a fixed grid (cost ~0, so writes are timed)."""

    def __init__(self, codebook_size: int, grid: tuple[int, int]) -> None:
        self.codebook_size, self.grid = codebook_size, grid
        self.gen = torch.Generator().manual_seed(0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, h, w)
        return torch.randint(0, self.codebook_size, (images.shape[0], *self.grid), generator=self.gen)


def synthetic_store(root: Path, name: str, n: int, grid: tuple[int, int], codebook_size: int) -> tuple[Path, float]:
    """Write a store of ``n`` images (+ flipped copy); returns its path and the write time in seconds."""
    images = torch.zeros((n, 1, 2, 2), dtype=torch.uint8)  # placeholder pixels, (N, 1, 2, 2)
    labels = torch.arange(n) % 10  # (N,)
    ds = InMemoryImageDataset(name, "train", images, labels, [str(i) for i in range(10)])
    start = time.perf_counter()
    path = write_token_store(root / name, RandomTokenizer(codebook_size, grid), {"train": ds}, batch_size=1024,
                             flip=True, progress=False)
    return path, time.perf_counter() - start


def read_tokens_per_second(store: TokenStore, batch: int, steps: int) -> float:
    """Random batches straight from the memmap (indices from the sharded sampler)."""
    tokens_per_image = store.grid[0] * store.grid[1]
    it = store.batches(batch, seed=0, num_steps=steps + 5)
    for _ in range(5):  # warm-up
        next(it)
    start = time.perf_counter()
    n = sum(b["ids"].shape[0] for b in it)
    return n * tokens_per_image / (time.perf_counter() - start)


def loader_tokens_per_second(store: TokenStore, batch: int, steps: int) -> float:
    """The trainer's path: DataLoader(batch_sampler=ShardedBatchSampler, collate_fn=collate_batched)."""
    loader = torch.utils.data.DataLoader(store, batch_sampler=store.sampler(batch, seed=1), collate_fn=collate_batched)
    it = iter(loader)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    n = sum(next(it)["ids"].shape[0] for _ in range(steps))
    return n * store.grid[0] * store.grid[1] / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------------------
# Model side. Wired to Sorcen's `small` preset; returns None (with the reason) while that code is unavailable.
# ---------------------------------------------------------------------------------------------------------------
def model_tokens_per_second(batch: int = 256, grid: tuple[int, int] = (7, 7), codebook_size: int = 512,
                            steps: int = 5) -> tuple[float | None, str]:
    """Tokens/s consumed by full training steps (forward, backward, AdamW) of the Sorcen ``small`` preset."""
    if steps <= 0:
        return None, "skipped (--model-steps 0)"
    try:
        from unissl.methods.sorcen.method import build_method
        from unissl.methods.sorcen.presets import arch_for_store
    except ImportError as e:
        return None, f"unissl.methods.sorcen unavailable ({e})"
    try:
        method = build_method(arch_for_store("small", codebook_size, grid), "sorcen", num_classes=10)
        method.train()
        opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
        g = torch.Generator().manual_seed(0)
        data = {"ids": torch.randint(0, codebook_size, (batch, *grid), generator=g),
                "label": torch.randint(0, 10, (batch,), generator=g)}

        def step() -> None:
            out = method(data)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            if hasattr(method, "on_train_step_end"):
                method.on_train_step_end(1, 100)

        step()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - start
    except Exception as e:  # the method is under development; report rather than crash the benchmark
        return None, f"sorcen step failed: {type(e).__name__}: {e}"
    return batch * grid[0] * grid[1] * steps / seconds, f"sorcen small, batch {batch}, {steps} steps"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-small", type=int, default=60_000, help="images of the 7x7 store")
    p.add_argument("--n-large", type=int, default=20_000, help="images of the 16x16 store")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=200, help="read batches per measurement")
    p.add_argument("--model-steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: fair on a shared 2-core machine)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[str, dict[str, float | str | None]] = {}
    with tempfile.TemporaryDirectory(prefix="unissl-bench-") as tmp:
        for name, n, grid, k in (("fmnist-7x7", args.n_small, (7, 7), 512),
                                 ("imagenet-16x16", args.n_large, (16, 16), 1024)):
            path, write_s = synthetic_store(Path(tmp), name, n, grid, k)
            store = TokenStore(path, "train", flip=True)
            size_mb = sum(f.stat().st_size for f in path.iterdir()) / 2**20
            results[name] = {
                "images": n, "grid": f"{grid[0]}x{grid[1]}", "store_MiB": round(size_mb, 1),
                "write_images_per_s": round(2 * n / write_s),
                "read_tokens_per_s": round(read_tokens_per_second(store, args.batch, args.steps)),
                "loader_tokens_per_s": round(loader_tokens_per_second(store, args.batch, args.steps)),
            }
            start = time.perf_counter()
            TokenStore(path, "train", flip=True, verify=True)
            results[name]["open_verify_s"] = round(time.perf_counter() - start, 3)

    model_tps, note = model_tokens_per_second(args.batch, (7, 7), 512, args.model_steps)
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}")
    print(f"{'store':<16}{'images':>8}{'grid':>7}{'MiB':>7}{'write img/s':>13}{'read tok/s':>14}"
          f"{'loader tok/s':>14}{'open+verify s':>15}")
    for name, r in results.items():
        print(f"{name:<16}{r['images']:>8}{r['grid']:>7}{r['store_MiB']:>7}{r['write_images_per_s']:>13,}"
              f"{r['read_tokens_per_s']:>14,}{r['loader_tokens_per_s']:>14,}{r['open_verify_s']:>15}")
    if model_tps is None:
        print(f"model side: {note}")
    else:
        read = float(results["fmnist-7x7"]["loader_tokens_per_s"])  # type: ignore[arg-type]
        print(f"model side: {note}: {model_tps:,.0f} tokens/s consumed; store/model ratio {read / model_tps:,.1f}x")
    results["model"] = {"tokens_per_s": model_tps, "note": note}
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
