"""The pipeline runner: substitution, skipping finished stages, resuming a crashed one; the report."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from unissl import cli
from unissl.errors import UnisslError
from unissl.pipeline import load_pipeline, parse_stages, resolve_pipeline, run_pipeline
from unissl.utils.images import save_grid

CALLS: list[dict] = []


@dataclass
class _Train:
    steps: int = 3
    resume: bool = False


@dataclass
class _FakeConfig:
    out: str = "x"
    value: int = 0
    train: _Train = field(default_factory=_Train)


def _fake_run(cfg: _FakeConfig) -> None:
    CALLS.append({"out": cfg.out, "value": cfg.value, "resume": cfg.train.resume})
    if cfg.value < 0:
        raise RuntimeError("simulated crash")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)))


@pytest.fixture()
def fake_command(monkeypatch):
    mod = types.ModuleType("unissl_fake_cmd")
    mod.Config, mod.run = _FakeConfig, _fake_run
    monkeypatch.setitem(sys.modules, "unissl_fake_cmd", mod)
    monkeypatch.setitem(cli.COMMANDS, ("fake", "step"), cli.Command("unissl_fake_cmd", "test"))
    CALLS.clear()
    return mod


def _stages(value_b: int = 2):
    return parse_stages([
        {"name": "a", "command": "fake step", "config": {"out": "{out}/a", "value": 1}},
        {"name": "b", "command": "fake step", "config": {"out": "{stage:a}/../b", "value": value_b}},
    ])


def test_stages_run_once_and_are_skipped_when_done(tmp_path, fake_command):
    run_pipeline(_stages(), tmp_path, log=lambda *_: None)
    assert [c["value"] for c in CALLS] == [1, 2]
    assert CALLS[1]["out"] == f"{tmp_path}/a/../b"  # {stage:a} resolved to a's output directory
    CALLS.clear()
    run_pipeline(_stages(), tmp_path, log=lambda *_: None)
    assert CALLS == []  # same configs: nothing reruns
    run_pipeline(_stages(value_b=5), tmp_path, log=lambda *_: None)
    assert [c["value"] for c in CALLS] == [5]  # only the changed stage reruns
    rec = json.loads((tmp_path / "stages" / "b.json").read_text())
    assert rec["status"] == "done" and rec["config"]["value"] == 5
    CALLS.clear()
    changed_a = _stages(value_b=5)
    changed_a[0].config["value"] = 7
    run_pipeline(changed_a, tmp_path, log=lambda *_: None)
    assert [c["value"] for c in CALLS] == [7, 5]  # b reads a's output, so a new a re-runs b


def test_single_file_output_is_replaced_on_rerun(tmp_path, fake_command, monkeypatch):
    def write_file(cfg):
        CALLS.append({"out": cfg.out, "value": cfg.value})
        Path(cfg.out).write_text(str(cfg.value))
    monkeypatch.setattr(fake_command, "run", write_file)
    for value in (1, 2):
        run_pipeline(parse_stages([{"name": "f", "command": "fake step",
                                    "config": {"out": "{out}/strip.png", "value": value}}]),
                     tmp_path, log=lambda *_: None)
    assert (tmp_path / "strip.png").read_text() == "2" and len(CALLS) == 2


def test_crashed_stage_is_resumed(tmp_path, fake_command):
    with pytest.raises(RuntimeError):
        run_pipeline(_stages(value_b=-1), tmp_path, log=lambda *_: None)
    assert json.loads((tmp_path / "stages" / "b.json").read_text())["status"] == "started"
    CALLS.clear()
    with pytest.raises(RuntimeError):
        run_pipeline(_stages(value_b=-1), tmp_path, log=lambda *_: None)
    assert CALLS == [{"out": f"{tmp_path}/a/../b", "value": -1, "resume": True}]  # a skipped, b resumed


def test_bad_pipeline_configs_are_rejected(tmp_path, fake_command):
    with pytest.raises(UnisslError, match="stage 'b'"):
        run_pipeline(parse_stages([{"name": "a", "command": "fake step", "config": {"out": "{stage:b}"}}]),
                     tmp_path)
    with pytest.raises(UnisslError, match="unknown command"):
        run_pipeline(parse_stages([{"name": "a", "command": "nope"}]), tmp_path)
    with pytest.raises(UnisslError, match="unknown key"):
        run_pipeline(parse_stages([{"name": "a", "command": "fake step", "config": {"bogus": 1}}]), tmp_path)
    with pytest.raises(UnisslError, match="twice"):
        parse_stages([{"name": "a", "command": "x"}, {"name": "a", "command": "x"}])


def test_report_shows_stages_metrics_curves_and_images(tmp_path, fake_command):
    run_pipeline(_stages(), tmp_path, log=lambda *_: None)
    (tmp_path / "a" / "results").mkdir()
    (tmp_path / "a" / "results" / "linear_probe.json").write_text(json.dumps({"top1": 0.8125}))
    save_grid(torch.rand(4, 1, 8, 8), tmp_path / "a" / "images" / "samples_step10.png")
    save_grid(torch.rand(4, 1, 8, 8), tmp_path / "a" / "images" / "samples_step20.png")
    assert cli.main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    md = (tmp_path / "report" / "report.md").read_text()
    assert "0.8125" in page and "0.8125" in md
    assert page.count("data:image/png;base64,") == 3  # curves of a and of b, plus the newest samples grid
    assert "samples_step20.png" in md and "samples_step10.png" not in md  # newest of a series only
    assert "| a | fake step | done |" in md


def test_report_inlines_the_corner_of_a_large_grid(tmp_path):
    import base64
    import io
    import re

    from PIL import Image

    from unissl.report import MAX_INLINE_PX

    (tmp_path / "s").mkdir()
    big = torch.rand(MAX_INLINE_PX // 4 + 100, MAX_INLINE_PX // 16)  # 1/4 x 1/16 of the grid in 4x4 blocks
    pixels = (big.repeat_interleave(4, 0).repeat_interleave(4, 1).T * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "s" / "big.png")  # (MAX/4 x 4) x (MAX/16 x 4) = wide, short
    Image.fromarray(pixels[:, :64]).save(tmp_path / "s" / "small.png")
    assert cli.main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    inlined = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u))))
               for u in re.findall(r"src='data:image/png;base64,([^']+)'", page)]
    by_width = {a.shape[1]: a for a in inlined}
    assert sorted(by_width) == [64, MAX_INLINE_PX] and len(inlined) == 2
    assert np.array_equal(by_width[64], pixels[:, :64])
    assert np.array_equal(by_width[MAX_INLINE_PX], pixels[:, :MAX_INLINE_PX])  # a crop, not a resize
    assert page.count("full grid</a>") == 1 and "href='../s/big.png'" in page


def test_report_tells_same_named_results_apart(tmp_path):
    for run, value in (("rec", 0.5), ("rec-random", 0.25)):
        _write_result(str(tmp_path / run), "reptok-reconstruction", value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").write_text(json.dumps({"name": "reptok-reconstruction", "PSNR": 13.5}))
    _write_result(str(tmp_path / "eval"), "unique", 0.75)
    assert cli.main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| reptok-reconstruction (rec) | top1 | 0.5 | higher is better |" in md
    assert "| reptok-reconstruction (rec-random) | top1 | 0.25 | higher is better |" in md
    assert "| reptok-reconstruction (other) | PSNR | 13.5 | higher is better | reconstruction fidelity" in md
    assert "| unique | top1 | 0.75 |" in md  # a name that occurs once keeps its plain label


def test_report_puts_generation_beside_its_ceilings(tmp_path):
    res = tmp_path / "eval" / "results"
    res.mkdir(parents=True)
    (res / "gfd.json").write_text(json.dumps({"name": "gfd", "metrics": {
        "FD_domain": 1.23, "class_consistency": 0.775, "ceiling_FD_domain": 0.41,
        "ceiling_class_consistency": 0.791, "judge_accuracy": 0.9067}}))
    _write_result(str(tmp_path / "eval"), "probe", 0.5)  # no ceilings: not in that table
    assert cli.main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Generation against its ceilings" in md
    assert "| gfd | FD_domain=1.23 | 0.41 | 77.5% | 79.1% | 90.7% |" in md
    assert "| probe | - |" not in md


def test_report_plots_the_linear_probe_against_epochs(tmp_path):
    res = tmp_path / "eval" / "results"
    res.mkdir(parents=True)
    for name, top1 in (("sorcen", (70.0, 74.5)), ("mage", (68.0, 71.0))):
        run = tmp_path / name
        run.mkdir()
        (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "epoch": s / 100, "loss": 1.0}) + "\n"
                                               for s in (50, 100, 150, 200)))
        for e, t in zip((1, 2), top1):
            (res / f"probe-{name}-e{e}.json").write_text(json.dumps({
                "name": f"probe-{name}-e{e}", "metrics": {"top1": t},
                "extra": {"extractor": f"sorcen:{run}/checkpoints/step_{100 * e:07d}"}}))
    (res / "probe-pixels.json").write_text(json.dumps({"name": "probe-pixels", "metrics": {"top1": 84.6},
                                                       "extra": {"extractor": "pixels"}}))
    assert cli.main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Linear probe vs epoch" in md
    assert "| sorcen | 1: 70.00, 2: 74.50 |" in md and "| mage | 1: 68.00, 2: 71.00 |" in md
    assert (tmp_path / "report" / "probe_vs_epoch.png").is_file()


def _write_result(out: str, name: str, value: float) -> None:
    res = Path(out) / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"{name}.json").write_text(json.dumps({"name": name, "metrics": {"top1": value},
                                                  "extra": {"num_images": 7}}))


def test_multi_seed_pipeline_shares_stages_and_summarizes(tmp_path, fake_command, monkeypatch):
    from unissl.study import summarize

    def run(cfg):  # a per-seed "evaluation": its result depends on the value it was given
        _fake_run(cfg)
        _write_result(cfg.out, "probe", 10.0 * cfg.value)

    monkeypatch.setattr(fake_command, "run", run)
    stages = parse_stages([
        {"name": "data", "command": "fake step", "shared": True, "config": {"out": "{out}/data", "value": 1}},
        {"name": "model", "command": "fake step", "config": {"out": "{out}/model", "value": "{seed}"}},
        {"name": "use", "command": "fake step", "config": {"out": "{stage:data}/../use-{seed}", "value": 0}},
    ])
    records = run_pipeline(stages, tmp_path, seeds=[1, 2, 6], log=lambda *_: None)
    # the shared stage ran once, in the root; the others once per seed, each in its own directory
    outs = [c["out"] for c in CALLS]
    assert outs.count(str(tmp_path / "data")) == 1
    for s in (1, 2, 6):
        assert str(tmp_path / f"seed{s}" / "model") in outs
        assert (tmp_path / f"seed{s}" / "stages" / "model.json").is_file()
        assert records[f"seed{s}/model"]["status"] == "done"
    assert str(tmp_path / "data" / ".." / "use-2") in outs  # {stage:data} resolves inside a seed too
    assert "data" in records and "seed1/data" not in records
    CALLS.clear()
    run_pipeline(stages, tmp_path, seeds=[1, 2, 6], log=lambda *_: None)
    assert CALLS == []  # everything done: a re-run skips all of it

    summary = summarize(tmp_path)
    row = next(r for r in summary["rows"] if r["source"] == "probe" and r["metric"] == "top1")
    assert row["n"] == 3 and row["values"] == {"1": 10.0, "2": 20.0, "6": 60.0}
    assert row["mean"] == pytest.approx(30.0)
    assert row["std"] == pytest.approx(float(torch.tensor([10.0, 20.0, 60.0]).std()))  # sample std, ddof=1
    assert not any(r["metric"] == "num_images" for r in summary["rows"])  # settings are not metrics
    md = (tmp_path / "study.md").read_text()
    assert "| probe | top1 | 30 ± 26.46 | 3 | 10 | 20 | 60 |" in md


def test_shared_stage_cannot_read_a_per_seed_stage(tmp_path, fake_command):
    stages = parse_stages([
        {"name": "model", "command": "fake step", "config": {"out": "{out}/model"}},
        {"name": "data", "command": "fake step", "shared": True, "config": {"out": "{stage:model}/x"}},
    ])
    with pytest.raises(UnisslError, match="shared stage 'data' reads per-seed"):
        run_pipeline(stages, tmp_path, seeds=[0, 1])
    with pytest.raises(UnisslError, match="'shared' must be true or false"):
        parse_stages([{"name": "a", "command": "fake step", "shared": "yes"}])


def test_summarize_needs_seed_directories(tmp_path):
    from unissl.study import summarize

    with pytest.raises(UnisslError, match="no seed<N> directories"):
        summarize(tmp_path)


def test_report_of_a_multi_seed_study(tmp_path, fake_command, monkeypatch):
    from unissl.report import write_report
    from unissl.study import summarize

    def run(cfg):
        _fake_run(cfg)
        _write_result(cfg.out, "probe", float(cfg.value))

    monkeypatch.setattr(fake_command, "run", run)
    stages = parse_stages([{"name": "model", "command": "fake step", "config": {"out": "{out}/m", "value": "{seed}"}}])
    run_pipeline(stages, tmp_path, seeds=[0, 4], log=lambda *_: None)
    summarize(tmp_path)
    _, md = write_report(tmp_path)
    text = md.read_text()
    assert "## Across seeds" in text and "| probe | top1 | 2 ± 2.828 | 2 |" in text
    assert "seed0/model" in text and "seed4/model" in text  # per-seed stages are listed
    assert text.index("## Across seeds") < text.index("## Stages")  # the study's answer comes first


def test_stage_names_with_dots_are_referenced_and_odd_names_refused(tmp_path, fake_command):
    stages = parse_stages([
        {"name": "tok-l0.1", "command": "fake step", "config": {"out": "{out}/t"}},
        {"name": "use", "command": "fake step", "config": {"out": "{stage:tok-l0.1}/u"}},
    ])
    run_pipeline(stages, tmp_path, log=lambda *_: None)
    assert CALLS[-1]["out"] == str(tmp_path / "t" / "u")
    with pytest.raises(UnisslError, match="may only use letters"):
        parse_stages([{"name": "a b", "command": "fake step"}])


def test_study_keeps_same_named_results_apart_and_skips_settings(tmp_path):
    from unissl.study import seed_metrics

    seed = tmp_path / "seed0"
    for d, v in (("rec-a", 1.0), ("rec-b", 2.0)):  # two reconstructions recording the same result name
        _write_result(str(seed / d), "recon", v)
        (seed / d / "metrics.json").write_text(json.dumps({"top1": v, "steps": 50}))  # the same numbers, flat
    (seed / "other").mkdir()
    (seed / "other" / "metrics.json").write_text(json.dumps({"rFD": 3.5, "num_images": 1000}))
    m = seed_metrics(seed)
    assert m == {("rec-a recon", "top1"): 1.0, ("rec-b recon", "top1"): 2.0, ("other/metrics.json", "rFD"): 3.5}


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
def test_shipped_pipeline_configs_validate(tmp_path, capsys, name):
    """Every stage of the pipelines in configs/ resolves and type-checks against its command (a dry run)."""
    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    assert cli.main(["pipeline", "--config", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert not (tmp_path / "run").exists()  # a dry run creates nothing
    out = capsys.readouterr().out
    stages = parse_stages(load_pipeline(path)["stages"])
    assert out.count("would run") >= len(stages)  # every stage (once per seed in a study)


def test_a_parallel_study_launches_one_encoder_row_on_every_seed_before_the_next(tmp_path):
    """--jobs N with seeds: shared stages first, then each training stage with everything descending from it,
    seed by seed, in file order; a stage reading nothing per-seed is a row of its own. A study cut short
    then holds whole rows (an encoder evaluated on every seed) rather than seed 0 of everything."""
    from unissl.pipeline import _units

    def knn(name: str, run_dir: str, **extra) -> dict:  # any command will do: only the paths are read
        return {"name": name, "command": "eval knn", "output_key": "run_dir", **extra,
                "config": {"extractor": "pixels", "dataset": "digits", "run_dir": run_dir}}

    stages = parse_stages([
        knn("tokens", "{out}/tokens", shared=True), knn("pixels", "{out}/px"),
        knn("enc-a", "{stage:tokens}/../a{seed}"), knn("enc-b", "{stage:tokens}/../b{seed}"),
        knn("probe-a", "{stage:enc-a}/probe"), knn("fd-a", "{stage:probe-a}/fd"), knn("probe-b", "{stage:enc-b}/probe"),
    ])
    units = _units(stages, tmp_path, 0, [0, 1])
    assert list(units) == [
        "tokens", "seed0/pixels", "seed1/pixels",
        "seed0/enc-a", "seed0/probe-a", "seed0/fd-a", "seed1/enc-a", "seed1/probe-a", "seed1/fd-a",
        "seed0/enc-b", "seed0/probe-b", "seed1/enc-b", "seed1/probe-b"]
    assert "seed1/probe-a" in units["seed1/fd-a"].deps and units["seed1/enc-a"].deps == {"tokens"}
    # the interleaved log names the seed of each stage
    from unissl.pipeline import _keyed

    lines: list[str] = []
    _keyed(lines.append, "seed1/probe-a")("[pipeline] probe-a: done in 1.0 s")
    _keyed(lines.append, "tokens")("[pipeline] tokens: done in 1.0 s")
    assert lines == ["[pipeline] seed1/probe-a: done in 1.0 s", "[pipeline] tokens: done in 1.0 s"]
    # without seeds: the same rule in one scope
    assert list(_units(stages, tmp_path / "one", 0, None)) == [
        "tokens", "pixels", "enc-a", "probe-a", "fd-a", "enc-b", "probe-b"]


@pytest.mark.slow
def test_parallel_stages_run_in_their_own_processes_and_wait_for_what_they_read(tmp_path):
    """--jobs 2: two independent evaluations start together (each a `unissl` process, one thread, its
    own log); a stage that reads one of them through a path (not a {stage:} reference) waits for it."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "stages": [
        {"name": "a", "command": "eval knn", "output_key": "run_dir",
         "config": {"extractor": "pixels", "dataset": "digits", "run_dir": "{out}/a"}},
        {"name": "b", "command": "eval knn", "output_key": "run_dir",
         "config": {"extractor": "pixels:4", "dataset": "digits", "run_dir": "{out}/b"}},
        {"name": "c", "command": "report", "output_key": "run_dir", "config": {"run_dir": "{out}/a"}},
    ]}))
    assert cli.main(["pipeline", "--config", str(cfg), "--jobs", "2", "--no-report"]) == 0
    rec = {n: json.loads((tmp_path / "run" / "stages" / f"{n}.json").read_text()) for n in "abc"}
    assert all(r["status"] == "done" for r in rec.values())
    assert rec["b"]["started_at"] < rec["a"]["finished_at"]  # launched together
    assert rec["c"]["started_at"] >= rec["a"]["finished_at"]  # waited for the directory it reads
    assert "knn" in (tmp_path / "run" / "stages" / "a.log").read_text()
    assert (tmp_path / "run" / "a" / "report" / "report.md").is_file()
    # a second run skips everything; a failing stage is one line naming its log
    assert cli.main(["pipeline", "--config", str(cfg), "--jobs", "2", "--no-report"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"out": str(tmp_path / "bad"), "stages": [
        {"name": "x", "command": "eval knn", "output_key": "run_dir",
         "config": {"extractor": "sorcen:/does/not/exist", "dataset": "digits", "run_dir": "{out}/x"}}]}))
    assert cli.main(["pipeline", "--config", str(bad), "--jobs", "2", "--no-report"]) == 2


