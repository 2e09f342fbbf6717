"""The FID Inception-v3 network: pytorch-fid key layout, safe loading, clear errors, forward shapes."""

from __future__ import annotations

import pytest
import torch

from unissl.errors import UnisslError
from unissl.eval.features import load_extractor
from unissl.eval.frechet import frechet_distance_stats, gaussian_stats
from unissl.eval.inception import WEIGHTS_URL, FIDInceptionV3, build_inception
from unissl.eval.inception import load_extractor as load_inception

# (key, shape) pairs of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision module names).
EXPECTED = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5c.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for m in model.modules():  # non-trivial BN statistics so every key matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_key_layout_matches_pytorch_fid() -> None:
    state = FIDInceptionV3().state_dict()
    for key, shape in EXPECTED.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    n_params = sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
    # torchvision's inception_v3 has 27,161,264 parameters; minus its aux classifier (3,326,696) and plus 8 more
    # fc classes (8 * 2049) gives the FID network's count.
    assert n_params == 27_161_264 - 3_326_696 + 8 * 2049


def test_load_from_file_forward_and_cache_identity(tmp_path) -> None:
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(_random_state(), path)
    ext = load_inception(str(path), torch.device("cpu"), resize_to=75)  # reduced size for speed
    x = torch.rand(3, 1, 20, 20)
    f = ext.features(x.expand(-1, 3, -1, -1))
    p = ext.probs(x.expand(-1, 3, -1, -1))
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # post-ReLU average pool
    assert p.shape == (3, 1008)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    # unbiased logits: the fc bias does not enter the IS probabilities
    torch.testing.assert_close(ext.model(x.expand(-1, 3, -1, -1))[1], f @ ext.model.fc.weight.T)
    assert "75" in ext.identity()
    # FD between dark and bright images through the network is finite and positive, ~0 for a set with itself
    dark, bright = torch.rand(4, 3, 20, 20) * 0.3, 0.7 + torch.rand(4, 3, 20, 20) * 0.3
    # (64 of the 2048 dimensions: the 2048x2048 eigen-decompositions are slow on a shared CPU)
    fd, fb = gaussian_stats(ext.features(dark)[:, :64]), gaussian_stats(ext.features(bright)[:, :64])
    assert frechet_distance_stats(fd, fb) > 0 and frechet_distance_stats(fd, fd) == pytest.approx(0, abs=1e-6)


def test_missing_or_wrong_weights_give_clear_errors(tmp_path) -> None:
    with pytest.raises(UnisslError, match="pt_inception-2015-12-05") as e:
        load_extractor(f"inception:{tmp_path / 'missing.pth'}", "cpu")
    assert WEIGHTS_URL in str(e.value) and "not found" in str(e.value)
    with pytest.raises(UnisslError, match="needs its weights file"):
        load_extractor("inception", "cpu")
    bad = _random_state()
    bad.pop("fc.weight")
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(UnisslError, match="missing \\['fc.weight'\\].*unexpected \\['extra.weight'\\]"):
        build_inception(bad)
    wrong = _random_state()
    wrong["fc.weight"] = torch.zeros(1000, 2048)
    with pytest.raises(UnisslError, match="wrong shapes"):
        build_inception(wrong)
    pickled = tmp_path / "corrupt.pth"
    pickled.write_bytes(b"not a zip")
    with pytest.raises(UnisslError, match="corrupt.pth is corrupt or not a torch weights file"):
        load_extractor(f"inception:{pickled}", "cpu")
