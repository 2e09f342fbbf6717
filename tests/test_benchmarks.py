"""Every script under benchmarks/ runs, at tiny sizes (``--smoke`` or tiny flags): none can break silently.

Each test runs the script as users do (``python benchmarks/<name>.py ...`` in a subprocess, one thread) and checks
its exit status and the line that carries its result; the numbers mean nothing at these sizes. The fixtures are
a digits VQ token store (train and test splits) and a tiny RepTok tokenizer, generator run and domain
classifier over 8x8 digits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from unissl.cli import main

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))


def run_script(name: str, *args: str, timeout: int = 300) -> str:
    """Run ``benchmarks/<name>`` with one thread from the repository root; return its stdout (fails on rc != 0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def vq_store(tmp_path_factory) -> Path:
    """Digits tokenized by an untrained VQ tokenizer: ``<root>/tokens`` (train, test)."""
    from unissl.tokenizers.vq import VQTokenizer, preset

    root = tmp_path_factory.mktemp("bench_vq")
    torch.manual_seed(0)
    VQTokenizer(preset("digits")).save_pretrained(root / "tok")
    assert main(["tokenize", "--tokenizer", str(root / "tok"), "--out", str(root / "tokens"), "--dataset", "digits",
                 "--splits", "train", "test", "--no-progress"]) == 0
    return root / "tokens"


TTA_TINY = ["--preset", "tiny", "--batch", "32", "--epochs", "0.1", "--probe-epochs", "1", "--pools", "mean",
            "--minutes", "1"]


def test_every_benchmark_script_has_a_smoke_test() -> None:
    """A new script under benchmarks/ needs its test here."""
    tested = {"ema_ab.py", "gloo_teardown.py", "gpu_check.py", "knn_end_of_schedule.py", "mfu.py", "paper_sheet.py", "released_options.py", "reptok_vs_2d.py",
              "sorcen_vs_magec.py", "sweep.py", "time_to_accuracy.py", "token_store.py"}
    assert set(SCRIPTS) == tested


def test_knn_end_of_schedule_reads_a_study_and_earlier_points(tmp_path: Path) -> None:
    """Per encoder: the mean / sd over seeds of the study's k-NN and of the training CPU minutes of the last log
    line, merged with earlier points; JSON and PNG written; nothing to plot is a one-line error."""
    import json
    import statistics

    from unissl.eval.results import record_result

    study = tmp_path / "study"
    for seed, (knn, cpu) in enumerate([(80.0, 600.0), (81.0, 660.0)]):
        record_result(study / f"seed{seed}" / "eval", "knn-sorcen", {"top1": knn, "top5": 99.0})
        log = study / f"seed{seed}" / "sorcen" / "log.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text(json.dumps({"step": 10, "epoch": 1.0, "cpu_elapsed": cpu / 2}) + "\n"
                       + json.dumps({"step": 20, "epoch": 2.0, "cpu_elapsed": cpu}) + "\n")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps([{"encoder": "mage", "epochs": 6, "knn": 83.7, "knn_sd": 0.4, "n": 3,
                                    "cpu_minutes": 12.3}]))
    out = run_script("knn_end_of_schedule.py", "--study", str(study), "--points", str(earlier),
                     "--out", str(tmp_path / "curve"))
    points = json.loads((tmp_path / "curve.json").read_text())
    sorcen = next(p for p in points if p["encoder"] == "sorcen")
    assert (sorcen["knn"], sorcen["n"], sorcen["epochs"]) == (80.5, 2, 2.0)
    assert sorcen["knn_sd"] == pytest.approx(statistics.stdev([80.0, 81.0]))
    assert sorcen["cpu_minutes"] == pytest.approx(10.5)  # (600 + 660) / 2 CPU seconds
    assert (tmp_path / "curve.png").stat().st_size > 0 and "vs pixels -4.09" in out and len(points) == 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "knn_end_of_schedule.py"), "--out", str(tmp_path / "x")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "no points" in proc.stderr


@pytest.mark.slow
def test_gloo_teardown_one_job_per_arm() -> None:
    """One torchrun job per arm, both counted (the counts themselves need --jobs 100: 6/100 vs 0/100 measured;
    that the CLI leaves its group is tested in test_pipeline.py)."""
    out = run_script("gloo_teardown.py", "--jobs", "1")
    assert re.search(r"^kept: [01]/1 jobs failed at exit", out, re.M) and re.search(r"^left: [01]/1 jobs", out, re.M)
    assert "failed-job ratio kept / left:" in out


def test_reptok_vs_2d_smoke() -> None:
    out = run_script("reptok_vs_2d.py", "--smoke")
    assert "FLOPs per sample: token" in out and "1 thread(s): throughput x" in out and "paper size" in out


def test_mfu_smoke() -> None:
    out = run_script("mfu.py", "--smoke")
    for kind in ("sorcen", "mage-c", "vq-tokenizer", "reptok-tokenizer-cached", "generator"):
        assert any(line.startswith(kind + " ") for line in out.splitlines()), kind


