"""The pipeline runner: substitution, skipping finished stages, resuming a crashed one; the report."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from unissl import cli
from unissl.errors import UnisslError
from unissl.pipeline import parse_stages, run_pipeline
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
    from pathlib import Path
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
        from pathlib import Path
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
