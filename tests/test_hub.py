"""Hub-style loading: every saved model reloads from a local directory and, offline, from a populated local
hub cache (built here in the layout huggingface_hub reads), with identical outputs; an id that is not cached
is a one-line error naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from unissl.errors import UnisslError
from unissl.utils.hub import is_repo_id, resolve_pretrained

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache that huggingface_hub uses, offline; returns a function that publishes a directory."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def publish(directory: Path, repo_id: str) -> str:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(directory, repo / "snapshots" / REVISION)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(REVISION)
        return repo_id

    return publish


def test_repo_ids_and_paths(tmp_path, monkeypatch) -> None:
    assert is_repo_id("org/name") and is_repo_id("org/name@v1.0") and is_repo_id("my-org/my.model")
    assert not is_repo_id("/abs/path") and not is_repo_id("./rel/path") and not is_repo_id("single")
    (tmp_path / "org").mkdir()
    assert resolve_pretrained(tmp_path / "org") == tmp_path / "org"  # an existing path is never a repo id
    monkeypatch.chdir(tmp_path)
    assert not is_repo_id("org/missing")  # under an existing local directory: a (missing) local path


def test_every_saved_model_round_trips_through_the_local_hub_cache(tmp_path, hub_cache) -> None:
    from test_reptok_encoders import make_tiny_sorcen_run

    from unissl.eval.domain import DomainClassifier, DomainClassifierConfig, load_classifier, save_classifier
    from unissl.methods.reptok.generator import TokenGeneratorMethod
    from unissl.methods.reptok.mixer import GeneratorConfig
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer
    from unissl.methods.sorcen.run import load_method
    from unissl.tokenizers.vq import VQTokenizer

    torch.manual_seed(0)
    images = torch.rand(3, 1, 16, 16)
    # a Sorcen run (its VQ tokenizer is saved beside it)
    run = Path(make_tiny_sorcen_run(tmp_path))
    vq = VQTokenizer.from_pretrained(tmp_path / "vq")
    assert (tmp_path / "vq" / "README.md").is_file()  # the model card
    vq_hub = VQTokenizer.from_pretrained(hub_cache(tmp_path / "vq", "unissl-test/vq"))
    assert torch.equal(vq.encode(images), vq_hub.encode(images))
    ids = vq.encode(images)
    local, _ = load_method(run)
    remote, _ = load_method(hub_cache(run, "unissl-test/sorcen"))
    assert torch.equal(local.model.encode(ids), remote.model.encode(ids))
    # a RepTok tokenizer
    enc = {"kind": "random", "image_size": 16, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    tok = RepTokTokenizer(RepTokConfig(encoder=enc, image_size=16, channels=1, decoder="tiny", patch_size=4))
    tok.save_pretrained(tmp_path / "reptok")
    tok_hub = RepTokTokenizer.from_pretrained(hub_cache(tmp_path / "reptok", "unissl-test/reptok"))
    assert torch.equal(tok.eval().encode(images), tok_hub.encode(images))
    # a token generator
    gen = TokenGeneratorMethod(GeneratorConfig(token_dim=16, preset="tiny", num_classes=3)).eval()
    gen.save_pretrained(tmp_path / "gen")
    gen_hub = TokenGeneratorMethod.from_pretrained(hub_cache(tmp_path / "gen", "unissl-test/gen"))
    z, t, cond = torch.randn(4, 16), torch.rand(4), {"label": torch.tensor([0, 1, 2, 0])}
    assert torch.equal(gen.velocity(z, t, cond), gen_hub.velocity(z, t, cond))
    # a domain classifier
    clf = DomainClassifier(DomainClassifierConfig(image_size=16, widths=[4, 8], feature_dim=8, num_classes=3)).eval()
    save_classifier(clf, tmp_path / "clf")
    clf_hub, _ = load_classifier(hub_cache(tmp_path / "clf", "unissl-test/clf"))
    assert torch.equal(clf(images), clf_hub.eval()(images))


def test_an_uncached_repo_id_offline_is_one_line(hub_cache, capsys) -> None:
    from unissl.cli import main
    from unissl.tokenizers.vq import VQTokenizer

    with pytest.raises(UnisslError, match="'nobody/missing' is neither a local directory nor an available hub repo"):
        VQTokenizer.from_pretrained("nobody/missing")
    assert main(["sample", "reptok", "--checkpoint", "nobody/missing-gen"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nobody/missing-gen" in err[0] and "HF_HUB_OFFLINE" in err[0]