def test_a_second_pipeline_on_the_same_directory_is_refused(tmp_path, fake_command, capsys):
    import subprocess

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / ".pipeline.lock").write_text(f"{holder.pid}\n")
        with pytest.raises(UnisslError, match=rf"in use by another `unissl pipeline` \(pid {holder.pid}"):
            run_pipeline(_stages(), out, log=lambda m: None)
        assert CALLS == []  # nothing ran
        # through the command line: exit 2 and one line naming the holder
        cfg = tmp_path / "p.yaml"
        cfg.write_text(yaml.safe_dump({"out": str(out), "stages": [
            {"name": "a", "command": "fake step", "config": {"out": "{out}/a"}}]}))
        capsys.readouterr()
        assert cli.main(["pipeline", "--config", str(cfg)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unissl: error:") and f"pid {holder.pid}" in err[0]
        assert CALLS == []
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock is taken over, and released at the end
    run_pipeline(_stages(), out, log=lambda m: None)
    assert len(CALLS) == 2 and not (out / ".pipeline.lock").exists()


def test_a_new_command_option_with_a_default_does_not_rerun_finished_stages(tmp_path, fake_command):
    """Upgrading unissl (a command gains an option) must not re-run, and so delete, finished stages."""
    out = tmp_path / "run"
    run_pipeline(_stages(), out, log=lambda m: None)
    assert len(CALLS) == 2

    @dataclass
    class _Upgraded(_FakeConfig):
        new_option: float = 0.5

    fake_command.Config = _Upgraded
    logs: list[str] = []
    run_pipeline(_stages(), out, log=logs.append)
    assert len(CALLS) == 2 and all("skipped" in m for m in logs), logs
    run_pipeline(_stages(value_b=3), out, log=logs.append)  # a setting the pipeline gives does re-run
    assert len(CALLS) == 3


def test_records_of_another_unissl_version_are_adopted_not_rerun(tmp_path, fake_command):
    """A finished stage recorded under another hash scheme (an older unissl) with the same settings is
    adopted (its record moves to the new hash); a changed setting or a re-run upstream stage still re-runs."""
    out = tmp_path / "run"
    run_pipeline(_stages(), out, log=lambda m: None)
    for name in ("a", "b"):
        rec = json.loads((out / "stages" / f"{name}.json").read_text())
        rec["hash"] = "old-scheme-" + name
        (out / "stages" / f"{name}.json").write_text(json.dumps(rec))
    logs: list[str] = []
    run_pipeline(_stages(), out, log=logs.append)
    assert len(CALLS) == 2 and all("skipped" in m for m in logs), logs
    assert not json.loads((out / "stages" / "a.json").read_text())["hash"].startswith("old-scheme")
    rec = json.loads((out / "stages" / "a.json").read_text())
    rec["hash"] = "old-scheme-a"
    (out / "stages" / "a.json").write_text(json.dumps(rec))
    run_pipeline(_stages(value_b=5), out, log=lambda m: None)  # b's setting changed: b re-runs, a is adopted
    assert [c["value"] for c in CALLS[2:]] == [5]


@pytest.mark.slow
def test_sigterm_to_a_parallel_pipeline_stops_its_stage_processes(tmp_path):
    import os
    import signal
    import subprocess
    import time

    cfg = tmp_path / "p.yaml"
    run = tmp_path / "run"
    cfg.write_text(yaml.safe_dump({"out": str(run), "stages": [
        {"name": "long", "command": "tokenizer train", "output_key": "train.run_dir",
         "config": {"dataset": "digits", "train": {"run_dir": "{out}/vq", "steps": 100000, "progress": False,
                                                   "tensorboard": False}}}]}))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    parent = subprocess.Popen([sys.executable, "-m", "unissl", "pipeline", "--config", str(cfg), "--jobs", "2",
                               "--no-report"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180  # a loaded machine may take a while to import and start the stage
        while time.monotonic() < deadline and not (run / "vq" / "log.jsonl").is_file():
            time.sleep(0.5)  # the stage's own process is training
        assert (run / "vq" / "log.jsonl").is_file()
    finally:  # a failed wait must not leave a 100000-step training behind
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=60)
    time.sleep(1)
    alive = subprocess.run(["pgrep", "-f", str(run / "stages")], capture_output=True, text=True).stdout.split()
    assert alive == [] and not (run / ".pipeline.lock").exists()


def test_a_setting_through_a_stage_and_through_flags_resolves_the_same(tmp_path) -> None:
    """`knn.k` and `knn.temperature` of `eval knn` set in a pipeline stage and on the command line: the same
    resolved config (the stage record's) and the same result."""
    from unissl.commands import eval_knn
    from unissl.config import parse_config, to_dict

    flags = ["--extractor", "pixels", "--dataset", "digits", "--knn.k", "7", "--knn.temperature", "0.2",
             "--run-dir", str(tmp_path / "cli"), "--name", "knn"]
    assert cli.main(["eval", "knn", *flags]) == 0
    spec = tmp_path / "p.yaml"
    spec.write_text(yaml.safe_dump({"out": str(tmp_path / "pipe"), "stages": [
        {"name": "knn", "command": "eval knn", "config": {"extractor": "pixels", "dataset": "digits",
                                                          "knn": {"k": 7, "temperature": 0.2}, "run_dir": "{out}/eval",
                                                          "name": "knn"}}]}))
    assert cli.main(["pipeline", "--config", str(spec)]) == 0
    record = json.loads((tmp_path / "pipe" / "stages" / "knn.json").read_text())
    from_flags = to_dict(parse_config(eval_knn.Config, flags))
    stage = dict(record["config"])
    assert stage.pop("run_dir") == str(tmp_path / "pipe" / "eval") and from_flags.pop("run_dir") == str(tmp_path / "cli")
    assert stage == from_flags and stage["knn"] == {"k": 7, "temperature": 0.2}
    cli_result = json.loads((tmp_path / "cli" / "results" / "knn.json").read_text())
    stage_result = json.loads((tmp_path / "pipe" / "eval" / "results" / "knn.json").read_text())
    assert cli_result["metrics"] == stage_result["metrics"]


def test_one_number_formatter_for_every_table() -> None:
    """results.md, study.md and the report format numbers and escape cells through one helper."""
    from unissl.utils.format import format_number, markdown_row, markdown_table

    assert [format_number(v) for v in (72.88333, 0.000123456, 123456.7, 0.0, True, 3, [0.5, 2.0], float("nan"))] == \
        ["72.8833", "0.0001235", "1.235e+05", "0", "True", "3", "0.5, 2", "nan"]
    assert [format_number(v, 4) for v in (72.88333, 12345.6, [0.5, 2.25])] == ["72.88", "12346", "0.5, 2.25"]
    assert markdown_row(["a|b", 1.0, "x\ny"]) == "| a\\|b | 1 | x y |"
    assert markdown_table(["k", "v"], [["lr", 0.001]]) == ["| k | v |", "|---|---|", "| lr | 0.001 |"]


def test_report_reads_records_not_file_name_guesses(tmp_path) -> None:
    """Only results/<name>.json records (and the fixed legacy names in a directory without results/) are
    metrics: a JSON that merely has "eval" or "metrics" in its name is not."""
    from unissl.report import collect_metrics

    _write_result(str(tmp_path / "run"), "probe", 0.5)
    (tmp_path / "run" / "eval_notes.json").write_text(json.dumps({"top1": 99.0}))
    (tmp_path / "run" / "my_metrics.json").write_text(json.dumps({"top1": 98.0}))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tokenizer_eval.json").write_text(json.dumps({"psnr": 24.0}))
    assert [rel for rel, _ in collect_metrics(tmp_path)] == ["old/tokenizer_eval.json", "run/results/probe.json"]
    # a new run keeps the legacy flat file beside its record: the record is read, once
    (tmp_path / "new" / "results").mkdir(parents=True)
    for f in (tmp_path / "new" / "tokenizer_eval.json", tmp_path / "new" / "results" / "tokenizer_eval.json"):
        f.write_text(json.dumps({"name": "tokenizer_eval", "metrics": {"psnr": 25.0}}))
    assert [rel for rel, _ in collect_metrics(tmp_path)] == ["new/results/tokenizer_eval.json",
                                                             "old/tokenizer_eval.json", "run/results/probe.json"]


# ------------------------------------------------------------------------------------ derived pipeline files
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _dry_hashes(stages, out: Path, seeds=None) -> dict[str, str]:
    """Every unit's hash from a dry run (``{"seed0/probe-sorcen": "3fd48cd87ffa", ...}``)."""
    lines: list[str] = []
    run_pipeline(parse_stages(stages), out, seeds=seeds, dry_run=True, log=lines.append)
    found = dict(re.findall(r"\[pipeline\] (\S+): would run `[^`]*` \((\w+)\)", "\n".join(lines)))
    assert len(found) == len(lines)
    return found


def test_the_6_epoch_overlay_resolves_to_the_full_file_it_replaced(tmp_path):
    """configs/fashion-mnist-study-6ep.yaml (an overlay: extends, out, one var) gives the 28 stages of the full
    file it replaced, in order, with the same configs and so the same hashes: its runs still resume."""
    full = yaml.safe_load((Path(__file__).parent / "fixtures" / "pipelines" / "fashion-mnist-study-6ep-full.yaml")
                          .read_text())
    overlay = load_pipeline(CONFIGS / "fashion-mnist-study-6ep.yaml")
    assert len((CONFIGS / "fashion-mnist-study-6ep.yaml").read_text().split("\nextends:")[1].splitlines()) <= 3
    assert overlay["stages"] == full["stages"] and len(full["stages"]) == 28
    assert (overlay["out"], overlay["seeds"]) == (full["out"], full["seeds"])
    hashes = _dry_hashes(overlay["stages"], tmp_path, seeds=full["seeds"])
    assert hashes == _dry_hashes(full["stages"], tmp_path, seeds=full["seeds"]) and len(hashes) == 1 + 27 * 3
    # the base it extends differs in the shared schedule only
    base = load_pipeline(CONFIGS / "fashion-mnist-study-fast.yaml")["stages"]
    differ = [b["name"] for b, o in zip(base, overlay["stages"]) if b != o]
    assert differ == ["sorcen", "mage", "mage-c", "mage-c0"]
    assert {b["config"]["train"]["epochs"] for b in base if b["name"] in differ} == {4.5}
    assert {o["config"]["train"]["epochs"] for o in overlay["stages"] if o["name"] in differ} == {6}


def test_a_grid_expands_every_template_for_every_combination(tmp_path):
    """A grid item: every template for every combination of its axes (first axis outermost), the values filled
    into names and configs ({stage:{encoder}} too), a whole-string {var} keeping its type, a mapping value read
    field by field; a {name} that is neither a var nor an axis is refused."""
    spec = yaml.safe_load("""
        vars: {epochs: 4.5, data: digits}
        stages:
          - {name: enc-a, command: fake step, config: {out: "{out}/a"}}
          - {name: enc-b, command: fake step, config: {out: "{out}/b"}}
          - grid: {encoder: [a, b], arm: [{tag: x, lr: 0.1}, {tag: y, lr: 0.2}]}
            stages:
              - {name: "probe-{encoder}-{arm.tag}", command: fake step,
                 config: {out: "{stage:enc-{encoder}}/probe-{arm.tag}", value: "{arm.lr}", epochs: "{epochs}",
                          data: "{data}:{encoder}"}}
              - {name: "knn-{encoder}-{arm.tag}", command: fake step, config: {out: "{out}/knn-{encoder}-{arm.tag}"}}
    """)
    stages = resolve_pipeline(spec)["stages"]
    assert [s["name"] for s in stages] == [
        "enc-a", "enc-b", "probe-a-x", "knn-a-x", "probe-a-y", "knn-a-y", "probe-b-x", "knn-b-x", "probe-b-y",
        "knn-b-y"]
    assert stages[6]["config"] == {"out": "{stage:enc-b}/probe-x", "value": 0.1, "epochs": 4.5, "data": "digits:b"}
    assert isinstance(stages[6]["config"]["epochs"], float)
    assert stages[5]["config"] == {"out": "{out}/knn-a-y"}
    with pytest.raises(UnisslError, match=r"uses \{encodr\}, which is neither a var"):
        resolve_pipeline({"stages": [{"grid": {"encoder": ["a"]}, "stages": [
            {"name": "p-{encoder}", "command": "fake step", "config": {"out": "{out}/{encodr}"}}]}]})
    with pytest.raises(UnisslError, match="grid axis 'encoder' needs a non-empty list"):
        resolve_pipeline({"stages": [{"grid": {"encoder": []}, "stages": []}]})
    with pytest.raises(UnisslError, match=r"var name 'out' must be an identifier other than"):
        resolve_pipeline({"vars": {"out": 1}, "stages": []})


def test_an_overlay_overrides_stages_by_name_and_appends_new_ones(tmp_path, fake_command, capsys):
    """extends: a file relative to the overlay; top-level values replace, vars merge, a stage with a known name
    merges its config into the base's, a new one is appended; flags win over both files; the run directory's
    config.yaml holds the resolved stages."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "base.yaml").write_text(yaml.safe_dump({
        "out": str(tmp_path / "base-run"), "vars": {"v": 1, "w": 2},
        "stages": [{"name": "a", "command": "fake step", "config": {"out": "{out}/a", "value": "{v}",
                                                                    "train": {"steps": "{w}"}}},
                   {"name": "b", "command": "fake step", "config": {"out": "{stage:a}/../b", "value": 5}}]}))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"extends": "base/base.yaml", "out": str(tmp_path / "run"), "vars": {"v": 7},
                                       "stages": [{"name": "b", "config": {"value": 9}},
                                                  {"name": "c", "command": "fake step", "config": {"out": "{out}/c"}}]}))
    plain = load_pipeline(overlay)
    assert plain["out"] == str(tmp_path / "run")
    assert plain["stages"] == [
        {"name": "a", "command": "fake step", "config": {"out": "{out}/a", "value": 7, "train": {"steps": 2}}},
        {"name": "b", "command": "fake step", "config": {"out": "{stage:a}/../b", "value": 9}},
        {"name": "c", "command": "fake step", "config": {"out": "{out}/c"}}]
    assert cli.main(["pipeline", "--config", str(overlay), "--out", str(tmp_path / "flag"), "--no-report"]) == 0
    assert [c["value"] for c in CALLS] == [7, 9, 0] and CALLS[0]["out"] == str(tmp_path / "flag" / "a")
    saved = yaml.safe_load((tmp_path / "flag" / "config.yaml").read_text())
    assert saved["stages"] == plain["stages"] and not saved["extends"] and not saved["vars"]
    # a missing base, a loop, a run option in a base: one line each
    capsys.readouterr()
    for bad, message in [({"extends": "nope.yaml", "stages": []}, "extends 'nope.yaml', which is not a file"),
                         ({"extends": "overlay.yaml"}, "extends itself")]:
        (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(bad))
        assert cli.main(["pipeline", "--config", str(tmp_path / "overlay.yaml"), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    (tmp_path / "base" / "base.yaml").write_text(yaml.safe_dump({"jobs": 2, "stages": []}))
    with pytest.raises(UnisslError, match="keys \\['jobs'\\] a base pipeline file cannot hold"):
        resolve_pipeline({"extends": "base/base.yaml"}, tmp_path)


def _script_stages(tmp_path: Path) -> list[dict]:
    """Three script stages: two independent, one reading both (a file each; one prints a progress bar)."""
    script = tmp_path / "step.py"
    script.write_text(
        "import sys, pathlib\n"
        "from unissl.utils.progress import progress\n"
        "out, *reads = sys.argv[1:]\n"
        "text = ''.join(pathlib.Path(r).read_text() for r in reads) + pathlib.Path(out).stem\n"
        "for _ in progress(range(50), desc='work ' + 'x' * 400): pass\n"
        "print('wrote', out)\n"
        "pathlib.Path(out).write_text(text)\n")
    return [{"name": "a", "script": str(script), "args": ["{out}/a.txt"], "output": "{out}/a.txt"},
            {"name": "b", "script": str(script), "args": "{out}/b.txt", "output": "{out}/b.txt"},
            {"name": "c", "script": str(script), "args": ["{out}/c.txt", "{out}/a.txt", "{out}/b.txt"],
             "output": "{out}/c.txt"}]


def test_jobs_1_and_jobs_2_run_the_same_stages_and_keep_every_log(tmp_path):
    """One scheduler: --jobs 1 and --jobs 2 run the same stages (same records, hashes and outputs), each with its
    output in stages/<name>.log; a second run skips them all."""
    stages = parse_stages(_script_stages(tmp_path))
    records = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        logs: list[str] = []
        records[jobs] = run_pipeline(stages, out, jobs=jobs, log=logs.append)
        assert (out / "c.txt").read_text() == "abc"
        for name in "abc":
            log = (out / "stages" / f"{name}.log").read_text()
            assert f"wrote {out / name}.txt" in log
        assert sum("running" in m for m in logs) == 3
        again: list[str] = []
        run_pipeline(stages, out, jobs=jobs, log=again.append)
        assert len(again) == 3 and all("skipped" in m for m in again)
    assert {k: r["status"] for k, r in records[1].items()} == {k: r["status"] for k, r in records[2].items()}
    assert set(records[1]) == {"a", "b", "c"} and all(r["status"] == "done" for r in records[2].values())
    # the configs differ only in the run directory
    assert ({k: json.dumps(r["config"]).replace("jobs1", "J") for k, r in records[1].items()}
            == {k: json.dumps(r["config"]).replace("jobs2", "J") for k, r in records[2].items()})


def test_a_stage_run_in_process_keeps_its_log(tmp_path, fake_command, monkeypatch, capsys):
    """--jobs 1 (in this process): what a stage prints reaches the console and stages/<name>.log; of a bar
    redrawn on a terminal the log keeps the last state, without carriage returns."""
    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def run(cfg):
        print(f"stage {cfg.out} starts")
        sys.stderr.write("bar 1/3\rbar 2/3\rbar 3/3\n")
        _fake_run(cfg)

    monkeypatch.setattr(fake_command, "run", run)
    console = _Terminal()
    monkeypatch.setattr(sys, "stderr", console)
    run_pipeline(_stages(), tmp_path, log=lambda m: None)
    log = (tmp_path / "stages" / "a.log").read_text()
    assert log == f"stage {tmp_path / 'a'} starts\nbar 3/3\n"
    assert "bar 1/3\rbar 2/3\rbar 3/3" in console.getvalue()  # the terminal saw the bar
    assert f"stage {tmp_path / 'a'} starts" in capsys.readouterr().out


def test_progress_off_a_terminal_is_short_lines_and_one_switch_silences_it(tmp_path, monkeypatch):
    """Off a terminal a long loop reports in a few short lines (no carriage return, none over 300 characters);
    UNISSL_PROGRESS=0 or TQDM_DISABLE=1 silences every report; on a terminal it is a tqdm bar."""
    import subprocess

    stages = _script_stages(tmp_path)[:1]
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "stages": stages}))
    env = {**os.environ, "UNISSL_PROGRESS": "", "TQDM_DISABLE": ""}
    got = subprocess.run([sys.executable, "-m", "unissl", "pipeline", "--config", str(cfg), "--no-report"],
                         capture_output=True, text=True, env=env)
    assert got.returncode == 0, got.stderr
    text = got.stdout + got.stderr
    assert "\r" not in text and max(len(line) for line in text.splitlines()) <= 300
    assert "work xxx" in text and "(100%)" in text  # the loop's closing line, cut short
    log = (tmp_path / "run" / "stages" / "a.log").read_text()
    assert "\r" not in log and max(len(line) for line in log.splitlines()) <= 300 and "(100%)" in log
    quiet = subprocess.run([sys.executable, "-m", "unissl", "pipeline", "--config", str(cfg), "--no-report",
                            "--force", "a"], capture_output=True, text=True, env={**env, "TQDM_DISABLE": "1"})
    assert quiet.returncode == 0 and "work x" not in quiet.stdout + quiet.stderr
    assert "work x" not in (tmp_path / "run" / "stages" / "a.log").read_text()
    from tqdm import tqdm

    from unissl.utils import progress as P

    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("UNISSL_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert isinstance(P.progress(total=3, file=_Terminal()), tqdm)
    assert isinstance(P.progress(total=3, file=io.StringIO()), P.LineProgress)
    lines = io.StringIO()
    monkeypatch.setattr(P, "MARK_MIN_S", 0.0)
    bar = P.progress(total=1000, desc="train", file=lines)
    for _ in range(1000):
        bar.update()
        bar.set_postfix(loss="1.0")
    bar.close()
    assert len(lines.getvalue().splitlines()) == 10  # 10%, ..., 90% and the end
    for switch in ("UNISSL_PROGRESS", "TQDM_DISABLE"):
        with monkeypatch.context() as m:
            m.setenv(switch, "0" if switch == "UNISSL_PROGRESS" else "1")
            terminal = _Terminal()
            for _ in P.progress(range(1000), desc="train", file=terminal):
                pass
            assert P.progress_mode(terminal) == "off" and terminal.getvalue() == ""


def test_a_library_loading_bar_stays_out_of_a_log(capsys):
    """transformers' own "Loading weights" bar (the frozen MiniLM of text conditioning) follows the same rule:
    off a terminal it writes nothing, and the library's setting is restored afterwards."""
    transformers = pytest.importorskip("transformers")
    from unissl.methods.reptok.text_encoder import FrozenTextEncoder

    FrozenTextEncoder()
    err = capsys.readouterr().err
    assert "\r" not in err and "Loading weights" not in err
    assert transformers.utils.logging.is_progress_bar_enabled()


# ---------------------------------------------------------------------------------------------- nproc: torchrun stages
def test_nproc_is_checked_before_anything_runs(tmp_path, fake_command):
    """`nproc` is a whole number >= 1, above 1 only on a training command: one line naming the stage."""
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(UnisslError, match=r"stage 'a': 'nproc' must be a whole number") as err:
            parse_stages([{"name": "a", "command": "fake step", "nproc": bad, "config": {"out": "{out}/a"}}])
        assert "\n" not in str(err.value)
    knn = {"name": "knn", "command": "eval knn", "nproc": 2, "output_key": "run_dir",
           "config": {"extractor": "pixels", "dataset": "digits", "run_dir": "{out}/knn"}}
    first = {"name": "a", "command": "fake step", "config": {"out": "{out}/a"}}
    with pytest.raises(UnisslError, match=r"^pipeline: stage knn: nproc applies to training commands only") as err:
        run_pipeline(parse_stages([first, knn]), tmp_path, log=lambda m: None)
    assert "\n" not in str(err.value) and CALLS == [] and not (tmp_path / "stages" / "a.json").exists()
    with pytest.raises(UnisslError, match=r"stage 's': nproc applies to training commands only"):
        parse_stages([{"name": "s", "script": "x.py", "nproc": 2}])
    parse_stages([{**knn, "nproc": 1}, {"name": "s", "script": "x.py", "nproc": 1}])  # the default is fine anywhere
    # through the command line: exit 2, one line
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "cli"), "stages": [knn]}))
    assert cli.main(["pipeline", "--config", str(cfg), "--dry-run"]) == 2


