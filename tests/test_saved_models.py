"""One save/load convention for every saved model (utils/hub.py: PretrainedMixin): each one, copied elsewhere,
loads from another working directory and through a local hub cache with identical outputs; the frozen parts
it needs travel inside it (a RepTok tokenizer's Sorcen encoder and that encoder's VQ tokenizer, a generator's
tokenizer), never as a path relative to where training ran. Version-0 directories (today's format before this
convention) still load where their paths resolve, and elsewhere say in one line how to convert them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_hub import hub_cache  # noqa: F401 - the fixture
from test_reptok_encoders import make_tiny_sorcen_run

from unissl.errors import UnisslError

IMAGES = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def _train_dir(tmp_path: Path, monkeypatch) -> Path:
    """A 'training' directory holding a Sorcen run and a RepTok tokenizer over it, referenced as relative
    paths (as `configs/digits-quick.yaml` does: runs/digits-quick/sorcen)."""
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    work = tmp_path / "train"
    work.mkdir()
    monkeypatch.chdir(work)
    make_tiny_sorcen_run(Path("."))  # ./run (sorcen.json names its tokenizer as ./vq)
    torch.manual_seed(1)
    tok = RepTokTokenizer(RepTokConfig(encoder={"kind": "sorcen", "path": "run"}, image_size=16, channels=1,
                                       decoder="tiny", patch_size=4))
    tok.save_pretrained("tok")
    return work


def test_a_copied_reptok_tokenizer_and_generator_load_from_another_directory(tmp_path, monkeypatch,
                                                                             hub_cache) -> None:  # noqa: F811
    import unissl
    from unissl.methods.reptok.generator import TokenGeneratorMethod
    from unissl.methods.reptok.mixer import GeneratorConfig
    from unissl.methods.reptok.tokenizer import RepTokTokenizer

    work = _train_dir(tmp_path, monkeypatch)
    tok = RepTokTokenizer.from_pretrained("tok")
    z = tok.encode(IMAGES)
    meta = json.loads((work / "tok" / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["config"]["encoder"]["path"] == ""  # no training path inside
    assert (work / "tok" / "encoder" / "tokenizer" / "model.safetensors").is_file()  # encoder and its VQ inside
    gen = TokenGeneratorMethod(GeneratorConfig(token_dim=z.shape[1], preset="tiny", num_classes=3,
                                               tokenizer_path="tok")).eval()
    gen.save_pretrained("gen")
    # copied elsewhere, loaded from another working directory: the training directory is gone
    shutil.copytree(work / "tok", tmp_path / "moved" / "tok")
    shutil.copytree(work / "gen", tmp_path / "moved" / "gen")
    shutil.rmtree(work)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    tok2 = unissl.load_reptok(tmp_path / "moved" / "tok", device="cpu")
    assert torch.equal(tok2.encode(IMAGES), z)
    g2 = unissl.load_generator(tmp_path / "moved" / "gen", device="cpu")
    assert g2.method.cfg.tokenizer_path == str(tmp_path / "moved" / "gen" / "tokenizer")
    assert torch.equal(g2.tokenizer.encode(IMAGES), z)
    zt, t, cond = torch.randn(2, z.shape[1]), torch.rand(2), {"label": torch.tensor([0, 2])}
    assert torch.equal(g2.method.velocity(zt, t, cond), gen.velocity(zt, t, cond))
    assert g2.sample(classes=[1], n=2, steps=2, decode_steps=2).shape == (2, 1, 16, 16)
    # and through the local hub cache, by repo id
    tok3 = RepTokTokenizer.from_pretrained(hub_cache(tmp_path / "moved" / "tok", "unissl-test/tok"))
    assert torch.equal(tok3.encode(IMAGES), z)
    g3 = unissl.load_generator(hub_cache(tmp_path / "moved" / "gen", "unissl-test/gen"), device="cpu")
    assert torch.equal(g3.tokenizer.encode(IMAGES), z)
    # a generator whose tokenizer came from the hub names it by id + checksum instead of holding a copy
    gen.cfg.tokenizer_path = "unissl-test/tok"
    gen.save_pretrained(tmp_path / "gen-ref")
    meta = json.loads((tmp_path / "gen-ref" / "config.json").read_text())
    assert meta["frozen"]["tokenizer"]["hub_id"] == "unissl-test/tok" and not (tmp_path / "gen-ref" / "tokenizer").exists()
    g4 = unissl.load_generator(tmp_path / "gen-ref", device="cpu")
    assert torch.equal(g4.tokenizer.encode(IMAGES), z)
    meta["frozen"]["tokenizer"]["checksum"] = "0" * 64  # saved with other tokenizer weights than the hub holds
    (tmp_path / "gen-ref" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UnisslError, match="has other weights than the one it was saved with"):
        unissl.load_generator(tmp_path / "gen-ref", device="cpu")


def test_every_saved_model_copies_and_round_trips_through_the_hub_cache(tmp_path, monkeypatch,
                                                                        hub_cache) -> None:  # noqa: F811
    import unissl
    from unissl.eval.domain import DomainClassifier, DomainClassifierConfig, load_classifier, save_classifier
    from unissl.methods.sorcen.pretrained import PretrainedSorcen
    from unissl.tokenizers.vq import VQTokenizer

    work = _train_dir(tmp_path, monkeypatch)
    enc = unissl.load_sorcen("run", device="cpu")
    feats = enc.features(IMAGES)
    PretrainedSorcen.from_run("run").save_pretrained("sorcen")
    vq = VQTokenizer.from_pretrained("vq")
    ids = vq.encode(IMAGES)
    clf = DomainClassifier(DomainClassifierConfig(image_size=16, widths=[4, 8], feature_dim=8, num_classes=3)).eval()
    save_classifier(clf, "clf", {"metrics": {"acc": 0.5}})
    for name in ("sorcen", "vq", "clf"):
        assert json.loads((work / name / "config.json").read_text())["format_version"] == 1
        assert (work / name / "README.md").is_file()  # the model card
        shutil.copytree(work / name, tmp_path / "moved" / name)
    shutil.rmtree(work)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = tmp_path / "moved"
    for source in (moved / "sorcen", hub_cache(moved / "sorcen", "unissl-test/sorcen")):
        assert torch.equal(unissl.load_sorcen(source, device="cpu").features(IMAGES), feats)
        assert unissl.load_sorcen(source, device="cpu").sample(2, steps=2).shape == (2, 1, 16, 16)
    for source in (moved / "vq", hub_cache(moved / "vq", "unissl-test/vq")):
        assert torch.equal(VQTokenizer.from_pretrained(source, device="cpu").encode(IMAGES), ids)
    for source in (moved / "clf", hub_cache(moved / "clf", "unissl-test/clf")):
        back, digest = load_classifier(source)
        assert torch.equal(back(IMAGES), clf(IMAGES)) and len(digest) == 16
    # a saved encoder is the model without its training heads: the whole method needs the run
    from unissl.methods.sorcen.run import load_method

    with pytest.raises(UnisslError, match="saved Sorcen encoder"):
        load_method(moved / "sorcen")


def _as_version0(tok_dir: Path, encoder_path: str) -> None:
    """Rewrite a saved tokenizer's config.json as the format before this convention wrote it."""
    meta = json.loads((tok_dir / "config.json").read_text())
    meta = {"format": meta["format"], "config": {**meta["config"], "encoder": {"kind": "sorcen", "path": encoder_path}},
            "backbone_checksum": meta["backbone_checksum"]}
    (tok_dir / "config.json").write_text(json.dumps(meta))
    shutil.rmtree(tok_dir / "encoder")


