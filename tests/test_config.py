"""The dataclass -> CLI layer over jsonargparse: flags, YAML overrides, validation, run-config round trips and
the one-line errors a user sees."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from unissl.cli import main as cli_main
from unissl.config import arg, config_hash, from_dict, parse_config, save_run_config, to_dict
from unissl.engine import TrainConfig
from unissl.errors import ConfigError, UnisslError


@dataclass
class Optim:
    """Inner settings."""

    lr: float = arg(1e-3, help="learning rate")
    betas: tuple[float, float] = arg((0.9, 0.95), help="betas")
    schedule: Literal["cosine", "constant"] = arg("cosine", help="lr schedule")

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")


@dataclass
class Demo:
    """A demo command."""

    name: str = arg("run", help="run name")
    steps: int = arg(10, help="steps")
    use_ema: bool = arg(False, help="keep an EMA")
    layers: list[int] = arg([1, 2], help="layer sizes")
    dropout: float | None = arg(None, help="dropout (none: off)")
    size: Literal[32, 64] = arg(32, help="image size")
    mode: Literal["a", "b"] | None = arg(None, help="optional choice; 100% optional")
    optim: Optim = field(default_factory=Optim)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=50, global_batch=32, num_workers=0))


def test_defaults_and_nested_flags() -> None:
    cfg = parse_config(Demo, [])
    assert cfg == Demo()
    assert cfg.train.steps == 50 and cfg.train.global_batch == 32  # the parent's default for a nested config
    cfg = parse_config(Demo, ["--steps", "3", "--optim.lr", "0.5", "--optim.schedule", "constant",
                              "--train.global-batch", "64", "--train.base-lr", "1e-4", "--name", "x"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.schedule, cfg.name) == (3, 0.5, "constant", "x")
    # Overriding one nested field keeps the parent's other nested defaults (steps=50, not TrainConfig's 1000).
    assert (cfg.train.global_batch, cfg.train.base_lr, cfg.train.steps, cfg.train.num_workers) == (64, 1e-4, 50, 0)
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.steps, int)


def test_bools_lists_tuples_optional_literals() -> None:
    cfg = parse_config(Demo, ["--use-ema", "--layers", "4", "5", "6", "--optim.betas", "0.8", "0.9",
                              "--dropout", "0.1", "--size", "64", "--no-train.progress"])
    assert cfg.use_ema is True and cfg.layers == [4, 5, 6] and cfg.optim.betas == (0.8, 0.9)
    assert cfg.dropout == 0.1 and cfg.size == 64 and cfg.train.progress is False
    assert parse_config(Demo, ["--use-ema", "--no-use-ema"]).use_ema is False
    assert parse_config(Demo, ["--dropout", "none"]).dropout is None
    assert parse_config(Demo, ["--mode", "b"]).mode == "b"
    assert parse_config(Demo, ["--mode", "b", "--mode", "none"]).mode is None
    assert parse_config(Demo, ["--train.clip-grad", "null"]).train.clip_grad is None
    assert parse_config(Demo, ["--use-ema", "false", "--layers", "[7]"]).layers == [7]
    assert parse_config(Demo, ["--optim.lr=0.25"]).optim.lr == 0.25
    for bad, line in [(["--size", "48"], "size: expected one of [32, 64], got '48'"),
                      (["--optim.schedule", "linear"], "optim.schedule: expected one of ['cosine', 'constant'], "
                                                       "got 'linear'"),
                      (["--steps", "ten"], "steps: expected int, got 'ten'"),
                      (["--dropout", "x"], "dropout: expected float or null, got 'x'"),
                      (["--nope", "1"], "unknown flag --nope; did you mean --name?"),
                      (["--train.setps", "3"], "unknown flag --train.setps; did you mean --train.steps?"),
                      (["--train.step", "3"], "unknown flag --train.step; did you mean --train.steps?"),  # no prefixes
                      (["--optim.betas", "0.9"], "optim.betas: expected tuple with 2 elements, got '[0.9]'"),
                      (["--steps"], "--steps needs a value"),
                      (["--no-use-ema=1"], "--no-use-ema takes no value")]:
        with pytest.raises(UnisslError) as e:
            parse_config(Demo, bad)
        assert str(e.value) == line, bad


def test_help_lists_nested_flags_with_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_config(Demo, ["--steps", "3", "--help"], prog="demo")
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: demo ")
    for flag in ("--optim.lr", "--train.global-batch", "--use-ema, --no-use-ema", "--config", "--train.* ("):
        assert flag in text
    assert "--train.global_batch" not in text and "--train CONFIG" not in text
    assert "learning rate" in text and "cosine" in text and "100% optional" in text


def test_yaml_precedence_and_errors(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"steps": 7, "optim": {"lr": 0.1, "schedule": "constant"}, "layers": [9],
                                 "train": {"ema_decay": 0.99}}))
    b.write_text(yaml.safe_dump({"optim": {"lr": 0.2}}))
    cfg = parse_config(Demo, ["--config", str(a), "--steps", "8", "--config", str(b)])
    # flags (wherever they stand) > later YAML > earlier YAML > defaults, merged per nested key
    assert (cfg.steps, cfg.optim.lr, cfg.optim.schedule, cfg.layers) == (8, 0.2, "constant", [9])
    assert cfg.train.ema_decay == 0.99 and cfg.train.steps == 50
    assert isinstance(cfg.optim.lr, float)

    bad = tmp_path / "bad.yaml"
    for text, line in [("optim: {lr: 0.1, momentum: 0.9}", "optim.momentum: unknown key; valid keys: lr, betas, schedule"),
                       ("stepz: 3", "stepz: unknown key; did you mean steps?"),
                       ("size: 48", "size: expected one of [32, 64], got '48'"),
                       ("use_ema: maybe", "use_ema: expected bool, got 'maybe'"),
                       ("steps: 2.5", "steps: expected int, got '2.5'"),
                       ("train: 5", "train: expected a mapping of settings, got 5")]:
        bad.write_text(text + "\n")
        with pytest.raises(ConfigError) as e:
            parse_config(Demo, ["--config", str(bad)])
        assert str(e.value) == f"{bad}: {line}", text  # the file and the key that are wrong
    bad.write_text("optim: {lr: 1e-2}\n")  # YAML 1.1 reads 1e-2 as a string
    assert parse_config(Demo, ["--config", str(bad)]).optim.lr == 0.01
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(UnisslError, match="not valid YAML"):
        parse_config(Demo, ["--config", str(bad)])
    with pytest.raises(UnisslError, match="not found"):
        parse_config(Demo, ["--config", str(tmp_path / "missing.yaml")])
    # __post_init__ validation surfaces as a one-line UnisslError; a ConfigError gets the nested path.
    with pytest.raises(UnisslError, match="optim.lr must be positive"):
        parse_config(Demo, ["--optim.lr", "-1"])
    with pytest.raises(ConfigError) as e:
        parse_config(Demo, ["--train.global-batch", "0"])
    assert (e.value.path, e.value.reason) == ("train.global_batch", "must be positive, got 0")
    with pytest.raises(ConfigError) as e:
        from_dict(Demo, {"train": {"betas": [0.9, 1.5]}})
    assert str(e.value) == "train.betas: must be two numbers in [0, 1), got [0.9, 1.5]"


def test_save_run_config_round_trips(tmp_path: Path) -> None:
    cfg = parse_config(Demo, ["--use-ema", "--dropout", "0.3", "--optim.betas", "0.5", "0.6", "--train.lr", "0.01"])
    save_run_config(tmp_path / "run", cfg, extra={"note": "hi"})
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["optim"]["betas"] == [0.5, 0.6] and saved["train"]["lr"] == 0.01
    assert from_dict(Demo, saved) == cfg
    assert parse_config(Demo, ["--config", str(tmp_path / "run" / "config.yaml")]) == cfg
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["note"] == "hi" and info["config_class"].endswith("Demo") and "git_revision" in info
    assert to_dict(cfg)["optim"]["betas"] == [0.5, 0.6]
    assert config_hash(cfg) == config_hash(from_dict(Demo, saved))
    assert config_hash(cfg) != config_hash(parse_config(Demo, ["--steps", "11"]))


def test_cli_reports_user_errors_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["no-such-command"]) == 2
    assert "unissl: error: unknown command" in capsys.readouterr().err


def test_hostile_config_files_are_one_line(tmp_path, capsys) -> None:
    """A config file that is not UTF-8, a section given as a scalar (merged with flags), a bad value inside
    a pipeline stage, a folder dataset without the split a command needs: one line, exit 2, nothing run."""
    from unissl.cli import main

    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("train:\n  run_dir: caf\xe9\n".encode("latin-1"))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("train: 5\n")
    for cfg in (latin, scalar):
        capsys.readouterr()
        assert main(["train", "sorcen", "--config", str(cfg), "--tokens", "x", "--train.steps", "3"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unissl: error:") and "Traceback" not in err[0], err
        assert ("UTF-8" in err[0]) if cfg is latin else ("train: expected a mapping" in err[0])
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "stages": [
        {"name": "t", "command": "tokenizer train", "config": {"dataset": "digits", "eval_batch": 0}}]}))
    assert main(["pipeline", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval-batch" in err[0]
    # a folder dataset without the evaluation split is refused before training writes anything
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / "imgs" / "a" / f"{i}.png")
    run = tmp_path / "vq-run"
    assert main(["tokenizer", "train", "--dataset", "folder", "--data-dir", str(tmp_path / "imgs"),
                 "--train.run-dir", str(run), "--train.steps", "1", "--train.global-batch", "2",
                 "--no-train.progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test" in err[0] and not run.exists()


def test_impossible_run_directories_are_one_line(tmp_path, capsys) -> None:
    from unissl.cli import main

    (tmp_path / "afile").write_text("x")
    for run_dir in (tmp_path / "afile" / "run", tmp_path / "afile"):
        capsys.readouterr()
        assert main(["tokenizer", "train", "--dataset", "digits", "--train.steps", "1",
                     "--train.run-dir", str(run_dir), "--no-train.progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unissl: error:") and "is a file" in err[0], err
    assert (tmp_path / "afile").read_text() == "x"


# ---------------------------------------------------------------------------------------------- what a user sees
def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    from unissl.cli import main

    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each mistake is exactly one line on stderr and exit 2; usage is printed only for --help."""
    cases = [
        (["trian", "sorcen"], "unknown command 'trian'; did you mean 'train'?"),
        (["train", "sorcen", "--train.setps", "3"], "unknown flag --train.setps; did you mean --train.steps?"),
        (["train", "sorcen", "--train.step", "7", "--tokens", "x"],  # a prefix is not a flag
         "unknown flag --train.step; did you mean --train.steps?"),
        (["eval", "knn", "--knn.k", "0"], "--knn.k: must be positive, got 0"),  # a library config names its field
        (["tokenizer", "train", "--train.global-batch", "0"], "--train.global-batch: must be positive, got 0"),
        (["report"], "--run-dir: a value is required"),
        (["report", "--run-dir", str(tmp_path / "none")], f"run directory {tmp_path / 'none'} not found"),
        (["report", str(tmp_path / "none")], f"run directory {tmp_path / 'none'} not found"),  # positional too
        (["report", "a", "b"], "unexpected argument 'b': settings are passed as --name value (run with --help "
                               "for the flags)"),
        # library code names a field of its own config (data_dir, k); the CLI finds the command's flag for it
        (["eval", "knn", "--dataset", "folder", "--run-dir", str(tmp_path / "ev")],
         "--data-dir: the folder dataset needs a directory with one sub-folder per class"),
        (["eval", "knn", "--dataset", "digits", "--knn.k", "5000", "--run-dir", str(tmp_path / "ev")],
         "--knn.k: 5000 is larger than the 1500 train samples of the k-NN; lower it"),
    ]
    for argv, line in cases:
        code, err, out = _run_cli(argv, capsys)
        assert (code, err, out) == (2, [f"unissl: error: {line}"], ""), argv
    bad = tmp_path / "knn.yaml"
    bad.write_text("knn: {k: 5, temprature: 0.1}\n")
    code, err, _ = _run_cli(["eval", "knn", "--config", str(bad)], capsys)
    assert (code, err) == (2, [f"unissl: error: {bad}: knn.temprature: unknown key; did you mean knn.temperature?"])
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(["eval", "knn", "--help"], capsys)
    out, err_text = capsys.readouterr()
    assert exit_info.value.code == 0 and err_text == ""
    assert out.startswith("usage: unissl eval knn") and "--knn.temperature" in out