def test_nproc_1_keeps_the_hash_and_another_nproc_is_another_stage(tmp_path, fake_command):
    """A stage without `nproc` (or with 1) hashes as before the key existed; nproc 2 is a stage of its own, so
    a stage done on one process re-runs (its record is not adopted) and back."""
    from unissl.config import stable_hash

    stage = {"name": "a", "command": "fake step", "config": {"out": "{out}/a", "value": 1}}
    plain = _dry_hashes([stage], tmp_path)
    assert plain == {"a": stable_hash(["fake step", {"out": f"{tmp_path}/a", "value": 1}])}  # the formula before
    assert _dry_hashes([{**stage, "nproc": 1}], tmp_path) == plain
    two = _dry_hashes([{**stage, "nproc": 2}], tmp_path)
    assert two != plain
    run_pipeline(parse_stages([stage]), tmp_path, log=lambda m: None)
    assert "nproc" not in json.loads((tmp_path / "stages" / "a.json").read_text())
    lines: list[str] = []
    run_pipeline(parse_stages([{**stage, "nproc": 2}]), tmp_path, dry_run=True, log=lines.append)
    assert lines == [f"[pipeline] a: config changed or forced; replacing {tmp_path / 'a'}",
                     f"[pipeline] a: would run `torchrun --nproc_per_node=2 -m unissl fake step` ({two['a']})"]
    # a record of 2 processes is not adopted for 1 (nor the other way), whatever its hash scheme
    rec = json.loads((tmp_path / "stages" / "a.json").read_text())
    (tmp_path / "stages" / "a.json").write_text(json.dumps({**rec, "nproc": 2, "hash": "old-scheme"}))
    lines.clear()
    run_pipeline(parse_stages([stage]), tmp_path, dry_run=True, log=lines.append)
    assert "would run" in lines[-1]


