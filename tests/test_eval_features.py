"""Feature extraction, the on-disk cache, image adaptation, the extractor registry and the results table."""

from __future__ import annotations

import json

import pytest
import torch

from unissl.data import build_dataset
from unissl.errors import UnisslError
from unissl.eval import features as feat_mod
from unissl.eval.features import (
    PixelExtractor,
    adapt_images,
    cache_path,
    extract_features,
    features_of,
    load_extractor,
)
from unissl.eval.results import record_result


class CountingExtractor(PixelExtractor):
    """Pixels, but counts the images it has seen (to prove the cache is used)."""

    def __init__(self, tag: str = "a", size: int | None = None, channels: int | None = None) -> None:
        super().__init__(size, channels)
        self.seen = 0
        self.tag = tag

    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += images.shape[0]
        return super().features(images) * 2.0

    def identity(self) -> str:
        return f"counting-{self.tag}-{self.input_size}-{self.input_channels}"


def test_extract_features_and_cache_round_trip(tmp_path) -> None:
    ds = build_dataset("digits", "test")
    ext = CountingExtractor()
    f, y = extract_features(ext, ds, batch_size=50, cache_dir=tmp_path)
    ref = ds.__getitems__(list(range(len(ds))))
    assert f.dtype == torch.float32 and f.shape == (len(ds), 64)
    torch.testing.assert_close(f, ref["image"].flatten(1) * 2.0)
    assert torch.equal(y, ref["label"])
    assert ext.seen == len(ds)
    f2, y2 = extract_features(ext, ds, batch_size=50, cache_dir=tmp_path)  # from the cache file
    assert ext.seen == len(ds) and torch.equal(f, f2) and torch.equal(y, y2)
    # another identity or another split misses the cache
    other = CountingExtractor("b")
    extract_features(other, ds, batch_size=50, cache_dir=tmp_path)
    assert other.seen == len(ds)
    assert cache_path(tmp_path, ext, ds) != cache_path(tmp_path, other, ds)
    assert cache_path(tmp_path, ext, ds) != cache_path(tmp_path, ext, build_dataset("digits", "train"))
    # a corrupt cache file is recomputed, not trusted
    cache_path(tmp_path, ext, ds).write_bytes(b"garbage")
    f3, _ = extract_features(ext, ds, batch_size=50, cache_dir=tmp_path)
    assert torch.equal(f3, f) and ext.seen == 2 * len(ds)
    assert not list(tmp_path.glob(".*.tmp"))  # no leftovers of atomic writes


def test_adapt_images_sizes_and_channels() -> None:
    x = torch.rand(2, 1, 8, 8)
    y = adapt_images(x, channels=3, size=16)
    assert y.shape == (2, 3, 16, 16) and torch.equal(y[:, 0], y[:, 2])
    assert 0.0 <= y.min() and y.max() <= 1.0
    rgb = torch.rand(2, 3, 4, 4)
    grey = adapt_images(rgb, channels=1)
    torch.testing.assert_close(grey[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    const = torch.full((1, 1, 28, 28), 0.25)
    torch.testing.assert_close(adapt_images(const, size=8), torch.full((1, 1, 8, 8), 0.25))
    assert adapt_images(x) is x


def test_transfer_adaptation_inside_extraction(tmp_path) -> None:
    ds = build_dataset("digits", "test")
    ext = CountingExtractor(size=28, channels=3)
    f, _ = extract_features(ext, ds, batch_size=64, cache_dir=None)
    assert f.shape == (len(ds), 3 * 28 * 28)
    assert features_of(ext, torch.rand(5, 1, 8, 8), batch_size=2).shape == (5, 3 * 28 * 28)


def test_registry_errors_and_pixels(monkeypatch) -> None:
    ext = load_extractor("pixels", "cpu")
    assert ext.identity().startswith("pixels")
    assert load_extractor("pixels:28", "cpu").input_size == 28
    with pytest.raises(UnisslError, match="unknown feature extractor"):
        load_extractor("nope", "cpu")
    with pytest.raises(UnisslError, match="image size"):
        load_extractor("pixels:abc", "cpu")
    monkeypatch.setitem(feat_mod.EXTRACTORS, "ghost", "unissl.methods.ghost_does_not_exist:load_extractor")
    with pytest.raises(UnisslError, match="not available"):
        load_extractor("ghost:/x", "cpu")
    assert feat_mod.EXTRACTORS["sorcen"] == "unissl.methods.sorcen.features:load_extractor"
    assert feat_mod.EXTRACTORS["reptok"] == "unissl.methods.reptok.features:load_extractor"


def test_record_result_json_and_table(tmp_path) -> None:
    p = record_result(tmp_path, "linear_probe-pixels", {"top1": 84.123456, "top5": 99.0},
                      {"extractor": "pixels", "grid": {"lr=0.1": 80.0}})
    data = json.loads(p.read_text())
    assert data["metrics"]["top1"] == 84.123456 and data["extra"]["grid"] == {"lr=0.1": 80.0}
    record_result(tmp_path, "knn-pixels", {"top1": 85.5})
    lines = (tmp_path / "results.md").read_text().splitlines()
    rows = [ln for ln in lines if ln.startswith("| 20")]
    assert len(rows) == 2 and "top1=84.1235" in rows[0] and "knn-pixels" in rows[1]
    assert "grid" not in rows[0]  # nested values stay in the JSON
    with pytest.raises(UnisslError, match="file-safe"):
        record_result(tmp_path, "../evil", {"a": 1.0})
