"""The report's verdict: findings beside their references, findings.json, metric directions, labelled images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from unissl import cli
from unissl.errors import ConfigError
from unissl.findings import check_goals, derive_findings, judge_goals, metric_meaning
from unissl.report import collect_metrics

REQUIRED = {"sorcen_probe_vs_pixels", "reptok_reconstruction_class_agreement", "class_conditional_class_share",
            "text_prompt_class_share"}


def _record(run: Path, name: str, metrics: dict, extra: dict) -> None:
    res = run / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"{name}.json").write_text(json.dumps({"name": name, "metrics": metrics, "extra": extra}))


def _main_job_like(root: Path, sorcen_top1: float, class_share: float) -> None:
    """The records a main job writes, with chosen numbers; samples npz files like `unissl sample reptok`'s."""
    ev = root / "eval"
    _record(ev, "linear_probe-pixels-fashion-mnist", {"top1": 84.56, "top5": 99.1},
            {"extractor": "pixels", "best_lr": 0.01})
    _record(ev, "probe-sorcen", {"top1": sorcen_top1}, {"extractor": "sorcen-blocks:runs/x/sorcen", "best_lr": 0.1})
    _record(ev, "knn-sorcen", {"top1": 80.0}, {"extractor": "sorcen:runs/x/sorcen", "k": 20})  # no pixel kNN
    _record(ev, "domain_classifier-fashion-mnist", {"test_top1": 90.5, "train_seconds": 30.0}, {"out": "d"})
    _record(root / "rec", "reptok-reconstruction", {"psnr": 15.2, "rFD_domain": 1.4, "class_agreement": 0.78}, {})
    rng = np.random.default_rng(0)
    (root / "s").mkdir()
    labels = np.repeat(np.arange(10), 3)
    np.savez(root / "s" / "class.npz", images=rng.integers(0, 255, (30, 1, 28, 28), dtype=np.uint8), labels=labels)
    prompts = np.array(["a sketch of a bag", "a sketch of a sneaker"])
    np.savez(root / "s" / "heldout.npz", images=rng.integers(0, 255, (6, 1, 28, 28), dtype=np.uint8),
             labels=np.array([8, 8, 8, 7, 7, 7]), prompts=prompts, prompt_index=np.array([0, 0, 0, 1, 1, 1]))
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    _record(ev, "class-samples", {"FD_domain": 1.1, "class_consistency": class_share, "ceiling_FD_domain": 0.4,
                                  "ceiling_class_consistency": 0.85, "judge_accuracy": 0.905},
            {"samples": str(root / "s" / "class.npz"), "class_consistency_per_class": {n: 0.8 for n in names}})
    _record(ev, "prompt-samples", {"FD_domain": 1.3, "class_consistency": 0.9, "ceiling_class_consistency": 0.85},
            {"samples": str(root / "s" / "heldout.npz")})


def test_findings_state_value_reference_and_direction(tmp_path):
    _main_job_like(tmp_path, sorcen_top1=85.02, class_share=0.70)
    found = {f.id: f for f in derive_findings(collect_metrics(tmp_path), tmp_path)}
    assert REQUIRED <= set(found)
    probe = found["sorcen_probe_vs_pixels"]
    assert (probe.value, probe.reference_value, probe.higher_is_better) == (85.02, 84.56, True)
    assert "85.02%" in probe.sentence and "84.56%" in probe.sentence and "0.46 points above" in probe.sentence
    assert "(better)" in probe.sentence
    rec = found["reptok_reconstruction_class_agreement"]
    assert (rec.value, rec.reference_value) == (78.0, 90.5) and "(worse)" in rec.sentence
    cls = found["class_conditional_class_share"]  # 70% against a ceiling of 85%: 15 points below
    assert (cls.value, cls.reference_value) == (70.0, 85.0) and "15.00 points below" in cls.sentence
    assert "FD_domain 1.10 against the ceiling's 0.40" in cls.sentence
    text = found["text_prompt_class_share"]  # told apart by the prompts in its npz, not by its name
    assert (text.value, text.reference_value) == (90.0, 85.0) and "never seen in training" in text.sentence
    assert "sorcen_knn_vs_pixels" not in found  # no pixel kNN: no reference, no finding