def test_a_stage_of_n_processes_holds_n_slots_and_later_stages_wait_behind_it(tmp_path, fake_command, monkeypatch):
    """The scheduler without processes: a launched stage is a fake process that ends after some polls. With
    --jobs 2, `big` (nproc 2) waits until both running stages end and `c` after it does not slip in before it;
    with nproc 3 > --jobs 2 it runs alone and says so in one line."""
    from unissl import pipeline

    polls = {"a": 4, "b": 1, "big": 1, "c": 1}
    launched: list[tuple[str, list[str]]] = []
    alive: dict[str, int] = {}

    class _Proc:
        def __init__(self, name: str) -> None:
            self.name, self.returncode = name, None

        def poll(self):
            alive[self.name] -= 1
            if alive[self.name] < 0:
                self.returncode = 0
                del alive[self.name]
            return self.returncode

        def terminate(self, *args, **kwargs) -> None: ...
        wait = kill = terminate

    def launch(unit, plan, env, log):
        launched.append((unit.key, sorted(alive)))
        alive[unit.key] = polls[unit.key]
        return _Proc(unit.key), plan, pipeline._start_record(plan, log), None, io.StringIO(), tmp_path / "x.log"

    monkeypatch.setattr(pipeline, "_launch", launch)
    monkeypatch.setattr(pipeline.time, "sleep", lambda s: None)

    def stages(nproc: int):
        return parse_stages([{"name": n, "command": "fake step", "config": {"out": f"{{out}}/{n}"},
                              **({"nproc": nproc} if n == "big" else {})} for n in ("a", "b", "big", "c")])

    logs: list[str] = []
    run_pipeline(stages(2), tmp_path / "two", jobs=2, log=logs.append)
    assert launched == [("a", []), ("b", ["a"]), ("big", []), ("c", [])]
    assert not any("no other stage" in m for m in logs)
    launched.clear()
    logs.clear()
    run_pipeline(stages(3), tmp_path / "three", jobs=2, log=logs.append)
    assert launched == [("a", []), ("b", ["a"]), ("big", []), ("c", [])]
    assert [m for m in logs if "big" in m and "running" not in m and "done" not in m] == [
        "[pipeline] big: 3 processes, more than --jobs 2: no other stage runs beside it"]
    # done stages take no slot: a re-run skips them all, the big one included
    launched.clear()
    run_pipeline(stages(3), tmp_path / "three", jobs=2, log=lambda m: None)
    assert launched == []
    assert pipeline._slots(2, 2) == 2 and pipeline._slots(3, 2) == 2 and pipeline._slots(1, 4) == 1


