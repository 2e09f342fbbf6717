"""RepTok's released presets against outputs the released code wrote (CompVis/RepTok @ 85c3519).

The fixtures (``tests/fixtures/released/reptok_*``) come from ``tools/released/reptok.py``: the release's own
``RepTokLatentRF2D`` (built by hydra from its ``configs/model/reptok.yaml`` at a tiny size) and ``FlowModel`` over
``MLPMixer1D``, with seeded random weights, saved in the release's state-dict layout with inputs, recorded random
draws and outputs. Everything below loads those weights through ``released_to_unissl`` (the key map converters
use) into unissl's ``released-tiny`` presets and compares in fp32.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unissl.engine.method import load_saved_state
from unissl.errors import UnisslError
from unissl.methods.reptok.decoder import DECODER_PRESETS, FlowDecoder
from unissl.methods.reptok.encoders import Dinov2Encoder
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.mixer import GENERATOR_PRESETS, GeneratorConfig, TokenGenerator
from unissl.methods.reptok.projection import cosine_loss
from unissl.methods.reptok.released import released_to_unissl
from unissl.methods.reptok.sampling import SamplingConfig, guided_velocity, sample_tokens
from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
RELEASED = FIXTURES / "released"
TOL = 1e-5


def _split(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(released state, inputs + draws, outputs) of one fixture file."""
    raw = load_file(str(file))
    pick = lambda p: {k[len(p):]: v for k, v in raw.items() if k.startswith(p)}  # noqa: E731
    return pick("state/"), {**pick("input/"), **pick("draw/")}, pick("out/")


def _max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    diff = (got.double() - want.double()).abs().max().item()
    print(f"max abs diff {diff:.3g}")  # shown with pytest -s: the number the fidelity table quotes
    return diff


# --------------------------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tok_fixture() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state, inputs, outs = _split(RELEASED / "reptok_tokenizer.safetensors")
    for k in list(state):  # the frozen target copy was stored once: its tensors are the encoder copy's
        if k.startswith("encoder.dino.model.") and k != "encoder.dino.model.cls_token":
            state["encoder.dino.target_model." + k[len("encoder.dino.model."):]] = state[k]
    return state, inputs, outs


class _IdentitySpace(torch.nn.Module):
    """The fixture's flow runs on given "latents" (the release's autoencoder replaced by the identity)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def tokenizer(tok_fixture, tmp_path_factory) -> RepTokTokenizer:
    """unissl's tokenizer with the released weights: DINOv2 from the hub-format part, the rest from the key map."""
    state, _, _ = tok_fixture
    meta = json.loads((RELEASED / "reptok_tokenizer.json").read_text())
    parts = released_to_unissl(state, "tokenizer", patch_size=meta["decoder"]["patch"])
    hub = tmp_path_factory.mktemp("dino") / "dinov2_tiny_reg4_pretrain.pth"
    torch.save(parts.dinov2, hub)  # what a converter exports: the hub format Dinov2Encoder reads
    encoder = Dinov2Encoder(hub, image_size=meta["model_size"], resize="released")
    c, s, _ = meta["latent"]
    cfg = RepTokConfig(encoder=encoder.spec(), image_size=s, channels=c, decoder="released-tiny",
                       patch_size=meta["decoder"]["patch"], new_registers=meta["nr_new_reg"])
    tok = RepTokTokenizer(cfg, encoder=encoder)
    load_saved_state(tok, parts.state)  # strict, except the frozen backbone (reloaded from the hub file)
    tok.space = _IdentitySpace(tuple(meta["latent"]))  # type: ignore[assignment]
    return tok.eval()


def test_released_reptok_key_map_covers_every_tensor(tok_fixture) -> None:
    state, _, _ = tok_fixture
    parts = released_to_unissl(state, "tokenizer")
    mapped = len(parts.state) + len(parts.dinov2) + len(parts.vae) + len(parts.dropped)
    # every released tensor is accounted for once, except: model.cls_token is both encoder.cls and the hub
    # dict's cls_token (+1), and temp_pos_embed folds into the projection's biases (-1)
    assert mapped == len(state)
    assert torch.equal(parts.state["encoder.cls"], state["encoder.dino.model.cls_token"].reshape(-1))
    assert torch.equal(parts.state["encoder.cls_init"], state["encoder.dino.target_model.cls_token"].reshape(-1))
    with pytest.raises(UnisslError, match="does not know"):
        released_to_unissl({**state, "backbone.extra.weight": torch.zeros(1)}, "tokenizer")
    with pytest.raises(UnisslError, match="no keys under the prefix"):
        released_to_unissl(state, "tokenizer", prefix="first_stage.")