def test_version0_directories_load_where_they_resolve_and_convert_in_one_command(tmp_path, monkeypatch,
                                                                                capsys) -> None:
    from unissl.cli import main
    from unissl.methods.reptok.tokenizer import RepTokTokenizer
    from unissl.utils.upgrade import main as upgrade

    work = _train_dir(tmp_path, monkeypatch)
    z = RepTokTokenizer.from_pretrained("tok").encode(IMAGES)
    _as_version0(work / "tok", "run")
    assert torch.equal(RepTokTokenizer.from_pretrained("tok").encode(IMAGES), z)  # from where it was trained
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(UnisslError) as info:
        RepTokTokenizer.from_pretrained(work / "tok")
    msg = str(info.value)
    assert "format version 0" in msg and "'run'" in msg and "python -m unissl.utils.upgrade" in msg
    assert "--encoder-path" in msg  # a flag of the command it names
    assert main(["reconstruct", "--tokenizer", str(work / "tok")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python -m unissl.utils.upgrade" in err[0], err
    # the advice, followed: from the training directory, then the result loads anywhere
    monkeypatch.chdir(work)
    assert upgrade([str(work / "tok"), str(tmp_path / "new")]) == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    shutil.rmtree(work / "run")
    assert torch.equal(RepTokTokenizer.from_pretrained(tmp_path / "new").encode(IMAGES), z)
    # --encoder-path of the upgrade command points a version-0 tokenizer at its moved encoder
    assert upgrade([str(work / "tok"), str(tmp_path / "new2"), "--encoder-path", str(tmp_path / "new" / "encoder")]) == 0
    assert torch.equal(RepTokTokenizer.from_pretrained(tmp_path / "new2").encode(IMAGES), z)


def test_train_sorcen_ends_with_a_saved_encoder_that_loads_anywhere(tmp_path, monkeypatch) -> None:
    import unissl
    from unissl.cli import main
    from unissl.tokenizers.vq import VQTokenizer, preset

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    VQTokenizer(preset("digits")).save_pretrained("vq")
    common = ["--no-train.progress", "--no-train.tensorboard", "--train.num-workers", "0"]
    assert main(["tokenize", "--tokenizer", "vq", "--out", "tokens", "--dataset", "digits", "--no-progress"]) == 0
    assert main(["train", "sorcen", "--tokens", "tokens", "--preset", "tiny", "--train.steps", "2",
                 "--train.global-batch", "16", "--train.run-dir", "run", *common]) == 0
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    feats = unissl.load_sorcen("run", device="cpu").features(images)
    shutil.copytree("run/encoder", tmp_path / "moved")
    shutil.rmtree("run")
    shutil.rmtree("vq")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert torch.equal(unissl.load_sorcen(tmp_path / "moved", device="cpu").features(images), feats)


def test_a_dinov2_encoder_and_a_vae_travel_inside_the_tokenizer(tmp_path, monkeypatch, hub_cache) -> None:  # noqa: F811
    """Frozen parts from local directories are saved inside (encoder/: a transformers directory, vae/: a
    diffusers one); the same parts from the hub are named by id + checksum and resolved through the cache."""
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    from unissl.methods.reptok.tiny import save_random_autoencoder_kl, save_random_dinov2
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    save_random_dinov2(tmp_path / "dino", image_size=16)
    save_random_autoencoder_kl(tmp_path / "vae")
    torch.manual_seed(0)
    tok = RepTokTokenizer(RepTokConfig(encoder={"kind": "dinov2", "path": str(tmp_path / "dino"), "image_size": 16},
                                       image_size=16, channels=1, decoder="tiny", patch_size=2, space="vae",
                                       vae_path=str(tmp_path / "vae"))).eval()
    z = tok.encode(IMAGES)
    tok.save_pretrained(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["frozen"]["encoder"]["dir"] == "encoder" and meta["frozen"]["vae"]["dir"] == "vae"
    shutil.copytree(tmp_path / "tok", tmp_path / "moved")
    for d in ("dino", "vae", "tok"):
        shutil.rmtree(tmp_path / d)
    monkeypatch.chdir(tmp_path / "moved")
    back = RepTokTokenizer.from_pretrained(tmp_path / "moved")
    assert torch.equal(back.encode(IMAGES), z)
    noise = torch.randn(3, *back.space.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(back.decode(z, steps=2, noise=noise), tok.decode(z, steps=2, noise=noise))
    # the same frozen parts taken from the hub: referenced, not copied
    dino_id = hub_cache(tmp_path / "moved" / "encoder", "someone/dino")
    vae_id = hub_cache(tmp_path / "moved" / "vae", "someone/vae")
    from unissl.utils.hub import resolve_pretrained

    ref = RepTokTokenizer(RepTokConfig(encoder={"kind": "dinov2", "path": str(resolve_pretrained(dino_id)),
                                                "image_size": 16}, image_size=16, channels=1, decoder="tiny",
                                       patch_size=2, space="vae", vae_path=str(resolve_pretrained(vae_id))))
    ref.save_pretrained(tmp_path / "ref")
    meta = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert meta["frozen"]["encoder"]["hub_id"].startswith("someone/dino@") and not (tmp_path / "ref" / "encoder").exists()
    assert meta["frozen"]["vae"]["hub_id"].startswith("someone/vae@") and not (tmp_path / "ref" / "vae").exists()
    assert torch.equal(RepTokTokenizer.from_pretrained(tmp_path / "ref").eval().encode(IMAGES), ref.eval().encode(IMAGES))