def _ddp_pipeline(out: Path) -> list:
    """tokenizer train (a few steps) -> tokenize -> Sorcen on 2 processes (4 steps, tiny), all on digits."""
    return parse_stages([
        {"name": "vq", "command": "tokenizer train", "output_key": "train.run_dir",
         "config": {"dataset": "digits", "train": {"run_dir": "{out}/vq", "steps": 2, "warmup_steps": 1,
                                                   "global_batch": 32, "ckpt_every": 2, "progress": False,
                                                   "tensorboard": False}}},
        {"name": "tokens", "command": "tokenize",
         "config": {"tokenizer": "{stage:vq}/tokenizer", "dataset": "digits", "splits": ["train"],
                    "flip": False, "out": "{out}/tokens", "progress": False}},
        {"name": "sorcen", "command": "train sorcen", "output_key": "train.run_dir", "nproc": 2,
         "config": {"tokens": "{stage:tokens}", "preset": "tiny",
                    "train": {"run_dir": "{out}/sorcen", "steps": 4, "warmup_steps": 1, "global_batch": 32,
                              "ckpt_every": 4, "log_every": 2, "num_workers": 0, "progress": False,
                              "tensorboard": False}}},
    ])


@pytest.mark.slow
def test_a_training_stage_runs_on_two_torchrun_processes(tmp_path, capsys):
    """`nproc: 2`: the Sorcen stage trains with world size 2 under --jobs 2 (a process of its own) and under
    --jobs 1 (a child process whose rank-0 output reaches the console and the stage log); a re-run skips it."""
    out = tmp_path / "run"
    logs: list[str] = []
    records = run_pipeline(_ddp_pipeline(out), out, jobs=2, log=logs.append)
    assert all(r["status"] == "done" for r in records.values()) and records["sorcen"]["nproc"] == 2
    info = json.loads((out / "sorcen" / "train_info.json").read_text())
    assert [s["world_size"] for s in info] == [2]
    log = (out / "stages" / "sorcen.log").read_text()
    assert log.count("unissl train sorcen: done") == 1  # rank 0 only
    assert "running `torchrun --nproc_per_node=2 -m unissl train sorcen`" in "\n".join(logs)
    assert not list((out / "stages").glob(".sorcen.*.yaml"))  # its resolved config file is gone
    again: list[str] = []
    run_pipeline(_ddp_pipeline(out), out, jobs=2, log=again.append)
    assert len(again) == 3 and all("skipped" in m for m in again)
    capsys.readouterr()
    run_pipeline(_ddp_pipeline(out), out, jobs=1, force=["sorcen"], log=lambda m: None)
    assert capsys.readouterr().out.count("unissl train sorcen: done") == 1
    log = (out / "stages" / "sorcen.log").read_text()
    assert "torch.distributed.run --standalone --nproc_per_node=2" in log.splitlines()[0]
    assert log.count("unissl train sorcen: done") == 1
    info = json.loads((out / "sorcen" / "train_info.json").read_text())
    assert [s["world_size"] for s in info] == [2]  # forced: the run directory was replaced, not appended to