def test_released_reptok_encode_gives_the_released_token(tokenizer, tok_fixture) -> None:
    """Images -> the [cls] token: the release's crop / resize without antialiasing / normalisation, DINOv2 with
    the tuned [cls]; and the cosine regulariser against the frozen target."""
    _, inputs, outs = tok_fixture
    images = (inputs["images"] + 1) / 2  # unissl's images are in [0, 1], the release's in [-1, 1]
    with torch.no_grad():
        z = tokenizer.encode(images)
        z_frozen = tokenizer.encoder.frozen(images)
    assert _max_diff(z, outs["token"]) < TOL
    assert _max_diff(cosine_loss(z, z_frozen), outs["cos_loss"].mean()) < TOL
    assert outs["cos_loss"].mean() > 1e-3  # the tuned [cls] moved the token: the regulariser is not trivially 0
    # a non-square image: the release crops at round((131 - 118) / 2) = 6 (a floor would take 5) and average-pools
    # by 118 // 56 = 2 before its bilinear resize
    with torch.no_grad():
        z_odd = tokenizer.encode((inputs["images_odd"] + 1) / 2)
    assert _max_diff(z_odd, outs["token_odd"]) < TOL
    # the default resize (antialiased, floor offsets) on the same weights is another encoder
    antialiased = Dinov2Encoder(tokenizer.encoder.path, image_size=tokenizer.encoder.image_size)
    with torch.no_grad():
        z_aa = antialiased.encode_with((inputs["images_odd"] + 1) / 2, tokenizer.encoder.cls)
    assert _max_diff(z_aa, outs["token_odd"]) > 100 * TOL


def test_released_reptok_bf16_encode(tokenizer, tok_fixture) -> None:
    """``dtype="bfloat16"``: the backbone under bf16 autocast, near the release's bf16 encoding (weights and images
    cast, ``RepTokImageEncoder``); both are bf16 roundings of the fp32 token, not bit-equal."""
    _, inputs, outs = tok_fixture
    enc = tokenizer.encoder
    bf16 = Dinov2Encoder(enc.path, image_size=enc.image_size, resize="released", dtype="bfloat16")
    assert bf16.spec()["dtype"] == "bfloat16" and "dtype" not in enc.spec()
    with torch.no_grad():
        z16 = bf16.encode_with((inputs["images"] + 1) / 2, enc.cls)
    assert z16.dtype == torch.float32
    scale = outs["token"].abs().max().item()
    gap_release = _max_diff(outs["token_bf16"], outs["token"])  # the release's own bf16 rounding
    gap = _max_diff(z16, outs["token_bf16"])
    assert 0 < _max_diff(z16, outs["token"]) < 0.05 * scale
    assert gap < 2 * gap_release + 1e-3 * scale


def test_released_reptok_condition_folds_the_learned_shift(tokenizer, tok_fixture) -> None:
    """The release adds its learned ``temp_pos_embed`` to the token and puts two new registers beside it before
    the projection; the key map folds the shift into the projection's biases, so the condition is the same."""
    _, _, outs = tok_fixture
    with torch.no_grad():
        h = tokenizer.condition(outs["token"])  # (B, W)
    assert _max_diff(h[:, None], outs["condition"]) < TOL
    # without the fold the condition would differ: the shift is not negligible in the fixture
    assert tokenizer.projection.norm.bias.abs().max() > 0.1


@pytest.mark.parametrize("i", range(4))
def test_released_reptok_decoder_velocity(tokenizer, tok_fixture, i: int) -> None:
    """The decoder's velocity at t in (1, 0.75, 0.3, 0.02): from the images (the release's training path) and
    from the token (its decoder wrapper's path) alike."""
    _, inputs, outs = tok_fixture
    t = torch.full((2,), float(inputs["times"][i]))
    with torch.no_grad():
        v = tokenizer.decoder(inputs["x_t"], t, tokenizer.condition(outs["token"]))
    assert _max_diff(v, outs[f"velocity_from_token_{i}"]) < TOL
    assert _max_diff(v, outs[f"velocity_{i}"]) < TOL