def test_sorcen_vs_magec_tiny() -> None:
    out = run_script("sorcen_vs_magec.py", "--batch", "2", "--steps", "1", "--warmup", "0", "--threads", "1")
    assert "throughput ratio sorcen / mage-c at 1 thread(s)" in out


def test_token_store_tiny() -> None:
    out = run_script("token_store.py", "--n-small", "300", "--n-large", "100", "--batch", "16", "--steps", "2",
                     "--model-steps", "1")
    assert "fmnist-7x7" in out and "store/model ratio" in out


def test_time_to_accuracy_tiny(vq_store: Path, tmp_path: Path) -> None:
    import json

    out = run_script("time_to_accuracy.py", "--tokens", str(vq_store), *TTA_TINY, "--out", str(tmp_path / "c.json"),
                     "--", "--train.warmup-steps", "1")
    curve = json.loads((tmp_path / "c.json").read_text())["curve"]
    assert "ms/step" in out and curve and 0 <= curve[-1]["mean"] <= 100


def test_time_to_accuracy_grid_pool_tiny(vq_store: Path, tmp_path: Path) -> None:
    import json

    out = run_script("time_to_accuracy.py", "--tokens", str(vq_store), *TTA_TINY, "--pools", "mean,grid",
                     "--hit-pool", "grid", "--out", str(tmp_path / "g.json"), "--", "--train.warmup-steps", "1")
    point = json.loads((tmp_path / "g.json").read_text())["curve"][-1]
    assert "grid" in out.strip().splitlines()[-1] and 0 <= point["grid"] <= 100 and 0 <= point["mean"] <= 100
    assert "blocks" not in point


def test_time_to_accuracy_knn_curve_tiny(vq_store: Path, tmp_path: Path) -> None:
    import json

    out = run_script("time_to_accuracy.py", "--tokens", str(vq_store), *TTA_TINY, "--pools", "mean,cls",
                     "--knn-k", "3", "5", "--knn-t", "0.07", "0.5", "--skip-probe", "--stop-on", "knn",
                     "--out", str(tmp_path / "k.json"), "--", "--train.warmup-steps", "1")
    run = json.loads((tmp_path / "k.json").read_text())
    point = run["curve"][-1]
    assert "k-NN line 84.59%" in out and 0 <= point["knn"] <= 100 and point["knn_pool"] in ("mean", "cls")
    assert point["knn_k"] in (3, 5) and point["knn_T"] in (0.07, 0.5) and "mean" not in point  # no probe ran
    run_script("time_to_accuracy.py", "--compare", str(tmp_path / "k.json"), "--compare-pool", "knn",
               "--out", str(tmp_path / "k.png"))
    assert (tmp_path / "k.png").stat().st_size > 0


def test_knn_selection_never_looks_at_the_test_split() -> None:
    import importlib.util

    from unissl.eval.knn import knn_accuracy

    spec = importlib.util.spec_from_file_location("tta", BENCH / "time_to_accuracy.py")
    assert spec is not None and spec.loader is not None
    tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    good = torch.randn(300, 4, generator=g) + 3 * nn.functional.one_hot(y, 4).float()  # separable pooling
    noise = torch.randn(300, 4, generator=g)  # useless pooling
    ty = torch.randint(0, 3, (100,), generator=g)
    test = {"a": torch.randn(100, 4, generator=g) + 3 * nn.functional.one_hot(ty, 4).float(),
            "b": torch.randn(100, 4, generator=g)}
    res = tta.knn_selected({"a": good, "b": noise}, y, test, ty, (1, 7), (0.1, 1.0))
    shuffled = tta.knn_selected({"a": good, "b": noise}, y, test, ty[torch.randperm(100, generator=g)], (1, 7), (0.1, 1.0))
    assert res["knn_pool"] == "a" and (res["knn_k"], res["knn_T"]) == (shuffled["knn_k"], shuffled["knn_T"])
    want = knn_accuracy(good, y, test["a"], ty, 3, int(res["knn_k"]), float(res["knn_T"]))["top1"]
    assert res["knn"] == pytest.approx(want) and res["knn"] > 90
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))  # the held-out 10% of knn_selected
    val, fit = perm[:30], perm[30:]
    for pool, x in (("a", good), ("b", noise)):  # the one-pass votes equal knn_accuracy at every setting
        for k in (1, 7):
            for t in (0.1, 1.0):
                one = tta.knn_selected({pool: x}, y, {pool: x[:5]}, y[:5], (k,), (t,))
                assert one["knn_val"] == pytest.approx(knn_accuracy(x[fit], y[fit], x[val], y[val], 3, k, t)["top1"])
    pixels = tta.pixel_knn((1, 5), (0.07,), dataset="digits")  # the pixel line under the same protocol
    assert pixels["knn_pool"] == "pixels" and pixels["knn_k"] in (1, 5) and 80 < float(pixels["knn"]) <= 100