@pytest.mark.slow
def test_a_rank_that_fails_alone_is_named_in_the_stage_log(tmp_path):
    """The launcher a `nproc: 2` stage runs under keeps every rank's output: rank 1's error (rank 0 succeeds)
    is the line the pipeline reports, not rank 0's last progress line."""
    import subprocess

    from unissl.pipeline import _last_line, _launcher

    script = tmp_path / "job.py"
    flag = tmp_path / "rank0-done"  # rank 1 fails after rank 0 has printed its last line, as in the CI failure
    script.write_text("import os, sys, time\n"
                      "if os.environ['RANK'] == '0':\n"
                      f"    print('rank 0: saved encoder', flush=True); open({str(flag)!r}, 'w').close()\n"
                      "else:\n"
                      f"    while not os.path.exists({str(flag)!r}): time.sleep(0.05)\n"
                      "    sys.exit('unissl: error: rank 1 cannot read shard 7')\n")
    log = tmp_path / "job.log"
    with open(log, "w") as f:
        rc = subprocess.run([*_launcher(2), str(script)], stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120).returncode
    assert rc != 0
    assert "rank 0: saved encoder" in log.read_text()
    assert _last_line(log) == "unissl: error: rank 1 cannot read shard 7"
    assert _launcher(1) == [sys.executable]


