"""A tiny ``reptok-xl-600k-ImageNet.ckpt``: a Lightning checkpoint written by CompVis/RepTok's own trainer.

``reptok/trainer_gen.py: TrainerModuleLatentFlow`` is built exactly as the release builds it (hyperparameters
as OmegaConf ``DictConfig`` s, the first stage ``reptok.encoder.encoder_wrapper.TrainerAutoencoder`` reading a
model config of the same form as ``configs/model/reptok.yaml``, the generator ``FlowModel`` over
``MLPMixer1D``), at CPU sizes with random seeded weights, and saved with Lightning's ``Trainer.save_checkpoint``
(``state_dict``, ``hyper_parameters``, loops, versions). The release then loads it back with
``TrainerModuleLatentFlow.load_from_checkpoint(..., strict=True)`` and every tensor is compared.

Sizes: DINOv2 with 4 registers (the release's ``DinoVisionTransformer``, width 16, depth 1, one head, patch 14,
the release's fixed 37 x 37 + 1 positions), images 32 px encoded at 28 px; VAE: diffusers ``AutoencoderKL``
with 4 blocks of 8 channels (downsampling 8, as ``TrainerAutoencoder`` assumes), 4 x 4 x 4 latents; decoder and
generator at unissl's ``released-tiny`` preset sizes. The tuned [cls] differs from the frozen target's; the EMA
generator differs from the online one.

Run-time changes, all outside the released files: ``torch.hub.load`` returns the tiny "pretrained" DINOv2 and
``vit_base_reg`` (which ``RepTokImageEncoder`` hard-codes) builds it; the VAE's ``repo`` is a local directory;
the release's ``os.chdir`` loop (it walks up to a folder named ``ziptok-clean``) runs inside a scratch folder of
that name; torchvision's ``center_crop`` / ``normalize`` are supplied as torchvision computes them; the validation
metric tracker (FID / SSIM, needing torch-fidelity and Inception weights) is an empty module.

Writes ``reptok_tiny_released.ckpt`` and ``reptok_tiny_released_outputs.safetensors`` (images, noises, labels,
the release's tokens, 50-step decodes and guided samples) plus a JSON of the settings.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

try:
    from env import PINNED, activate
except ImportError:  # imported as tools.released.reptok_checkpoint
    from .env import PINNED, activate
from .reptok import size_release_config  # the writers run as tools.released.<module> (the fixture driver)

DINO = {"patch_size": 14, "embed_dim": 16, "depth": 1, "num_heads": 1, "mlp_ratio": 2, "num_register_tokens": 4,
        "interpolate_antialias": True, "interpolate_offset": 0.0}
IMAGE_SIZE, MODEL_SIZE, LATENT = 32, 28, (4, 4, 4)
DECODER = {"width": 64, "depth": 2, "d_head": 16, "mapping_width": 32, "mapping_depth": 2, "patch": 2}
MIXER = {"n_channels": 1, "channels": DINO["embed_dim"], "dim": 64, "depth": 2, "expansion_factor": 3,
         "expansion_factor_token": 4, "num_classes": 10, "class_dropout_prob": 0.1}
SCALE_FACTOR = 1.7  # first_stage_cfg.params.scale_factor: the token scale
SAMPLE = {"num_steps": 50, "cfg_scale": 1.5, "t_interval": [0.3, 0.9]}
VAE = {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 4}


def _randomise(module: torch.nn.Module, gen: torch.Generator, skip: tuple[str, ...] = ()) -> None:
    """Every parameter drawn (seeded): matrices ~ N(0, 1/fan_in), tokens / shifts ~ N(0, 0.5^2), gains ~
    1 + N(0, 0.2^2), attention temperatures ~ 10 (1 + N(0, 0.1^2)), biases ~ N(0, 0.1^2); RoPE frequencies kept."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(skip) or name.endswith("pos_emb.freqs"):
                continue
            noise = torch.randn(p.shape, generator=gen)
            if any(s in name for s in ("token", "pos_embed", "new_reg")):
                p.copy_(0.5 * noise)
            elif name.endswith("self_attn.scale"):
                p.copy_(10.0 * (1 + 0.1 * noise))
            elif p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5 * (0.3 if "norm.linear" in name else 1.0))
            elif name.endswith(("scale", "gamma")) or ("norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)


class NoMetrics(torch.nn.Module):
    """Stands in for ``reptok.metrics.ImageMetricTracker`` (FID needs torch-fidelity and Inception weights; it
    holds no trained weights and takes no part in encoding, decoding or sampling)."""


@contextlib.contextmanager
def _release_world(scratch: Path, pretrained: dict[str, torch.Tensor]) -> Iterator[Any]:
    """Import the release with its run-time needs in place; yields ``reptok.encoder.encoder``."""
    enc = importlib.import_module("reptok.encoder.encoder")
    enc.vit_tiny_reg_ckpt = partial(enc.DinoVisionTransformer, **DINO)  # what impl_call locates

    def hub_load(*_args: Any, **_kwargs: Any) -> torch.nn.Module:
        model = enc.vit_tiny_reg_ckpt()
        model.load_state_dict(pretrained)
        return model

    trainer = importlib.import_module("reptok.trainer")
    hub, vit_base_reg, tracker, cwd = torch.hub.load, enc.vit_base_reg, trainer.ImageMetricTracker, os.getcwd()
    torch.hub.load, enc.vit_base_reg = hub_load, enc.vit_tiny_reg_ckpt  # type: ignore[assignment]
    trainer.ImageMetricTracker = NoMetrics
    home = scratch / "ziptok-clean"  # trainer_gen / encoder_wrapper chdir upwards until a folder of this name
    home.mkdir(exist_ok=True)
    os.chdir(home)
    try:
        yield enc
    finally:
        os.chdir(cwd)
        torch.hub.load, enc.vit_base_reg = hub, vit_base_reg  # type: ignore[assignment]
        trainer.ImageMetricTracker = tracker


def _model_config(scratch: Path, vae_dir: Path) -> Path:
    """The release's configs/model/reptok.yaml with the sizes above (the form ``load_raw`` reads)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(importlib.import_module("reptok").__file__).parents[1] / "configs/model/reptok.yaml")
    m = conf.model
    size_release_config(m, LATENT, DECODER, MODEL_SIZE, DINO["embed_dim"], "reptok.encoder.encoder.vit_tiny_reg_ckpt")
    m.ae.repo = str(vae_dir)
    path = scratch / "reptok_tiny.yaml"
    OmegaConf.save(conf, path)
    return path


def _trainer_config(config_path: Path) -> dict[str, Any]:
    """The trainer's hyperparameters, as hydra hands them to it: OmegaConf containers."""
    from omegaconf import OmegaConf

    return {
        "flow_cfg": OmegaConf.create({"target": "reptok.flow.FlowModel", "params": {
            "net_cfg": {"target": "reptok.models.mlp-mixer.MLPMixer1D", "params": MIXER}, "schedule": "linear"}}),
        "tokenizer_cfg": None,
        "first_stage_cfg": OmegaConf.create({"target": "reptok.encoder.encoder_wrapper.TrainerAutoencoder", "params": {
            "config_path": str(config_path), "image_size": IMAGE_SIZE, "scale_factor": SCALE_FACTOR}}),
        "lr": 1e-4, "ema_rate": 0.9999,
        "lr_scheduler_cfg": OmegaConf.create({"target": "torch.optim.lr_scheduler.LambdaLR",
                                              "params": {"lr_lambda": None}}),
        "sample_kwargs": OmegaConf.create({"num_steps": 50, "cfg_scale": 1.5, "uc_cond": None, "t_interval": [0.3, 0.9]}),
        "cond_stage_key": "label", "cond_stage_method": "y", "cond_dropout_prob": 0.1,
    }


def _build(enc: Any, scratch: Path, vae_dir: Path, gen: torch.Generator) -> Any:
    """The released trainer at the sizes above, every weight drawn; the three DINOv2 copies consistent."""
    trainer_gen = importlib.import_module("reptok.trainer_gen")
    module = trainer_gen.TrainerModuleLatentFlow(**_trainer_config(_model_config(scratch, vae_dir)))
    rf = module.first_stage.decoder.decoder  # RepTokLatentRF2D
    dino = rf.encoder.dino
    _randomise(module.model, gen)
    _randomise(module.ema_model, gen)  # the EMA differs from the online weights
    _randomise(rf, gen, skip=("encoder.dino.model.", "encoder.dino.target_model.", "ae."))
    with torch.no_grad():
        dino.model.cls_token.add_(0.3 * torch.randn(dino.model.cls_token.shape, generator=gen))  # the tuned [cls]
        tuned = dino.model.state_dict()
        module.first_stage.encoder.encoder.load_state_dict({k: v.to(torch.bfloat16) for k, v in tuned.items()})
    return module


def _save_lightning(module: Any, path: Path) -> None:
    import lightning

    trainer = lightning.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(str(path))


def _outputs(module: Any, enc: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The release's own encode, 50-step decode and guided generation for fixed inputs (fp32, CPU)."""
    rf = module.first_stage.decoder.decoder
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2 - 1  # [-1, 1]
    noise = torch.randn(2, *LATENT, generator=gen)
    token_noise = torch.randn(2, 1, DINO["embed_dim"], generator=gen)
    labels = torch.tensor([3, 7])
    out: dict[str, torch.Tensor] = {"input/images": images, "input/noise": noise, "input/token_noise": token_noise,
                                    "input/labels": labels}
    with torch.no_grad():
        token = enc.DINOFeatureEncoder.forward(rf.encoder.dino, images)[:, 0]  # (B, D) fp32 tuned copy
        token_bf16 = module.first_stage.encoder(images.to(torch.bfloat16))  # (B, D) the inference copy (bf16)
        wrapper = module.first_stage.decoder
        decoded = wrapper.decode(token, z=noise.clone(), sample_steps=50, device=torch.device("cpu"),
                                 dtype=torch.float32)  # (B, 3, H, W) in [-1, 1]
        uc = torch.tensor([MIXER["num_classes"]])
        sampled = module.generate_with_cfg_interval(x=token_noise.clone(), progress=False, uc_cond=uc, y=labels,
                                                    **SAMPLE)  # (B, 1, D) normalised tokens
        sample_tokens = sampled[:, 0] * SCALE_FACTOR
        sample_images = wrapper.decode(sample_tokens, z=noise.clone(), sample_steps=50, device=torch.device("cpu"),
                                       dtype=torch.float32)
    out.update({"out/token": token.contiguous(), "out/token_bf16": token_bf16.float().contiguous(),
                "out/decode": decoded.contiguous(), "out/sample_tokens": sample_tokens.contiguous(),
                "out/sample_images": sample_images.contiguous()})
    return out


def write_reptok_checkpoint(out_dir: str | Path, root: str | None = None) -> list[Path]:
    """Write the tiny released-trainer checkpoint and the release's outputs into ``out_dir``."""
    import diffusers
    from safetensors.torch import save_file

    os.environ.setdefault("XFORMERS_DISABLED", "1")
    activate("RepTok", root)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(28_21)
    torch.manual_seed(28_22)  # the release's own initialisers (RoPE, Fourier buffers, new registers)
    # a fixed scratch folder: its path is recorded in the hyperparameters (config_path), so reruns are byte-identical
    scratch = Path(tempfile.gettempdir()) / "unissl-released-reptok-ckpt"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        vae = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                                      up_block_types=("UpDecoderBlock2D",) * 4, **VAE)
        vae.save_pretrained(str(scratch / "vae"))
        enc = importlib.import_module("reptok.encoder.encoder")
        pretrained = enc.DinoVisionTransformer(**DINO)
        _randomise(pretrained, gen)
        with _release_world(scratch, pretrained.state_dict()) as enc:
            module = _build(enc, scratch, scratch / "vae", gen).eval()
            ckpt = out / "reptok_tiny_released.ckpt"
            _save_lightning(module, ckpt)
            cls = type(module)
            again = cls.load_from_checkpoint(str(ckpt), map_location="cpu", strict=True, weights_only=False)
            mine, theirs = module.state_dict(), again.state_dict()
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
            outputs = _outputs(again.eval(), enc, gen)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    save_file(outputs, str(out / "reptok_tiny_released_outputs.safetensors"))
    meta = {"release": "CompVis/RepTok", "commit": PINNED["RepTok"], "trainer": "reptok/trainer_gen.py",
            "dinov2": DINO, "image_size": IMAGE_SIZE, "model_size": MODEL_SIZE, "latent": list(LATENT),
            "decoder": DECODER, "mixer": MIXER, "scale_factor": SCALE_FACTOR, "sample": SAMPLE,
            "vae": {k: list(v) if isinstance(v, tuple) else v for k, v in VAE.items()}, "decode_steps": 50,
            "reloaded_strict": True}
    (out / "reptok_tiny_released.json").write_text(json.dumps(meta, indent=2) + "\n")
    return [ckpt, out / "reptok_tiny_released_outputs.safetensors", out / "reptok_tiny_released.json"]