def test_pipeline_checks_every_stage_before_the_first_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {"out": str(tmp_path / "pipe"), "stages": [
        {"name": "a", "command": "tokenizer train", "output_key": "train.run_dir",
         "config": {"dataset": "digits", "preset": "digits", "train": {"run_dir": "{out}/a", "steps": 2}}},
        {"name": "b", "command": "tokenize", "config": {"tokenizer": "{stage:a}/tokenizer", "dataset": "digits",
                                                        "out": "{out}/tokens"}},
        {"name": "c", "command": "eval knn", "output_key": "run_dir",
         "config": {"extractor": "pixels", "dataset": "digits", "run_dir": "{out}/eval", "kn": {"k": 5}}}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    code, err, _ = _run_cli(["pipeline", "--config", str(path), "--no-report"], capsys)
    assert (code, err) == (2, ["unissl: error: pipeline: stage c: kn: unknown key; did you mean knn?"])
    assert not (tmp_path / "pipe" / "a").exists()  # stage a never ran
    spec["stages"][2]["config"] = {"extractor": "pixels", "run_dir": "{out}/eval", "knn": {"k": 0}}
    path.write_text(yaml.safe_dump({**spec, "seeds": [0, 1]}))
    code, err, _ = _run_cli(["pipeline", "--config", str(path), "--no-report"], capsys)
    assert (code, err) == (2, ["unissl: error: pipeline: stage seed0/c: knn.k: must be positive, got 0"])
    assert not (tmp_path / "pipe" / "seed0" / "a").exists()


def test_ctrl_c_names_the_checkpoint_and_the_command_that_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C during step 3 of a toy command run through ``cli.main``: one line naming the saved checkpoint and the
    command; running that command resumes (and says from where) and finishes."""
    import os
    import shlex
    import signal
    import sys
    import types

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers.toy import ToyConfig, build

    from unissl import cli
    from unissl.engine import Callback, Trainer

    class CtrlC(Callback):
        def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
            if step == 3 and not trainer.cfg.resume:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    def run(cfg: ToyConfig) -> None:
        method, data = build(cfg)
        Trainer(method, data, cfg.train, callbacks=[CtrlC()]).fit()

    module = types.ModuleType("toy_command")
    module.Config, module.run = ToyConfig, run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "toy_command", module)
    monkeypatch.setitem(cli.COMMANDS, (None, "toy"), cli.Command("toy_command", "a toy training"))
    run_dir = tmp_path / "run dir"  # a space: the printed command must quote it
    argv = ["toy", "--train.run-dir", str(run_dir), "--train.steps", "6", "--train.ckpt-every", "100",
            "--no-train.progress"]
    code, err, _ = _run_cli(argv, capsys)
    saved = run_dir / "checkpoints" / "step_0000004"  # the signal is honoured at the next step boundary
    again = shlex.join(["unissl", *argv, "--train.resume"])
    assert (code, err) == (130, [f"unissl: interrupted at step 4; saved {saved}; continue with: {again}"])
    assert saved.is_dir()
    code, err, out = _run_cli(shlex.split(err[0].split("continue with: ")[1])[1:], capsys)
    assert code == 0 and f"[train] resumed from {saved} at step 4" in out.splitlines()


def test_reptok_tokenizer_command_nests_the_library_config() -> None:
    """`train reptok-tokenizer` nests RepTokConfig as `model`; the old flat flags and pipeline keys still work
    (so existing pipeline files keep their stage hashes) and the data-derived fields are no settings."""
    from unissl.commands.train_reptok_tokenizer import Config
    from unissl.methods.reptok.tokenizer import RepTokConfig

    new = parse_config(Config, ["--encoder", "random", "--model.cos-weight", "0.5", "--model.decoder", "tiny",
                                "--model.patch-size", "2"])
    assert isinstance(new.model, RepTokConfig) and (new.model.cos_weight, new.model.patch_size) == (0.5, 2)
    assert parse_config(Config, ["--encoder", "random", "--cos-weight", "0.5", "--decoder", "tiny",
                                 "--patch-size", "2"]) == new
    assert from_dict(Config, {"encoder": "random", "cos_weight": 0.5, "decoder": "tiny", "patch_size": 2}) == new
    assert from_dict(Config, to_dict(new)) == new
    for argv, line in [(["--model.image-size", "3"], "unknown flag --model.image-size; did you mean --image-size?"),
                       (["--cos-weigth", "1"], "unknown flag --cos-weigth; did you mean --model.cos-weight?"),
                       (["--encoder", "random", "--model.cos-weight", "-1"], "model.cos_weight: (lambda) must be >= 0, "
                                                                              "got -1.0")]:
        with pytest.raises(UnisslError) as e:
            parse_config(Config, argv)
        assert str(e.value) == line
    with pytest.raises(ConfigError, match="cos_weight: is given twice"):
        from_dict(Config, {"encoder": "random", "cos_weight": 0.5, "model": {"cos_weight": 0.1}})
    shipped = parse_config(Config, ["--config", "configs/reptok/fmnist-tiny.yaml", "--encoder", "random"])
    assert (shipped.model.decoder, shipped.model.cos_weight, shipped.train.steps) == ("tiny", 0.1, 400)