def test_a_cli_run_leaves_its_process_group(tmp_path, fake_command):
    """`unissl <command>` under torchrun destroys its process group once the command succeeds (a gloo group
    left to interpreter teardown can abort the process after its outputs are written); after a failure it
    leaves it alone (other ranks may still wait in a collective)."""
    import torch.distributed as tdist

    def command(value: int) -> int:
        return cli.main(["fake", "step", "--out", str(tmp_path / "a"), "--value", str(value)])

    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            command(-1)
        assert tdist.is_initialized()
        assert command(1) == 0 and (tmp_path / "a" / "log.jsonl").is_file()
        assert not tdist.is_initialized()
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    assert command(2) == 0  # no group: nothing to leave


def test_a_failed_torchrun_stage_is_named_by_its_own_error_not_torchruns_report(tmp_path):
    from unissl.pipeline import _last_line

    log = tmp_path / "sorcen.log"
    log.write_text("[train] 1 intra-op thread(s) per process\n"
                   "unissl: error: train.global_batch=33 must be divisible by world size x grad_accum = 2 x 1\n"
                   "W1206 14:22:41.872000 19526 torch/distributed/elastic/multiprocessing/api.py:1028] Sending "
                   "process 19531 closing signal SIGTERM\n"
                   "E1206 14:18:27.504000 19024 torch/distributed/elastic/multiprocessing/api.py:1002] failed "
                   "(exitcode: 2) local_rank: 0 (pid: 19028) of binary: python\n"
                   "Traceback (most recent call last):\n  File \"<frozen runpy>\", line 198\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n" + "=" * 60 + "\n")
    assert _last_line(log).startswith("unissl: error: train.global_batch=33")
    log.write_text("step 1\nunissl: error: something else\n")
    assert _last_line(log) == "unissl: error: something else"


