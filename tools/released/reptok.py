"""Golden fixtures written by the released RepTok (CompVis/RepTok @ 85c3519).

Each writer builds the release's own classes at small widths with seeded random weights (every parameter drawn,
so the zero-initialised projections, gains and the learned shift are non-trivial), runs them in fp32 on the CPU
and saves one safetensors file (weights in the release's state-dict layout under ``state/``, inputs under
``input/``, recorded random draws under ``draw/``, outputs under ``out/``) and a JSON file with the commit, the
sizes and the settings:

    reptok_tokenizer   ``RepTokLatentRF2D`` instantiated by hydra from the release's ``configs/model/reptok.yaml``
                       with small sizes (a 64-wide, 2-block DINOv2-with-registers of the release's own
                       ``DinoVisionTransformer``; decoder width 64, depth 2, head 16, mapping width 32; 3 x 8 x 8
                       "latents", patch 2): the [cls] token of ``DINOFeatureEncoder.forward`` (the release's resize
                       and normalisation) (also of a non-square 131 x 118 image: the crop and the average pooling) and its cosine loss to the frozen
                       target, the condition of
                       ``get_conditioning`` (learned shift, new registers, projection), the decoder velocity at
                       four times, the 50-step decode of ``RepTokDecoderWrapper.sample`` from the token, and the
                       training loss of ``RF.forward`` with its time and noise draws recorded.
    reptok_generator   ``FlowModel`` over ``MLPMixer1D`` (token 64, width 64, depth 2, 10 classes): the velocity
                       at four times (conditional and null class), ``generate_with_cfg_interval`` (50 steps, scale
                       1.5 on [0.3, 0.9]) and ``generate`` without guidance, from recorded noise.
    reptok_paper_layout  key -> shape of the release at paper size (the yaml as released; the paper's MLPMixer1D),
                       built on the meta device: what the ``released-xl`` presets must hold.

What is changed from the released setting, all outside the released files: ``torch.hub.load`` returns the tiny
DINOv2 (no download) and ``impl_call`` names a builder of the same size registered on the release's module; the
autoencoder is replaced by the identity (the flow runs on given "latents"; the VAE is diffusers' own); the
released ``DinoVisionTransformer`` hard-codes 37 x 37 + 1 positions (518 px), so the images are encoded at 56 px
(a 4 x 4 grid, position embeddings interpolated as the release does); torchvision's ``center_crop`` and
``normalize`` (absent here) are supplied as torchvision computes them; the target DINOv2 copy's tensors other
than its [cls] are stored once (they are the encoder copy's, ``target_copy`` in the JSON says so).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

try:
    from env import PINNED, activate
except ImportError:  # imported as tools.released.reptok
    from .env import PINNED, activate

DINO = {"patch_size": 14, "embed_dim": 64, "depth": 2, "num_heads": 1, "mlp_ratio": 2, "num_register_tokens": 4,
        "interpolate_antialias": True, "interpolate_offset": 0.0}  # vit_base_reg's settings at a tiny width
MODEL_SIZE, IMAGE_SIZE = 56, 64  # DINOv2 input side; the images' side (resized 64 -> 56 without antialiasing)
LATENT = (3, 8, 8)  # the flow's data (C, H, W); patch 2 -> a 4 x 4 grid
DECODER = {"width": 64, "depth": 2, "d_head": 16, "mapping_width": 32, "mapping_depth": 2, "patch": 2}
GENERATOR = {"channels": 64, "dim": 64, "depth": 2, "expansion_factor": 3, "expansion_factor_token": 4,
             "num_classes": 10, "class_dropout_prob": 0.1}
DECODER_TIMES = (1.0, 0.75, 0.3, 0.02)
GENERATOR_TIMES = (0.0, 0.3, 0.7, 1.0)


def size_release_config(m: Any, latent: tuple[int, int, int], decoder: dict[str, int], model_size: int,
                        embed_dim: int, impl_call: str) -> None:
    """Shrink the release's ``configs/model/reptok.yaml`` ``model`` node in place to the given CPU sizes."""
    m.val_shape = list(latent)
    m.mapping.width, m.mapping.depth = decoder["mapping_width"], decoder["mapping_depth"]
    m.encoder.dino.impl_call = impl_call
    m.encoder.dino.model_size, m.encoder.dino.embed_dim = model_size, embed_dim
    m.backbone.in_features = m.backbone.out_features = latent[0]
    m.backbone.main_level.width, m.backbone.main_level.depth = decoder["width"], decoder["depth"]
    m.backbone.main_level.layer_params.d_head = decoder["d_head"]
    grid = latent[1] // decoder["patch"]
    m.backbone.main_level.proj_params.out_params.unflatten = {"h": grid, "w": grid}


