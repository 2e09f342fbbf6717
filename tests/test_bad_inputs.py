"""Bad inputs to every command that loads weights or writes outputs, as a new user would give them.

Each row is one command line and one damage: a ``.safetensors`` with a bad header or cut short, a cut
``.pt`` / ``.ckpt``, a pickle that ``torch.load(weights_only=True)`` refuses given where a model directory or
encoder goes, and an output path on a virtual (``/proc``) or read-only file system. Every row must end in
exit 2 and ONE ``unissl: error:`` line that names the file (or the flag) and what to do, with nothing
written: the command's output path does not exist afterwards and every input file is byte-identical.
"""

from __future__ import annotations

import collections
import io
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from unissl.cli import main


class Evil:
    """What an untrusted file could smuggle in: an object that unpickling would construct (counted)."""

    built = 0

    def __new__(cls):
        cls.built += 1
        return super().__new__(cls)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Tiny trained artefacts of every kind: a VQ tokenizer and its token store, a Sorcen run, a domain
    classifier, a RepTok tokenizer and its generator, torch weights files and a code pickle."""
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer
    from unissl.tokenizers.vq import VQTokenizer, preset

    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    VQTokenizer(preset("digits")).save_pretrained(root / "vq")
    common = ["--no-train.progress", "--no-train.tensorboard", "--train.num-workers", "0"]
    assert main(["tokenize", "--tokenizer", str(root / "vq"), "--out", str(root / "tokens"), "--dataset", "digits",
                 "--no-progress"]) == 0
    assert main(["train", "sorcen", "--tokens", str(root / "tokens"), "--preset", "tiny", "--train.steps", "2",
                 "--train.global-batch", "16", "--train.run-dir", str(root / "run"), *common]) == 0
    assert main(["eval", "train-extractor", "--dataset", "digits", "--out", str(root / "clf"), "--epochs", "1",
                 "--widths", "4", "4", "--feature-dim", "8", "--run-dir", str(root / "ev")]) == 0
    enc = {"kind": "random", "image_size": 8, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    RepTokTokenizer(RepTokConfig(encoder=enc, image_size=8, channels=1, decoder="tiny")).save_pretrained(root / "rt")
    assert main(["train", "reptok-generator", "--tokenizer", str(root / "rt"), "--dataset", "digits", "--preset",
                 "tiny", "--train.steps", "1", "--train.global-batch", "64", "--train.warmup-steps", "0",
                 "--train.run-dir", str(root / "gen"), "--samples-per-class", "0", *common]) == 0
    torch.save({"model": {"w": torch.zeros(4096)}}, root / "weights.pth")
    buf = io.BytesIO()
    torch.save({"model": collections.OrderedDict(w=Evil())}, buf)
    (root / "evil.pth").write_bytes(buf.getvalue())
    return root


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header":  # a header length far past the end of the file, then garbage
        path.write_bytes((10**7).to_bytes(8, "little") + b"{not json" + data[17:])
    else:
        raise ValueError(how)


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as held:  # a warning would be a second line on a user's stderr
        warnings.simplefilter("always")
        assert main(argv) == 2, argv
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unissl: error:"), (argv, err)
    assert not held, (argv, [str(w.message) for w in held])
    return err[0]


# (row name, where the damaged file is, command line; {d} is the damaged copy, {o} a fresh output path)
WEIGHT_ROWS = [
    ("tokenize", "vq", "model.safetensors",
     ["tokenize", "--tokenizer", "{d}", "--dataset", "digits", "--out", "{o}"]),
    ("mage-c tokenizer", "vq", "model.safetensors",
     ["train", "sorcen", "--method", "mage-c", "--dataset", "digits", "--tokenizer", "{d}", "--preset", "tiny",
      "--train.steps", "1", "--train.run-dir", "{o}"]),
    ("sample sorcen", "run", "checkpoints/step_0000002/model.safetensors",
     ["sample", "sorcen", "--checkpoint", "{d}", "--num-samples", "2", "--out", "{o}"]),
    ("sorcen extractor", "run", "checkpoints/step_0000002/model.safetensors",
     ["eval", "knn", "--extractor", "sorcen:{d}", "--dataset", "digits", "--run-dir", "{o}"]),
    ("sorcen as RepTok encoder", "run", "checkpoints/step_0000002/model.safetensors",
     ["train", "reptok-tokenizer", "--encoder", "sorcen", "--encoder-path", "{d}", "--dataset", "digits",
      "--train.steps", "1", "--train.run-dir", "{o}"]),
    ("domain extractor", "clf", "model.safetensors",
     ["eval", "linear-probe", "--extractor", "domain:{d}", "--dataset", "digits", "--run-dir", "{o}"]),
    ("reconstruct", "rt", "model.safetensors",
     ["reconstruct", "--tokenizer", "{d}", "--dataset", "digits", "--num-images", "4", "--out", "{o}"]),
    ("sample reptok", "gen", "generator/model.safetensors",
     ["sample", "reptok", "--checkpoint", "{d}", "--class", "1", "--out", "{o}"]),
]


@pytest.mark.parametrize("how", ["header", "cut"])
@pytest.mark.parametrize("row", WEIGHT_ROWS, ids=[r[0] for r in WEIGHT_ROWS])
def test_damaged_safetensors_are_one_line_and_write_nothing(world, tmp_path, capsys, row, how) -> None:
    name, folder, rel, argv = row
    damaged = tmp_path / folder
    shutil.copytree(world / folder, damaged)
    _damage(damaged / rel, how)
    before, inputs = _snapshot(damaged), _snapshot(world)
    out = tmp_path / "out"
    err = _one_line_error(capsys, [a.replace("{d}", str(damaged)).replace("{o}", str(out)) for a in argv])
    assert str(damaged / rel) in err and ("corrupt" in err or "damaged" in err), err
    assert not out.exists(), f"{name}: {out} was written"
    assert _snapshot(damaged) == before and _snapshot(world) == inputs


def _convert(argv: list[str]) -> int:
    from unissl.methods.sorcen.convert import main as convert_main

    return convert_main(argv)


@pytest.mark.parametrize("how", ["cut", "header"])
def test_cut_torch_files_are_one_line_for_convert_taming_and_inception(world, tmp_path, capsys, how) -> None:
    """A cut ``.pt`` (or one with garbage for its first bytes) given to the official-weights converter, as a
    taming VQGAN checkpoint and as the Inception weights."""
    bad = tmp_path / "weights.pth"
    shutil.copy(world / "weights.pth", bad)
    _damage(bad, how)
    out = tmp_path / "out"
    for argv in (["tokenize", "--tokenizer", str(bad), "--dataset", "digits", "--out", str(out)],
                 ["eval", "knn", "--extractor", f"inception:{bad}", "--dataset", "digits", "--run-dir", str(out)]):
        err = _one_line_error(capsys, argv)
        assert str(bad) in err and "corrupt or not a torch weights file" in err, err
        assert not out.exists()
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        assert _convert([str(bad), str(out)]) == 2
    assert not held, [str(w.message) for w in held]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "corrupt" in err[0], err
    assert not out.exists()


PICKLE_ROWS = [
    ("dinov2 encoder path", ["train", "reptok-tokenizer", "--encoder", "dinov2", "--encoder-path", "{e}",
                             "--dataset", "digits", "--train.steps", "1", "--train.run-dir", "{o}"]),
    ("sorcen encoder path", ["train", "reptok-tokenizer", "--encoder", "sorcen", "--encoder-path", "{e}",
                             "--dataset", "digits", "--train.steps", "1", "--train.run-dir", "{o}"]),
    ("sorcen extractor", ["eval", "knn", "--extractor", "sorcen:{e}", "--dataset", "digits", "--run-dir", "{o}"]),
    ("reptok extractor", ["eval", "knn", "--extractor", "reptok:{e}", "--dataset", "digits", "--run-dir", "{o}"]),
    ("domain extractor", ["eval", "knn", "--extractor", "domain:{e}", "--dataset", "digits", "--run-dir", "{o}"]),
    ("inception weights", ["eval", "knn", "--extractor", "inception:{e}", "--dataset", "digits", "--run-dir", "{o}"]),
    ("sample sorcen", ["sample", "sorcen", "--checkpoint", "{e}", "--out", "{o}"]),
    ("sample reptok", ["sample", "reptok", "--checkpoint", "{e}", "--class", "1", "--out", "{o}"]),
    ("tokenize (taming)", ["tokenize", "--tokenizer", "{e}", "--dataset", "digits", "--out", "{o}"]),
]


@pytest.mark.parametrize("row", PICKLE_ROWS, ids=[r[0] for r in PICKLE_ROWS])
def test_a_code_pickle_is_named_and_never_executed(world, tmp_path, capsys, row) -> None:
    """A pickle that would construct a Python object, wherever a model or encoder goes: one line saying it is
    not a plain weights file and will not be executed; the object is never built."""
    Evil.built = 0
    out = tmp_path / "out"
    argv = [a.replace("{e}", str(world / "evil.pth")).replace("{o}", str(out)) for a in row[1]]
    err = _one_line_error(capsys, argv)
    assert str(world / "evil.pth") in err and "not a plain weights file" in err and "not execute" in err, err
    assert Evil.built == 0 and not out.exists()


def _outputs_table(world: Path, bad: str) -> list[list[str]]:
    """Every command with an output path, that path set to ``bad`` (below a virtual or read-only file system)."""
    tokens, run = str(world / "tokens"), str(world / "run")
    return [
        ["tokenizer", "train", "--dataset", "digits", "--train.steps", "1", "--train.run-dir", bad],
        ["tokenize", "--tokenizer", str(world / "vq"), "--dataset", "digits", "--out", bad],
        ["train", "sorcen", "--tokens", tokens, "--preset", "tiny", "--train.steps", "1", "--train.run-dir", bad],
        ["train", "reptok-tokenizer", "--encoder", "sorcen", "--encoder-path", run, "--dataset", "digits",
         "--train.steps", "1", "--train.run-dir", bad],
        ["train", "reptok-generator", "--tokenizer", str(world / "rt"), "--dataset", "digits", "--train.steps", "1",
         "--train.run-dir", bad],
        ["sample", "sorcen", "--checkpoint", run, "--out", bad],
        ["sample", "reptok", "--checkpoint", str(world / "gen"), "--class", "1", "--out", bad],
        ["reconstruct", "--tokenizer", str(world / "rt"), "--dataset", "digits", "--out", bad],
        ["interpolate", "--tokenizer", str(world / "rt"), "--dataset", "digits", "--out", bad + "/strip.png"],
        ["eval", "linear-probe", "--extractor", "pixels", "--dataset", "digits", "--run-dir", bad],
        ["eval", "few-shot", "--extractor", "pixels", "--dataset", "digits", "--run-dir", bad],
        ["eval", "knn", "--extractor", "pixels", "--dataset", "digits", "--run-dir", bad],
        ["eval", "transfer", "--extractor", "pixels", "--dataset", "digits", "--run-dir", bad],
        ["eval", "train-extractor", "--dataset", "digits", "--out", bad],
        ["eval", "generation", "--samples", str(world / "none.npz"), "--extractor", "pixels", "--run-dir", bad],
        ["eval", "reconstruction", "--pairs", str(world / "none.npz"), "--run-dir", bad],
        ["pipeline", "--config", "configs/digits-quick.yaml", "--out", bad],
        ["report", bad],
    ]


def test_unwritable_outputs_are_refused_before_any_work(world, capsys) -> None:
    """An output under /proc (a virtual file system: mkdir fails with ENOENT although os.access says yes): one
    line naming the flag, before the command starts (it prints nothing else)."""
    for argv in _outputs_table(world, "/proc/unissl-test/out"):
        capsys.readouterr()
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "/proc/unissl-test" in err[0] and "virtual file system" in err[0], (argv, err)
        assert captured.out == "", (argv, captured.out)  # refused before any work
    assert not Path("/proc/unissl-test").exists()


def test_a_read_only_mount_is_refused_before_any_work(world, tmp_path, capsys) -> None:
    """The same table on a read-only tmpfs (needs root; skipped where mounting is not allowed)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (not root?)")
    try:
        for argv in _outputs_table(world, str(ro / "out")):
            capsys.readouterr()
            assert main(argv) == 2, argv
            captured = capsys.readouterr()
            err = captured.err.strip().splitlines()
            assert len(err) == 1 and "read-only file system" in err[0] and str(ro) in err[0], (argv, err)
            assert captured.out == ""
    finally:
        subprocess.run(["umount", str(ro)], check=False)