def test_goals_are_accepted_and_the_wall_of_the_invocation_is_recorded(tmp_path, capsys):
    """A pipeline file's `goals:` reaches the run's config.yaml; pipeline.json holds the invocation's wall
    seconds, which the report reads for `wall_minutes`; a re-run that reuses stages does not time the job."""
    cfg = tmp_path / "p.yaml"
    out = tmp_path / "run"
    cfg.write_text(yaml.safe_dump({"out": str(out), "goals": {"wall_minutes": {"at_most": 15}},
                                   "stages": _script_stages(tmp_path)[:2]}, sort_keys=False))
    assert cli.main(["pipeline", "--config", str(cfg)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["goals"] == {"wall_minutes": {"at_most": 15}}
    invocation = json.loads((out / "pipeline.json").read_text())
    assert invocation["stages_run"] == 2 and invocation["stages_reused"] == 0 and invocation["wall_seconds"] >= 0
    [wall] = json.loads((out / "report" / "goals.json").read_text())
    assert wall["id"] == "wall_minutes" and wall["met"] is True and wall["value"] < 15
    assert wall["gap"].endswith("minutes under")
    assert cli.main(["pipeline", "--config", str(cfg)]) == 0  # everything skipped
    assert json.loads((out / "pipeline.json").read_text())["stages_reused"] == 2
    [wall] = json.loads((out / "report" / "goals.json").read_text())
    assert wall["met"] is None and wall["gap"] == "not measured: 2 stages were reused from an earlier run"
    # a bad goal is refused before anything runs, one line naming the key
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "bad"), "goals": {"wall_minutes": {"under": 15}},
                                   "stages": _script_stages(tmp_path)[:1]}))
    capsys.readouterr()
    assert cli.main(["pipeline", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "goals.wall_minutes" in err[0] and not (tmp_path / "bad").exists()


def test_a_base_pipeline_file_may_hold_goals(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"goals": {"x": {"at_least": 1}}, "stages": []}))
    plain = resolve_pipeline({"extends": "base.yaml", "vars": {"n": 1}, "stages": []}, tmp_path)
    assert plain["goals"] == {"x": {"at_least": 1}}
