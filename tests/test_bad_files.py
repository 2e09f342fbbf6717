"""The last bad inputs (tests/test_bad_inputs.py has the rest): a damaged ``.safetensors`` *file* given directly
where a tokenizer, an Inception extractor or a converter's input goes, and a transformers / diffusers directory
whose pickled weights file would run code. Each is exit 2 and ONE ``unissl: error:`` line naming the file,
nothing written, and the pickle never unpickled."""

from __future__ import annotations

import collections
import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_bad_inputs import Evil, _damage, _one_line_error


def _convert(argv: list[str]) -> int:
    from unissl.methods.sorcen.convert import main as convert_main

    return convert_main(argv)


# (row name, command line; {f} is the damaged file, {o} a fresh output path)
FILE_ROWS = [
    ("tokenize", ["tokenize", "--tokenizer", "{f}", "--dataset", "digits", "--out", "{o}"]),
    ("mage-c tokenizer", ["train", "sorcen", "--method", "mage-c", "--dataset", "digits", "--tokenizer", "{f}",
                          "--preset", "tiny", "--train.steps", "1", "--train.run-dir", "{o}"]),
    ("inception extractor", ["eval", "knn", "--extractor", "inception:{f}", "--dataset", "digits", "--run-dir", "{o}"]),
    ("reconstruct", ["reconstruct", "--tokenizer", "{f}", "--dataset", "digits", "--out", "{o}"]),
    ("convert reptok", ["convert", "reptok", "--ckpt", "{f}", "--out", "{o}"]),
]


@pytest.mark.parametrize("how", ["header", "cut"])
@pytest.mark.parametrize("row", FILE_ROWS, ids=[r[0] for r in FILE_ROWS])
def test_a_damaged_safetensors_file_given_directly_is_one_line(tmp_path, capsys, row, how) -> None:
    bad = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(4096)}, str(bad))
    _damage(bad, how)
    data, out = bad.read_bytes(), tmp_path / "out"
    err = _one_line_error(capsys, [a.replace("{f}", str(bad)).replace("{o}", str(out)) for a in row[1]])
    assert str(bad) in err and ("corrupt" in err or "damaged" in err or "not a torch.save" in err), err
    assert not out.exists() and bad.read_bytes() == data


@pytest.mark.parametrize("how", ["header", "cut"])
def test_a_damaged_safetensors_file_given_to_the_sorcen_converter_is_one_line(tmp_path, capsys, how) -> None:
    """Was a SafetensorError traceback (torch.load reads safetensors and raises its own error)."""
    bad = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(4096)}, str(bad))
    _damage(bad, how)
    capsys.readouterr()
    assert _convert([str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "corrupt" in err[0], err
    # an intact file of foreign weights: named, not a KeyError
    save_file({"w": torch.zeros(4)}, str(bad))
    assert _convert([str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MAGE / Sorcen encoder" in err[0], err
    assert not (tmp_path / "out").exists()


def _evil_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(collections.OrderedDict(w=Evil()), buf)
    return buf.getvalue()


def test_a_code_pickle_inside_a_transformers_or_diffusers_directory_is_one_line(tmp_path, capsys) -> None:
    """``pytorch_model.bin`` / ``diffusion_pytorch_model.bin`` that pickle an object: refused with one line naming
    the file, before transformers / diffusers see it; the object is never built."""
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    from unissl.methods.reptok.tiny import save_random_autoencoder_kl, save_random_dinov2

    dino, vae = save_random_dinov2(tmp_path / "dino"), save_random_autoencoder_kl(tmp_path / "vae")
    for directory, name in ((dino, "pytorch_model.bin"), (vae, "diffusion_pytorch_model.bin")):
        for f in directory.glob("*.safetensors"):
            f.unlink()
        (directory / name).write_bytes(_evil_bytes())
    Evil.built = 0
    out = tmp_path / "out"
    rows = [
        (dino / "pytorch_model.bin", ["train", "reptok-tokenizer", "--encoder", "dinov2", "--encoder-path", str(dino),
                                      "--dataset", "digits", "--train.steps", "1", "--train.run-dir", str(out)]),
        (vae / "diffusion_pytorch_model.bin", ["train", "reptok-tokenizer", "--encoder", "random", "--model.space",
                                               "vae", "--model.vae-path", str(vae), "--dataset", "digits",
                                               "--train.steps", "1", "--train.run-dir", str(out)]),
    ]
    for bad, argv in rows:
        err = _one_line_error(capsys, argv)
        assert str(bad) in err and "not a plain weights file" in err and "not execute" in err, err
        assert not out.exists()
    assert Evil.built == 0
    # the library calls alike (the VAE loader, the DINOv2 adapter)
    from unissl.errors import UnisslError
    from unissl.methods.reptok.encoders import build_encoder
    from unissl.methods.reptok.spaces import load_autoencoder_kl

    for call in (lambda: load_autoencoder_kl(vae), lambda: build_encoder({"kind": "dinov2", "path": str(dino)})):
        with pytest.raises(UnisslError, match="not a plain weights file"):
            call()
    assert Evil.built == 0 and not Path(out).exists()