def test_a_probe_below_the_pixels_reads_worse(tmp_path):
    _main_job_like(tmp_path, sorcen_top1=57.6, class_share=0.9)
    probe = {f.id: f for f in derive_findings(collect_metrics(tmp_path), tmp_path)}["sorcen_probe_vs_pixels"]
    assert "26.96 points below" in probe.sentence and "(worse)" in probe.sentence


def test_report_writes_findings_first_and_findings_json(tmp_path):
    _main_job_like(tmp_path, sorcen_top1=85.02, class_share=0.70)
    np.savez(tmp_path / "rec" / "pairs.npz", originals=np.zeros((4, 1, 28, 28), np.uint8),
             reconstructions=np.full((4, 1, 28, 28), 255, np.uint8))
    assert cli.main(["report", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "report" / "findings.json").read_text())
    assert REQUIRED <= {d["id"] for d in data}
    assert all(set(d) >= {"id", "value", "reference_value", "higher_is_better", "sentence"} for d in data)
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.index("<h2>Findings</h2>") < page.index("<h2>Metrics</h2>")
    assert "Reconstructions beside their originals" in page and "Samples, labelled by what was asked" in page
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| probe-sorcen | top1 | 85.02 | higher is better |" in md
    assert "| class-samples | FD_domain | 1.1 | lower is better |" in md
    assert "|  | ceiling_FD_domain | 0.4 | lower is better |" in md  # the result's name once, on its first row
    for png in ("pairs_rec.png", "samples_s_class_npz.png", "samples_s_heldout_npz.png"):
        assert (tmp_path / "report" / png).is_file()


def test_every_metric_of_the_main_job_has_a_direction():
    for key in ("top1", "test_top1", "class_agreement", "class_consistency", "ceiling_class_consistency",
                "FD_domain", "ceiling_FD_domain", "rFD_domain", "psnr", "PSNR", "ssim", "usage", "judge_accuracy"):
        higher, meaning = metric_meaning(key)
        assert higher is not None and meaning, key
    assert metric_meaning("FD_domain")[0] is False and metric_meaning("rFD_domain")[0] is False
    assert metric_meaning("psnr")[0] is True


def test_the_headline_probe_is_the_grid_pooling_and_the_released_pooling_stays_beside_it(tmp_path):
    # "probe-sorcen-grid" sorts after "probe-sorcen-a-released": the headline is chosen by pooling, not file order.
    _main_job_like(tmp_path, sorcen_top1=83.5, class_share=0.7)
    _record(tmp_path / "eval", "probe-sorcen-a-released", {"top1": 81.2},
            {"extractor": "sorcen-released:runs/x/sorcen", "best_lr": 0.1})
    _record(tmp_path / "eval", "probe-sorcen-grid", {"top1": 85.33}, {"extractor": "sorcen-grid:runs/x/sorcen", "best_lr": 0.1})
    found = {f.id: f for f in derive_findings(collect_metrics(tmp_path), tmp_path)}
    assert found["sorcen_probe_vs_pixels"].value == 85.33
    assert "2x2 grid" in found["sorcen_probe_vs_pixels"].sentence
    released = found["probe_sorcen_a_released_vs_pixels"]
    assert released.value == 81.2 and "released pooling" in released.sentence and "(worse)" in released.sentence
    assert found["probe_sorcen_vs_pixels"].value == 83.5  # the every-block mean keeps its own finding


