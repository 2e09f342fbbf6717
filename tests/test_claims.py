"""The commands that decide the papers' open claims, end to end at tiny sizes on digits: ``eval generation
--bootstrap``, ``eval sampler-sweep`` (selection on other samples than the reported ones), ``eval verdict``,
``eval transfer --finetune.epochs`` and the study overlays that chain them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unissl.cli import main
from unissl.errors import UnisslError

TRAIN = ["--preset", "tiny", "--train.global-batch", "32", "--no-train.progress", "--no-train.tensorboard",
         "--train.num-workers", "0", "--train.lr", "1e-3", "--train.log-every", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """An untrained digits VQ tokenizer, its train/test token store, a 2-step Sorcen run, a tiny domain judge."""
    from unissl.eval.domain import DomainClassifier, DomainClassifierConfig, save_classifier
    from unissl.tokenizers.vq import VQTokenizer, preset

    root = tmp_path_factory.mktemp("claims")
    torch.manual_seed(0)
    VQTokenizer(preset("digits")).save_pretrained(root / "tok")
    assert main(["tokenize", "--tokenizer", str(root / "tok"), "--out", str(root / "tokens"), "--dataset", "digits",
                 "--splits", "train", "test", "--no-progress"]) == 0
    assert main(["train", "sorcen", "--tokens", str(root / "tokens"), "--train.steps", "2",
                 "--train.run-dir", str(root / "run"), *TRAIN]) == 0
    save_classifier(DomainClassifier(DomainClassifierConfig(image_size=8, widths=[4, 8], feature_dim=8)),
                    root / "judge")
    return root


def _result(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "results" / f"{name}.json").read_text())


def test_sampler_sweep_reports_fresh_samples_equal_to_sample_then_generation(setup: Path) -> None:
    ev = setup / "eval"
    assert main(["eval", "sampler-sweep", "--checkpoint", str(setup / "run"), "--extractor", f"domain:{setup / 'judge'}",
                 "--reference", "digits:test", "--arms", "2:1.0", "3:0.5", "1:0.0", "--select-samples", "24",
                 "--num-samples", "40", "--bootstrap", "20", "--seed", "3", "--run-dir", str(ev), "--name", "sweep",
                 "--save-samples", str(setup / "kept"), "--device", "cpu"]) == 0
    res = _result(ev, "sweep")
    m, extra = res["metrics"], res["extra"]
    assert set(extra["selection"]) == {"2:1", "3:0.5", "1:0"} and extra["select_seed"] == 10003
    assert extra["best_arm"] == min(extra["selection"], key=extra["selection"].get)  # chosen on the selection
    assert m["FD_domain_default_ci_low"] <= m["FD_domain_default_ci_high"]
    assert len(extra["bootstrap"]["FD_domain_default"]["draws"]) == 20
    # the default arm's reported FD is that of `sample sorcen` + `eval generation` at the same seed and batch
    assert main(["sample", "sorcen", "--checkpoint", str(setup / "run"), "--num-samples", "40", "--batch-size", "256",
                 "--seed", "3", "--maskgit.steps", "2", "--maskgit.choice-temperature", "1.0",
                 "--out", str(setup / "samples"), "--device", "cpu"]) == 0
    assert main(["eval", "generation", "--samples", str(setup / "samples" / "samples.npz"), "--extractor",
                 f"domain:{setup / 'judge'}", "--reference", "digits:test", "--run-dir", str(ev), "--name", "gen",
                 "--bootstrap", "20", "--seed", "3", "--pr-samples", "40", "--device", "cpu"]) == 0
    gen = _result(ev, "gen")
    assert gen["metrics"]["FD_domain"] == pytest.approx(m["FD_domain_default"], rel=1e-6)
    kept, sampled = np.load(setup / "kept" / "samples.npz"), np.load(setup / "samples" / "samples.npz")
    assert np.array_equal(kept["ids"], sampled["ids"])  # --save-samples keeps the default arm's reported samples
    assert gen["metrics"]["FD_domain_ci_low"] == pytest.approx(m["FD_domain_default_ci_low"], rel=1e-6)
    assert gen["extra"]["bootstrap"]["FD_domain"]["draws"] == extra["bootstrap"]["FD_domain_default"]["draws"]
    # and without --bootstrap the result holds no interval
    assert main(["eval", "generation", "--samples", str(setup / "samples" / "samples.npz"), "--extractor",
                 f"domain:{setup / 'judge'}", "--reference", "digits:test", "--run-dir", str(ev), "--name", "gen0",
                 "--pr-samples", "40", "--device", "cpu"]) == 0
    assert "FD_domain_ci_low" not in _result(ev, "gen0")["metrics"]


def test_sampler_sweep_rejects_a_malformed_arm(setup: Path, capsys) -> None:
    assert main(["eval", "sampler-sweep", "--checkpoint", str(setup / "run"), "--extractor", "domain:x",
                 "--arms", "twenty"]) == 2
    assert "STEPS:CHOICE_TEMPERATURE" in capsys.readouterr().err


def _fake_study(root: Path, a: list[float], b: list[float], metric: str = "FD_domain") -> Path:
    from unissl.eval.results import record_result

    for s, (va, vb) in enumerate(zip(a, b)):
        record_result(root / f"seed{s}" / "eval", "fd-a", {metric: va, "num_samples": 10000.0})
        record_result(root / f"seed{s}" / "eval", "fd-b", {metric: vb, "num_samples": 10000.0})
    return root


def test_verdict_over_seeds(tmp_path: Path, capsys) -> None:
    study = _fake_study(tmp_path / "s", [5.0, 5.2, 4.9], [6.0, 6.3, 5.8])
    assert main(["eval", "verdict", "--study", str(study), "--a", "fd-a", "--b", "fd-b", "--metric", "FD_domain",
                 "--lower-is-better", "--paper", "FID 9.61 vs 11.1"]) == 0
    out = capsys.readouterr().out
    assert "reproduces" in out and "seeds (3, 3)" in out and "n=10000" in out and "paper: FID 9.61 vs 11.1" in out
    res = _result(study, "verdict-fd-a-vs-fd-b-FD_domain")
    assert res["extra"]["outcome"] == "reproduces" and res["metrics"]["diff"] == pytest.approx(5.0333 - 6.0333, abs=1e-3)
    # the same numbers for an accuracy (higher is better): the claim fails
    assert main(["eval", "verdict", "--study", str(study), "--a", "fd-a", "--b", "fd-b", "--metric",
                 "FD_domain"]) == 0
    assert "does not reproduce" in capsys.readouterr().out


def test_verdict_of_one_seed_uses_the_bootstrap_draws(tmp_path: Path, capsys) -> None:
    from unissl.eval.results import record_result

    for i, (name, centre) in enumerate((("fd-a", 5.0), ("fd-b", 5.05))):  # independent sample sets
        draws = list(np.random.default_rng(i).normal(centre, 0.5, 50))
        record_result(tmp_path / "seed0" / "eval", name, {"FD_domain": centre},
                      {"bootstrap": {"FD_domain": {"resamples": 50, "draws": draws}}})
    assert main(["eval", "verdict", "--study", str(tmp_path), "--a", "fd-a", "--b", "fd-b", "--metric", "FD_domain",
                 "--lower-is-better"]) == 0
    out = capsys.readouterr().out
    assert "cannot tell" in out and "bootstrap, 50 resamples" in out


def test_verdict_over_seeds_adds_the_two_level_bootstrap_when_every_seed_has_draws(tmp_path: Path, capsys) -> None:
    from unissl.eval.results import record_result

    rng = np.random.default_rng(0)
    for s, (va, vb) in enumerate(zip([5.0, 5.2, 4.9], [6.0, 6.3, 5.8])):
        for name, v in (("fd-a", va), ("fd-b", vb)):
            record_result(tmp_path / f"seed{s}" / "eval", name, {"FD_domain": v},
                          {"bootstrap": {"FD_domain": {"resamples": 40, "draws": list(rng.normal(v, 0.1, 40))}}})
    assert main(["eval", "verdict", "--study", str(tmp_path), "--a", "fd-a", "--b", "fd-b", "--metric", "FD_domain",
                 "--lower-is-better"]) == 0
    assert "two-level bootstrap over seeds and samples" in capsys.readouterr().out
    m = _result(tmp_path, "verdict-fd-a-vs-fd-b-FD_domain")["metrics"]
    assert m["diff_two_level_low"] < m["diff"] < m["diff_two_level_high"] < 0  # every resample has a below b
    assert m["diff_low"] < m["diff_two_level_low"]  # Welch's t with 2 df is the wider of the two


def test_verdict_names_what_is_missing(tmp_path: Path, capsys) -> None:
    _fake_study(tmp_path / "s", [1.0, 2.0], [1.0, 2.0])
    assert main(["eval", "verdict", "--study", str(tmp_path / "s"), "--a", "fd-a", "--b", "nope",
                 "--metric", "FD_domain"]) == 2
    assert "no result named 'nope'" in capsys.readouterr().err
    assert main(["eval", "verdict", "--study", str(tmp_path / "s"), "--a", "fd-a", "--b", "fd-b",
                 "--metric", "top1"]) == 2
    assert "has no metric 'top1'" in capsys.readouterr().err


def test_parse_arm() -> None:
    from unissl.commands.eval_sampler_sweep import arm_name, parse_arm

    assert arm_name(parse_arm("12:4.5")) == "12:4.5" and parse_arm("20:6").steps == 20
    with pytest.raises(UnisslError):
        parse_arm("0:1.0")


def test_transfer_finetune_learns_and_leaves_the_encoder_untouched(setup: Path) -> None:
    from unissl.data import build_dataset
    from unissl.data.base import to_float_images
    from unissl.eval.features import load_extractor
    from unissl.eval.finetune import FinetuneConfig, encode_ids, finetune_top1

    ev = setup / "eval"
    assert main(["eval", "transfer", "--extractor", f"sorcen:{setup / 'run'}", "--dataset", "digits", "--source",
                 "digits", "--finetune.epochs", "2", "--run-dir", str(ev), "--name", "tr", "--device", "cpu"]) == 0
    res = _result(ev, "tr")
    assert 0 <= res["metrics"]["finetune_top1"] <= 100 and res["extra"]["finetune"]["epochs"] == 2
    ext = load_extractor(f"sorcen:{setup / 'run'}", "cpu")
    before = {k: v.clone() for k, v in ext.model.state_dict().items()}
    data = {s: build_dataset("digits", s) for s in ("train", "test")}
    batches = {s: d.__getitems__(list(range(len(d)))) for s, d in data.items()}
    ids = {s: encode_ids(ext, to_float_images(b["image"])) for s, b in batches.items()}
    short = finetune_top1(ext, ids["train"], batches["train"]["label"], ids["test"], batches["test"]["label"], 10,
                          FinetuneConfig(epochs=1, lr=1e-3))
    longer = finetune_top1(ext, ids["train"], batches["train"]["label"], ids["test"], batches["test"]["label"], 10,
                           FinetuneConfig(epochs=6, lr=1e-3))
    assert longer["finetune_train_loss"] < short["finetune_train_loss"] < math.log(10) + 0.2
    assert longer["finetune_top1"] > 30  # chance is 10%
    assert all(torch.equal(before[k], v) for k, v in ext.model.state_dict().items())  # a copy was tuned


CLAIMS = Path(__file__).resolve().parents[1] / "configs" / "claims"
STUDY = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist-study-6ep.yaml"


@pytest.mark.parametrize("name", ["generation", "transfer", "echoes"])
def test_claim_overlays_keep_the_study_and_add_their_stages(name: str, tmp_path: Path) -> None:
    """Each claim file extends the 6-epoch study in its own out directory: every stage of the study resolves to
    the same config and hash (a finished study is skipped, not re-run); the new stages come after."""
    import re

    from unissl.pipeline import load_pipeline, parse_stages, run_pipeline

    study, claim = load_pipeline(STUDY), load_pipeline(CLAIMS / f"{name}.yaml")
    assert claim["out"] == study["out"] and claim["seeds"] == study["seeds"] == [0, 1, 2]
    n = len(study["stages"])
    assert claim["stages"][:n] == study["stages"]

    def hashes(stages: list) -> dict[str, str]:
        lines: list[str] = []
        run_pipeline(parse_stages(stages), tmp_path, seeds=[0, 1, 2], dry_run=True, log=lines.append)
        return dict(re.findall(r"\[pipeline\] (\S+): would run `[^`]*` \((\w+)\)", "\n".join(lines)))

    base, full = hashes(study["stages"]), hashes(claim["stages"])
    assert {k: full[k] for k in base} == base
    new = {s["name"]: s for s in claim["stages"][n:]}
    if name == "generation":
        assert set(new) == {f"{k}-{e}" for k in ("fd10k", "sweep") for e in ("sorcen", "mage", "mage-c")}
        assert new["sweep-mage-c"]["config"]["num_samples"] == 10000 and new["sweep-mage"]["config"]["bootstrap"] == 200
        assert new["fd10k-sorcen"]["config"]["samples"] == "{stage:sweep-sorcen}/samples.npz"  # the sweep's samples
        assert new["fd10k-sorcen"]["config"]["bootstrap"] == 200 and new["fd10k-sorcen"]["config"]["ceiling_tokenizer"]
    elif name == "transfer":
        assert set(new) == {"transfer-pixels", "transfer-sorcen", "transfer-mage", "transfer-mage-c"}
        assert new["transfer-mage"]["config"]["dataset"] == "digits"
        assert new["transfer-sorcen"]["config"]["finetune"]["epochs"] == 5
    else:  # the sampled-echo arm: the study's Sorcen with only the echo switch moved
        sorcen = next(s for s in study["stages"] if s["name"] == "sorcen")
        echo1 = new["sorcen-echo1"]
        assert sorcen["config"]["loss"]["echo_warmup_unit"] == "released"
        assert echo1["config"]["loss"] == {**sorcen["config"]["loss"], "echo_warmup_unit": "epochs", "echo_warmup": 1}
        assert echo1["config"]["train"] == {**sorcen["config"]["train"], "run_dir": "{out}/sorcen-echo1"}
        assert {k: v for k, v in echo1["config"].items() if k not in ("loss", "train")} == \
            {k: v for k, v in sorcen["config"].items() if k not in ("loss", "train")}
        assert {"probe-sorcen-echo1", "fewshot-sorcen-echo1", "knn-sorcen-echo1"} <= set(new)


def test_the_echo_switch_moved_to_epoch_11_is_the_released_rule() -> None:
    """``echo.warmup_unit: epochs`` with warmup W is the released rule with its switch at epoch W: at W = 11 the
    two agree at every step (the released rule: ground truth while the 0-based epoch index is <= 10)."""
    from unissl.methods.sorcen.config import EchoConfig, SorcenConfig
    from unissl.methods.sorcen.method import build_method
    from unissl.methods.sorcen.presets import PRESETS

    def warm(unit: str, value: float, step: int, spe: int = 7) -> bool:
        m = build_method(PRESETS["tiny"], "sorcen", SorcenConfig(echo=EchoConfig(warmup=value, warmup_unit=unit)),
                         steps_per_epoch=spe)
        m.on_train_step_end(step, 200)
        return m.in_echo_warmup()

    for step in range(0, 120, 3):
        assert warm("epochs", 11, step) == warm("released", 0.0, step), step
    assert warm("epochs", 1, 6) and not warm("epochs", 1, 7)  # the moved switch: sampled from epoch 1


def test_the_two_epoch_claims_study_compares_like_with_like(tmp_path: Path) -> None:
    """configs/claims/cpu-2ep.yaml (the claims at a size one CPU session holds): the four encoders share one
    optimisation (only their run directories differ), the sampled-echo arm differs from the released-rule Sorcen
    only in its echo switch, every generator is reported on 10,000 samples with its own released sampler as the
    default arm, and every stage resolves (a dry run plans all of them on 3 seeds)."""
    import re

    from unissl.pipeline import load_pipeline, parse_stages, run_pipeline

    spec = load_pipeline(CLAIMS / "cpu-2ep.yaml")
    assert spec["seeds"] == [0, 1, 2] and spec["out"] == "runs/fmnist-claims-2ep"
    stages = {s["name"]: s for s in spec["stages"]}
    trains = {n: stages[n]["config"]["train"] for n in ("sorcen", "sorcen-echo1", "mage", "mage-c")}
    assert all({k: v for k, v in t.items() if k != "run_dir"} == {k: v for k, v in trains["sorcen"].items()
                                                                 if k != "run_dir"} for t in trains.values())
    assert trains["sorcen"]["epochs"] == 2
    sorcen, echo1 = stages["sorcen"]["config"], stages["sorcen-echo1"]["config"]
    assert sorcen["loss"]["echo_warmup_unit"] == "released"
    assert echo1["loss"] == {**sorcen["loss"], "echo_warmup_unit": "epochs", "echo_warmup": 1}
    for enc, default in (("sorcen", "20:6.0"), ("mage", "12:4.5"), ("mage-c", "12:4.5")):
        sweep = stages[f"sweep-{enc}"]["config"]
        assert sweep["arms"][0] == default and {"20:6.0", "12:4.5"} <= set(sweep["arms"])
        assert sweep["num_samples"] == 10000 and sweep["bootstrap"] == 200
        assert stages[f"fd10k-{enc}"]["config"]["samples"] == f"{{stage:sweep-{enc}}}/samples.npz"
        assert stages[f"transfer-{enc}"]["config"]["dataset"] == "digits"
    lines: list[str] = []
    run_pipeline(parse_stages(spec["stages"]), tmp_path, seeds=[0, 1, 2], dry_run=True, log=lines.append)
    planned = re.findall(r"\[pipeline\] (\S+): would run", "\n".join(lines))
    assert len(planned) == 2 + 3 * (len(stages) - 2)  # tokens and transfer-pixels once, the rest per seed
    # the 10-epoch k-NN point: the same stages with only the schedule, seeds and out directory changed
    longer = load_pipeline(CLAIMS / "knn-10ep.yaml")
    assert longer["seeds"] == [0, 1, 2] and longer["out"] == "runs/fmnist-knn-10ep"
    for a, b in zip(longer["stages"], spec["stages"]):
        if a["name"] in trains:
            assert a["config"]["train"] == {**b["config"]["train"], "epochs": 10}
        else:
            assert a == b