def test_released_reptok_fifty_step_decode(tokenizer, tok_fixture) -> None:
    """``RepTokTokenizer.decode``: 50 Euler steps from the recorded noise, t = 1 -> 0, as the wrapper samples."""
    _, inputs, outs = tok_fixture
    with torch.no_grad():
        x = tokenizer.decode(outs["token"], steps=50, noise=inputs["noise"])
    assert _max_diff(x, outs["decode"]) < TOL


def test_released_reptok_flow_loss_with_recorded_draws(tokenizer, tok_fixture) -> None:
    """The release's per-sample flow loss from its recorded time and noise draws (t = sigmoid(normal))."""
    _, inputs, outs = tok_fixture
    x, t = inputs["latents"], torch.sigmoid(inputs["time_normal"])
    ps = tokenizer.path.sample(x, t, noise=inputs["flow_noise"])
    with torch.no_grad():
        z = tokenizer.encode((inputs["images"] + 1) / 2)
        v = tokenizer.decoder(ps.x_t, t, tokenizer.condition(z))
    loss = (v - ps.target).pow(2).flatten(1).mean(1)
    assert _max_diff(loss, outs["loss_per_sample"]) < TOL


# --------------------------------------------------------------------------------------------- generator
@pytest.fixture(scope="module")
def generator() -> tuple[TokenGeneratorMethod, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state, inputs, outs = _split(RELEASED / "reptok_generator.safetensors")
    meta = json.loads((RELEASED / "reptok_generator.json").read_text())
    sizes = meta["sizes"]
    assert GENERATOR_PRESETS["released-tiny"].width == sizes["dim"]
    assert GENERATOR_PRESETS["released-tiny"].depth == sizes["depth"]
    method = TokenGeneratorMethod(GeneratorConfig(token_dim=sizes["channels"], preset="released-tiny",
                                                  num_classes=sizes["num_classes"]))
    missing, unexpected = method.load_state_dict(released_to_unissl(state, "generator").state, strict=False)
    assert set(missing) == {"z_mean", "z_std"} and not unexpected  # the token statistics are not in the net
    return method.eval(), inputs, outs


@pytest.mark.parametrize("i", range(4))
def test_released_reptok_generator_velocity(generator, i: int) -> None:
    """The mixer's velocity at t in (0, 0.3, 0.7, 1) (t enters unscaled), conditional and guided (scale 1.5)."""
    method, inputs, outs = generator
    cond = {"label": inputs["labels"]}
    z_t, t = inputs["z_t"][:, 0], torch.full((3,), float(inputs["times"][i]))
    with torch.no_grad():
        v = method.velocity(z_t, t, cond)
        vg = guided_velocity(method.velocity, cond, method.null_condition(cond), 1.5, (0.0, 1.0))(z_t, t)
    assert _max_diff(v, outs[f"velocity_{i}"][:, 0]) < TOL
    assert _max_diff(vg, outs[f"velocity_guided_{i}"][:, 0]) < TOL


def test_released_reptok_guided_sample(generator) -> None:
    """``sample_tokens`` with the release's guidance (1.5 on [0.3, 0.9], 50 steps) on its float32 time grid, where
    t = 0.29999998 is outside the interval; and without guidance."""
    method, inputs, outs = generator
    cond, noise = {"label": inputs["labels"]}, inputs["noise"][:, 0]
    guided = SamplingConfig(steps=50, cfg_scale=1.5, cfg_interval=(0.3, 0.9))  # time_grid "model": float32
    with torch.no_grad():
        z = sample_tokens(method, cond, guided, noise=noise)
        z_plain = sample_tokens(method, cond, SamplingConfig(steps=50, cfg_scale=1.0), noise=noise)
        z64 = sample_tokens(method, cond, SamplingConfig(steps=50, cfg_scale=1.5, cfg_interval=(0.3, 0.9),
                                                         time_grid="float64"), noise=noise)
    assert _max_diff(z, outs["sample_guided"][:, 0]) < TOL
    assert _max_diff(z_plain, outs["sample_unguided"][:, 0]) < TOL
    # the grid matters: on a float64 grid t = 0.3 is guided, one step more than the release guides
    assert _max_diff(z64, outs["sample_guided"][:, 0]) > 100 * TOL


def test_released_float32_grid_leaves_point_three_outside() -> None:
    from unissl.flow import time_grid

    t = time_grid(0.0, 1.0, 50, torch.float32)[15]
    assert t.item() == pytest.approx(0.3, abs=1e-7) and bool(t < 0.3)  # 0.29999998
    assert not bool(time_grid(0.0, 1.0, 50)[15].float() < 0.3)


# --------------------------------------------------------------------------------------------- existing presets
def _layout_hash(state: dict[str, torch.Tensor]) -> str:
    lines = "\n".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def test_existing_presets_keep_their_saved_layout() -> None:
    """Every decoder and generator preset that existed before the released presets builds exactly the state-dict
    keys and shapes it had then (recorded by the code of commit 5d636b6), so their saved models still load."""
    ref = json.loads((FIXTURES / "reptok_preset_layouts.json").read_text())
    with torch.device("meta"):
        for name, want in ref["decoder"].items():
            sd = FlowDecoder(DECODER_PRESETS[name], **ref["decoder_args"]).state_dict()
            assert (len(sd), _layout_hash(sd)) == (want["keys"], want["sha256"]), name
        for name, want in ref["generator"].items():
            sd = TokenGenerator(GeneratorConfig(preset=name, **ref["generator_args"])).state_dict()
            assert (len(sd), _layout_hash(sd)) == (want["keys"], want["sha256"]), name


def test_train_flags_select_the_released_dinov2_input(tokenizer) -> None:
    """``train reptok-tokenizer --encoder-resize released --encoder-dtype bfloat16`` reach the built encoder."""
    from unissl.commands.train_reptok_tokenizer import Config, encoder_spec
    from unissl.methods.reptok.encoders import build_encoder

    path = tokenizer.encoder.path
    plain = encoder_spec(Config(encoder="dinov2", encoder_path=path, encoder_image_size=56), 28, 0)
    assert "resize" not in plain and "dtype" not in plain  # existing tokenizers' configs stay as they were
    spec = encoder_spec(Config(encoder="dinov2", encoder_path=path, encoder_image_size=56, encoder_resize="released",
                               encoder_dtype="bfloat16"), 28, 0)
    enc = build_encoder(spec)
    assert (enc.resize, enc.dtype) == ("released", "bfloat16") and enc.spec() == spec


def test_released_xl_presets_hold_the_paper_size_release() -> None:
    """At paper size (the release's yaml as it is; the paper's MLPMixer1D), every released tensor maps onto the
    ``released-xl`` presets with exactly unissl's keys and shapes (meta device: shapes only)."""
    from unissl.methods.reptok.projection import ResidualProjection

    layout = json.loads((RELEASED / "reptok_paper_layout.json").read_text())
    with torch.device("meta"):
        tok = {k: torch.empty(v) for k, v in layout["tokenizer_shapes"].items()}
        gen = {k: torch.empty(v) for k, v in layout["generator_shapes"].items()}
        parts = released_to_unissl(tok, "tokenizer", patch_size=2)
        decoder = FlowDecoder(DECODER_PRESETS["released-xl"], channels=4, size=32, patch_size=2)
        projection = ResidualProjection(768, DECODER_PRESETS["released-xl"].width)
        net = TokenGenerator(GeneratorConfig(token_dim=768, preset="released-xl", num_classes=1000))
        gen_state = released_to_unissl(gen, "generator").state
        paper = FlowDecoder(DECODER_PRESETS["paper"], channels=4, size=32, patch_size=2).state_dict()
    want = {f"decoder.{k}": list(v.shape) for k, v in decoder.state_dict().items()}
    want |= {f"projection.{k}": list(v.shape) for k, v in projection.state_dict().items()}
    want |= {"encoder.cls": [768], "encoder.cls_init": [768], "new_registers": [2, 768]}
    assert {k: list(v.shape) for k, v in parts.state.items()} == want
    assert {k: list(v.shape) for k, v in gen_state.items()} == {f"net.{k}": list(v.shape)
                                                                for k, v in net.state_dict().items()}
    # the paper preset is not the release: no shared Linear, another time width, a gated norm
    assert "in_proj.weight" not in paper and paper["blocks.0.norm1.proj.weight"].shape[1] == 256