GOALS = {"sorcen_probe_vs_pixels": {"above_reference": True},
         "reptok_reconstruction_class_agreement": {"at_least": 80},
         "class_conditional_class_share": {"at_least": 80},
         "text_prompt_class_share": {"at_least": 80},
         "wall_minutes": {"at_most": 15}}


def test_the_report_says_how_far_each_goal_is(tmp_path, capsys):
    _main_job_like(tmp_path, sorcen_top1=85.32, class_share=0.70)
    _record(tmp_path / "rec", "reptok-reconstruction", {"class_agreement": 0.646}, {})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"out": str(tmp_path), "goals": GOALS}, sort_keys=False))
    (tmp_path / "pipeline.json").write_text(json.dumps({"wall_seconds": 1043, "stages_run": 14, "stages_reused": 0}))
    assert cli.main(["report", str(tmp_path)]) == 0
    goals = {g["id"]: g for g in json.loads((tmp_path / "report" / "goals.json").read_text())}
    assert list(goals) == list(GOALS)
    assert all(set(g) == {"id", "goal", "value", "met", "gap", "sentence"} for g in goals.values())
    rec = goals["reptok_reconstruction_class_agreement"]
    assert (rec["value"], rec["met"], rec["gap"]) == (64.6, False, "15.4 points short")
    assert rec["goal"] == "RepTok reconstructions judged the right class >= 80%"
    probe = goals["sorcen_probe_vs_pixels"]
    assert (probe["value"], probe["met"], probe["gap"]) == (85.32, True, "0.76 above the pixel line")
    assert goals["text_prompt_class_share"]["met"] is True  # 90% of unseen prompts
    wall = goals["wall_minutes"]  # 1043 s = 17.4 minutes
    assert (wall["value"], wall["met"], wall["gap"]) == (17.38, False, "2.4 minutes over")
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.index("<h2>Findings</h2>") < page.index("<h2>Goals</h2>") < page.index("<h2>Metrics</h2>")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| RepTok reconstructions judged the right class >= 80% | 64.60% | not met | 15.4 points short |" in md
    assert isinstance(json.loads((tmp_path / "report" / "findings.json").read_text()), list)  # schema kept

    # a re-run that reused finished stages did not time the whole job
    (tmp_path / "pipeline.json").write_text(json.dumps({"wall_seconds": 30, "stages_run": 1, "stages_reused": 13}))
    assert cli.main(["report", str(tmp_path)]) == 0
    wall = {g["id"]: g for g in json.loads((tmp_path / "report" / "goals.json").read_text())}["wall_minutes"]
    assert (wall["value"], wall["met"]) == (None, None)
    assert wall["gap"] == "not measured: 13 stages were reused from an earlier run"

    # a bad goal is one line naming its key
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"goals": {"wall_minutes": {"at_most": "soon"}}}))
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "goals.wall_minutes" in err[0] and "at_most takes a number" in err[0]

    # no goals: no Goals block, no goals.json (not even one left by an earlier report)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"stages": []}))
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "<h2>Goals</h2>" not in (tmp_path / "report" / "report.html").read_text()
    assert not (tmp_path / "report" / "goals.json").exists()


@pytest.mark.parametrize("goal, message", [
    ({"x": {"at_least": 80, "at_most": 90}}, "goals.x: needs exactly one of"),
    ({"x": {"above": 80}}, "goals.x: needs exactly one of"),
    ({"x": {"above_reference": "yes"}}, "goals.x: above_reference takes true"),
    ({"wall_minutes": {"above_reference": True}}, "goals.wall_minutes: wall time has no reference"),
    ({"x": 80}, "goals.x: needs exactly one of"),
    ([80], "goals: must be a mapping"),
])
def test_bad_goals_are_refused_naming_the_key(goal, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_goals(goal)


def test_a_goal_without_its_finding_reads_not_measured():
    [res] = judge_goals({"sorcen_knn_vs_pixels": {"above_reference": True}}, [])
    assert (res.value, res.met) == (None, None) and res.gap.startswith("not measured")