def test_released_options_tiny(vq_store: Path) -> None:
    out = run_script("released_options.py", "--tokens", str(vq_store), "--only", "baseline", "teacher_init",
                     "--steps", "2")
    assert "baseline " in out and "teacher_init " in out and "probe" in out


def test_sweep_tiny(vq_store: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""out: {tmp_path / 'out'}
vars:
  tokens: none
  bench: {' '.join(TTA_TINY)}
stages:
  - grid:
      arm:
        - {{name: lr1, train: --train.lr 0.001}}
        - {{name: lr2, train: --train.lr 0.002}}
    stages:
      - {{name: "{{arm.name}}", script: benchmarks/time_to_accuracy.py, output: "{{out}}/{{arm.name}}.json",
         args: "--tokens {{tokens}} --label {{arm.name}} --out {{out}}/{{arm.name}}.json {{bench}} -- --train.warmup-steps 1 {{arm.train}}"}}
""")
    out = run_script("sweep.py", str(sweep), "--tokens", str(vq_store), "--jobs", "1")
    rows = [line for line in out.splitlines() if line.startswith("| lr")]
    assert len(rows) == 2 and (tmp_path / "out" / "sweep.md").is_file()


def test_ema_ab_tiny(tmp_path: Path) -> None:
    from unissl.eval.domain import DomainClassifier, DomainClassifierConfig, save_classifier
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    torch.manual_seed(0)
    enc = {"kind": "random", "image_size": 8, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    RepTokTokenizer(RepTokConfig(encoder=enc, image_size=8, channels=1, decoder="tiny", patch_size=4)
                    ).save_pretrained(tmp_path / "tok")
    save_classifier(DomainClassifier(DomainClassifierConfig(image_size=8, widths=[4, 8], feature_dim=8)),
                    tmp_path / "clf")
    run = tmp_path / "run"
    assert main(["train", "reptok-generator", "--tokenizer", str(tmp_path / "tok"), "--dataset", "digits",
                 "--preset", "tiny", "--train.steps", "4", "--train.global-batch", "64", "--train.warmup-steps", "0",
                 "--train.ema-decay", "0.9", "--train.run-dir", str(run), "--no-train.tensorboard",
                 "--no-train.progress", "--samples-per-class", "0"]) == 0
    out = run_script("ema_ab.py", "--run", str(run), "--domain", str(tmp_path / "clf"), "--reference", "digits:test",
                     "--n", "2", "--steps", "2")
    assert "exported EMA" in out and "initial weights" in out and (run / "ema_ab.json").is_file()


def test_paper_sheet_smoke() -> None:
    out = run_script("paper_sheet.py", "--smoke")
    assert out.count("| RepTok") == 3 and "| Sorcen tiny |" in out


def test_gpu_check_smoke() -> None:
    out = run_script("gpu_check.py", "--smoke")
    assert "| bf16 autocast | ok |" in out and "| gloo process group | ok |" in out
    assert "| Sorcen tiny | 4 |" in out
    if not torch.cuda.is_available():
        assert "no CUDA device" in run_script("gpu_check.py")  # says so and exits 0


# ---------------------------------------------------------------------------------------- the sheet's counts
def test_sheet_counts_saved_activations_in_closed_form() -> None:
    """Linear -> GELU -> Linear keeps x (B, d) for the first Linear's weight gradient, h = x W1^T (B, k) for the
    GELU, GELU(h) (B, k) for the second Linear: (B d + 2 B k) elements; weights are not activations. Attention
    keeps what the flash kernel keeps: q, k, v, out (B, H, L, e) and a float32 log-sum-exp (B, H, L)."""
    sys.path.insert(0, str(BENCH))
    try:
        from paper_sheet import saved_activation_bytes
    finally:
        sys.path.remove(str(BENCH))
    from unissl.engine.method import Method

    b, d, k = 5, 6, 7

    class MLP(Method):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(d, k), nn.GELU(), nn.Linear(k, d))

        def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"loss": self.net(batch["x"]).sum()}

    with torch.device("meta"):
        mlp = MLP()
    assert saved_activation_bytes(mlp, {"x": torch.empty(b, d, device="meta")}) == 4 * (b * d + 2 * b * k)
    assert saved_activation_bytes(mlp.to(torch.bfloat16),
                                  {"x": torch.empty(b, d, device="meta", dtype=torch.bfloat16)}) == 2 * (b * d + 2 * b * k)

    heads, length, e = 2, 9, 4

    class Attention(Method):
        def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            q, key, v = batch["q"] * 1.0, batch["k"] * 1.0, batch["v"] * 1.0  # (B, H, L, e), saved by nothing
            return {"loss": torch.nn.functional.scaled_dot_product_attention(q, key, v).sum()}

    qkv = {n: torch.empty(b, heads, length, e, device="meta", requires_grad=True) for n in ("q", "k", "v")}
    assert saved_activation_bytes(Attention(), qkv) == 4 * (4 * b * heads * length * e + b * heads * length)
