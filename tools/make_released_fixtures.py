"""Write the golden fixtures from the released reference code (the one command).

    python tools/make_released_fixtures.py [--released-root /work/released] [--only mage,lease,vqgan,reptok,dinov2]
                                           [--out tests/fixtures/released]

The released repositories must be unpacked at their pinned commits under ``--released-root`` (layout in
``tools/released/env.py``). Each part runs in its own Python process (the releases ship top-level packages of
the same names, ``taming`` and ``util``), builds the release's own classes at small sizes with seeded weights,
replays pinned random draws and writes ``<part>.safetensors`` + ``<part>.json`` (or, for DINOv2, hub-format
``.pth`` files) into ``--out``. ``tests/test_released_*.py`` compare unissl with them (``pytest -k released``).

Parts: vqgan, mage, lease (``tools/released/mage_lease.py``); reptok (``tools/released/reptok.py``), dinov2
(``tools/released/dinov2.py``); reptok-checkpoint (``tools/released/reptok_checkpoint.py``, the tiny released-
trainer checkpoint; not in the default set).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# part -> where its writer ``function(out_dir, root)`` may live: (module under tools/released, function), first found
PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "vqgan": (("mage_lease", "write_vqgan"),),
    "mage": (("mage_lease", "write_mage"),),
    "lease": (("mage_lease", "write_lease"),),
    "reptok": (("reptok", "write_reptok"),),
    "reptok-checkpoint": (("reptok_checkpoint", "write_reptok_checkpoint"),),
    "dinov2": (("dinov2", "write_dinov2"), ("reptok", "write_dinov2")),
}
DEFAULT_PARTS = ("vqgan", "mage", "lease", "reptok", "dinov2")


def _writer(part: str):
    # imported as tools.released.<module>: a bare ``dinov2`` / ``reptok`` would shadow the releases' packages
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for module, function in PARTS[part]:
        if not (HERE / "released" / f"{module}.py").exists():
            continue
        mod = importlib.import_module(f"tools.released.{module}")
        if hasattr(mod, function):
            return getattr(mod, function)
    where = " or ".join(f"tools/released/{m}.py:{f}" for m, f in PARTS[part])
    raise SystemExit(f"part {part!r}: no writer yet ({where} is not there); nothing written")


def run_part(part: str, out: Path, root: str) -> None:
    """Run one part in this process."""
    import os

    os.environ["UNISSL_RELEASED_ROOT"] = root
    files = _writer(part)(out, root)
    for f in files or []:
        f = Path(f)
        print(f"  {f.relative_to(REPO) if f.is_relative_to(REPO) else f}  {f.stat().st_size / 1024:.0f} KiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--released-root", default="/work/released", help="folder with mage/ LEASE/ RepTok/ dinov2/ deps/")
    p.add_argument("--only", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated parts out of {','.join(PARTS)} (default: {','.join(DEFAULT_PARTS)})")
    p.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "released"), help="fixture folder")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # one part, this process
    a = p.parse_args(argv)
    parts = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {','.join(PARTS)}")
    out = Path(a.out).resolve()
    if a.in_process:
        run_part(parts[0], out, a.released_root)
        return 0
    failed = []
    for part in parts:
        t0 = time.time()
        print(f"{part}:", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", part, "--out", str(out),
               "--released-root", a.released_root, "--in-process"]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("  ")]
        if lines:
            print("\n".join(lines), flush=True)
        if r.returncode:
            failed.append(part)
            print(f"  FAILED ({r.returncode}): {(r.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
        else:
            print(f"  done in {time.time() - t0:.1f}s", flush=True)
    if failed:
        print(f"failed: {','.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