def _randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every trainable-shaped parameter drawn: matrices ~ N(0, 1/fan_in) (the adaptive-norm maps at 0.3 of that),
    tokens / positions / shift ~ N(0, 0.5^2), gains ~ 1 + N(0, 0.2^2), attention temperatures ~ 10 (1 + N(0, 0.1^2)),
    biases ~ N(0, 0.1^2). The fixed RoPE frequencies and the Fourier buffer keep the release's values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_emb.freqs"):
                continue
            noise = torch.randn(p.shape, generator=gen)
            if any(s in name for s in ("token", "pos_embed", "temp_pos_embed", "new_reg")):
                p.copy_(0.5 * noise)
            elif name.endswith("self_attn.scale"):
                p.copy_(10.0 * (1 + 0.1 * noise))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(noise / fan_in**0.5 * (0.3 if "norm.linear" in name else 1.0))
            elif name.endswith(("scale", "gamma")) or ("norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)


class IdentityLatent(torch.nn.Module):
    """Stands in for the release's ``AutoencoderKL``: the flow's data are the given "latents"."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


@contextlib.contextmanager
def _recorded_draws(record: list[torch.Tensor]) -> Iterator[None]:
    """Record every ``torch.randn`` / ``torch.randn_like`` result drawn inside (the release's time and noise)."""
    randn, randn_like = torch.randn, torch.randn_like

    def rec(fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = fn(*args, **kwargs)
            record.append(out.clone())
            return out
        return wrapped

    torch.randn, torch.randn_like = rec(randn), rec(randn_like)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.randn, torch.randn_like = randn, randn_like  # type: ignore[assignment]


def _tokenizer_model(enc: Any, dino_state: dict[str, torch.Tensor]) -> Any:
    """The release's RepTokLatentRF2D from its own config file, sizes overridden, the tiny DINOv2 behind the hub."""
    import hydra
    from omegaconf import OmegaConf

    enc.vit_tiny_reg_fixture = partial(enc.DinoVisionTransformer, **DINO)  # what impl_call locates

    def hub_load(*_args: Any, **_kwargs: Any) -> torch.nn.Module:
        model = enc.vit_tiny_reg_fixture()
        model.load_state_dict(dino_state)
        return model

    enc.omegaconf_resolvers()
    conf = OmegaConf.load(Path(enc.__file__).parents[2] / "configs" / "model" / "reptok.yaml")
    m = conf.model
    size_release_config(m, LATENT, DECODER, MODEL_SIZE, DINO["embed_dim"], "reptok.encoder.encoder.vit_tiny_reg_fixture")
    m.ae = None
    hub = torch.hub.load
    torch.hub.load = hub_load  # type: ignore[assignment]
    try:
        model = hydra.utils.instantiate(m)
    finally:
        torch.hub.load = hub
    model.ae = IdentityLatent()
    return model


def write_reptok_tokenizer(out: Path, enc: Any) -> list[Path]:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(28_01)
    torch.manual_seed(28_02)  # the release's own initialisers (RoPE, Fourier buffer, new registers)
    dino = enc.DinoVisionTransformer(**DINO)  # the "pretrained" DINOv2 (hub layout)
    _randomise(dino, gen)
    model = _tokenizer_model(enc, dino.state_dict()).eval()
    _randomise(model, gen)
    dino_mod = model.encoder.dino
    with torch.no_grad():  # the frozen target keeps the pretrained weights; only the encoder's [cls] is tuned
        dino_mod.target_model.load_state_dict(dino.state_dict())
        assert not torch.equal(dino_mod.model.cls_token, dino_mod.target_model.cls_token)
        for k, v in dino_mod.model.state_dict().items():  # the randomiser drew the encoder copy: keep it pretrained
            if k != "cls_token":
                v.copy_(dino.state_dict()[k])
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    target_copy = [k for k in state if k.startswith("encoder.dino.target_model.") and not k.endswith("cls_token")]
    for k in target_copy:
        assert torch.equal(state[k], state["encoder.dino.model." + k[len("encoder.dino.target_model."):]])
        del state[k]

    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2 - 1  # the release's [-1, 1] input
    x_t = torch.randn(2, *LATENT, generator=gen)
    noise = torch.randn(2, *LATENT, generator=gen)
    latents = torch.randn(2, *LATENT, generator=gen)
    odd = torch.rand(1, 3, 131, 118, generator=gen) * 2 - 1  # crop offset round(6.5) = 6, pooled by 118 // 56 = 2
    tensors: dict[str, torch.Tensor] = {f"state/{k}": v for k, v in state.items()}
    tensors.update({"input/images": images, "input/images_odd": odd, "input/x_t": x_t, "input/noise": noise, "input/latents": latents,
                    "input/times": torch.tensor(DECODER_TIMES)})
    wrapper = enc.RepTokDecoderWrapper(model)
    with torch.no_grad():
        token = enc.DINOFeatureEncoder.forward(dino_mod, images)[:, 0]  # (B, D): the [cls] after the final norm
        tensors["out/token_odd"] = enc.DINOFeatureEncoder.forward(dino_mod, odd)[:, 0].contiguous()
        # RepTokImageEncoder's bf16 encoding (weights and images in bf16), here on the tiny DINOv2 with its [cls]
        bf16 = enc.DinoVisionTransformer(**DINO)
        bf16.load_state_dict(dino_mod.model.state_dict())
        bf16 = bf16.to(torch.bfloat16).eval()
        x16 = enc.better_resize(images.to(torch.bfloat16), MODEL_SIZE)
        x16 = enc.TVTF.normalize((x16 + 1.0) / 2.0, dino_mod.normalize_mean, dino_mod.normalize_std)
        tensors["out/token_bf16"] = bf16.forward_features(x16)["x_norm_clstoken"].float().contiguous()
        dino_mod.train()
        _, cos = enc.DINOFeatureEncoder.forward(dino_mod, images)  # training mode: 1 - cos to the frozen target
        dino_mod.eval()
        cond = model.get_conditioning(torch.ones(2), x_cond=images)  # {cond_norm, x_extra, pos_extra}
        tensors["out/token"], tensors["out/cos_loss"] = token.contiguous(), cos.contiguous()
        tensors["out/condition"] = cond["x_extra"].contiguous()  # (B, 1, width)
        for i, t in enumerate(DECODER_TIMES):
            c = model.get_conditioning(torch.full((2,), t), x_cond=images)
            tensors[f"out/velocity_{i}"] = model.backbone(x_t, pos=model.get_pos(x_t), **c).contiguous()
            c = wrapper.get_conditioning(token)  # the same from the token (the decoder wrapper's path)
            c["cond_norm"] = wrapper.get_time_cond(torch.full((2,), t))
            tensors[f"out/velocity_from_token_{i}"] = model.backbone(x_t, pos=model.get_pos(x_t), **c).contiguous()
        tensors["out/decode"] = wrapper.sample(token, z=noise.clone(), sample_steps=50, dtype=torch.float32,
                                               device=torch.device("cpu")).contiguous()
        draws: list[torch.Tensor] = []
        torch.manual_seed(28_03)
        with _recorded_draws(draws):
            loss = enc.RF.forward(model, latents, x_cond=images)  # the flow loss on given latents
        assert len(draws) == 2, [d.shape for d in draws]  # t = sigmoid(randn(B)), then the noise randn_like(x)
        tensors["draw/time_normal"], tensors["draw/flow_noise"] = draws[0], draws[1]
        tensors["out/loss_per_sample"] = loss.contiguous()
    save_file(tensors, str(out / "reptok_tokenizer.safetensors"))
    meta = {"release": "CompVis/RepTok", "commit": PINNED["RepTok"], "config": "configs/model/reptok.yaml",
            "dinov2": DINO, "model_size": MODEL_SIZE, "image_size": IMAGE_SIZE, "latent": list(LATENT),
            "decoder": DECODER, "decoder_times": list(DECODER_TIMES), "decode_steps": 50,
            "nr_new_reg": int(dino_mod.nr_new_reg), "new_target_key": dino_mod.new_target_key,
            "target_copy": "encoder.dino.target_model.* other than cls_token equal encoder.dino.model.* (stored once)",
            "draws": "RF.forward: t = sigmoid(draw/time_normal), x_t = (1 - t) x + t draw/flow_noise, v = flow_noise - x"}
    (out / "reptok_tokenizer.json").write_text(json.dumps(meta, indent=2) + "\n")
    return [out / "reptok_tokenizer.safetensors", out / "reptok_tokenizer.json"]


def write_reptok_generator(out: Path) -> list[Path]:
    import importlib

    from safetensors.torch import save_file

    mixer_mod = importlib.import_module("reptok.models.mlp-mixer")
    flow_mod = importlib.import_module("reptok.flow")
    gen = torch.Generator().manual_seed(28_11)
    torch.manual_seed(28_12)
    net = mixer_mod.MLPMixer1D(n_channels=1, **GENERATOR)
    _randomise(net, gen)
    model = flow_mod.FlowModel(net).eval()
    d, n_cls = GENERATOR["channels"], GENERATOR["num_classes"]
    z_t = torch.randn(3, 1, d, generator=gen)
    labels = torch.tensor([3, n_cls, 7])  # the null class in the middle
    noise = torch.randn(3, 1, d, generator=gen)
    tensors: dict[str, torch.Tensor] = {f"state/{k}": v.detach().clone().contiguous()
                                        for k, v in net.state_dict().items()}
    tensors.update({"input/z_t": z_t, "input/labels": labels, "input/noise": noise,
                    "input/times": torch.tensor(GENERATOR_TIMES)})
    uc = torch.tensor([n_cls])
    with torch.no_grad():
        for i, t in enumerate(GENERATOR_TIMES):
            tensors[f"out/velocity_{i}"] = model(z_t, torch.full((3,), t), y=labels).contiguous()
            tensors[f"out/velocity_guided_{i}"] = model(z_t, torch.full((3,), t), cfg_scale=1.5, uc_cond=uc,
                                                        y=labels).contiguous()
        tensors["out/sample_guided"] = model.generate_with_cfg_interval(
            x=noise.clone(), num_steps=50, progress=False, t_interval=[0.3, 0.9], cfg_scale=1.5, uc_cond=uc,
            y=labels).contiguous()
        tensors["out/sample_unguided"] = model.generate(x=noise.clone(), num_steps=50, progress=False,
                                                        y=labels).contiguous()
    save_file(tensors, str(out / "reptok_generator.safetensors"))
    meta = {"release": "CompVis/RepTok", "commit": PINNED["RepTok"], "net": "reptok/models/mlp-mixer.py MLPMixer1D",
            "sizes": {"n_channels": 1, **GENERATOR}, "times": list(GENERATOR_TIMES), "steps": 50,
            "cfg_scale": 1.5, "t_interval": [0.3, 0.9], "null_class": n_cls}
    (out / "reptok_generator.json").write_text(json.dumps(meta, indent=2) + "\n")
    return [out / "reptok_generator.safetensors", out / "reptok_generator.json"]


def write_reptok_paper_layout(out: Path, enc: Any) -> list[Path]:
    """Key -> shape of the release at paper size (``configs/model/reptok.yaml`` as it is, and the paper's
    MLPMixer1D: token 768, width 1536, depth 28, 1000 classes), built on the meta device. The DINOv2 copies are
    left out (dinov2_hub's business) except the [cls] tokens, the learned shift and the new registers."""
    import importlib

    import hydra
    from omegaconf import OmegaConf

    mixer_mod = importlib.import_module("reptok.models.mlp-mixer")
    enc.omegaconf_resolvers()
    conf = OmegaConf.load(Path(enc.__file__).parents[2] / "configs" / "model" / "reptok.yaml")
    conf.model.ae = None  # the VAE is diffusers' sd-vae-ft-mse, not the release's code
    hub = torch.hub.load
    with torch.device("meta"):
        torch.hub.load = lambda *_a, **_k: enc.vit_base_reg()  # type: ignore[assignment]
        try:
            model = hydra.utils.instantiate(conf.model)
        finally:
            torch.hub.load = hub
        net = mixer_mod.MLPMixer1D(n_channels=1, channels=768, dim=1536, depth=28, expansion_factor=3,
                                   expansion_factor_token=4, num_classes=1000)
    keep = ("encoder.dino.model.cls_token", "encoder.dino.target_model.cls_token")
    tok = {k: list(v.shape) for k, v in model.state_dict().items()
           if k in keep or not k.startswith(("encoder.dino.model.", "encoder.dino.target_model."))}
    layout = {"release": "CompVis/RepTok", "commit": PINNED["RepTok"], "config": "configs/model/reptok.yaml",
              "generator": "MLPMixer1D(n_channels=1, channels=768, dim=1536, depth=28, expansion_factor=3, "
                           "expansion_factor_token=4, num_classes=1000) (the paper's size; no config is released)",
              "tokenizer_shapes": tok, "generator_shapes": {k: list(v.shape) for k, v in net.state_dict().items()}}
    (out / "reptok_paper_layout.json").write_text(json.dumps(layout, indent=0, sort_keys=True) + "\n")
    return [out / "reptok_paper_layout.json"]


def write_reptok(out_dir: str | Path, root: str | None = None) -> list[Path]:
    """Write the RepTok fixtures into ``out_dir``; return the files written."""
    import importlib

    os.environ.setdefault("XFORMERS_DISABLED", "1")
    activate("RepTok", root)
    enc = importlib.import_module("reptok.encoder.encoder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_reptok_tokenizer(out, enc) + write_reptok_generator(out) + write_reptok_paper_layout(out, enc)
