"""The installable package: a wheel built from the tree carries the configs, and the installed copy (not
the source tree) runs `unissl --help` and a tiny command from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("unissl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "unissl/configs/digits-quick.yaml" in names and "unissl/configs/sorcen/small-fmnist.yaml" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"  # no configs/ here: the packaged ones must be found
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    where = run("-c", "import unissl; print(unissl.__file__)")
    assert where.returncode == 0 and where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    assert "pipeline" in run("-m", "unissl", "--help").stdout
    script = site / "bin" / "unissl"
    assert script.is_file()
    dry = run("-m", "unissl", "pipeline", "--config", "configs/digits-quick.yaml", "--out", str(work / "run"),
              "--dry-run")
    assert dry.returncode == 0 and "would run" in dry.stdout, dry.stderr
    knn = run("-m", "unissl", "eval", "knn", "--dataset", "digits", "--run-dir", str(work / "ev"))
    assert knn.returncode == 0 and (work / "ev" / "results" / "knn-pixels-digits.json").is_file(), knn.stderr


def test_build_makes_a_wheel_and_an_sdist_that_pass_twine_check(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("twine")
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    files = sorted(p.name for p in dist.iterdir())
    assert any(f.endswith(".whl") for f in files) and any(f.endswith(".tar.gz") for f in files), files
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and check.stdout.count("PASSED") == 2, check.stdout + check.stderr
