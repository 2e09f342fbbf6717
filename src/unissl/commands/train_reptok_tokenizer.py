"""``unissl train reptok-tokenizer``: train RepTok's one-token tokenizer (stage a) on an image dataset.

The encoder is a frozen SSL ViT with a trainable input [cls] (``--encoder dinov2 --encoder-path DIR``,
``--encoder sorcen --encoder-path SORCEN_RUN``, or ``--encoder random`` for the ablation); the decoder is
a flow-matching transformer over pixels (``--model.space pixels``) or frozen VAE latents (``--model.space vae
--model.vae-path DIR``). The tokenizer's settings are the library's ``RepTokConfig``, nested as ``model``
(``--model.cos-weight``; the old flat names ``--cos-weight`` ... still work); its encoder spec, image size and
channels come from ``--encoder*`` and the dataset. The run directory gets config.yaml, checkpoints, logs and reconstruction grids; the
final tokenizer (config.json + model.safetensors) is written to ``--out`` (default RUN_DIR/tokenizer).

With the Sorcen encoder, ``--encoder-tokens`` reads the frozen VQ ids from the ``unissl tokenize`` store of the
Sorcen run instead of encoding every image again, and once trained the command writes the generator's continuous
train token store next to the tokenizer from those cached ids (``--write-token-store``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from unissl.config import arg, check_run_dir, save_run_config
from unissl.data import build_dataset
from unissl.data.base import FirstN
from unissl.data.continuous_store import default_store_path, write_encoded_store
from unissl.engine import Callback, TrainConfig, Trainer, barrier, init_distributed, is_main
from unissl.engine.runtime import resolve_device
from unissl.errors import ConfigError, UnisslError
from unissl.eval.online import OnlineReconstruction
from unissl.methods.reptok.encoders import RANDOM_VIT_PRESETS
from unissl.methods.reptok.frozen_cache import WithFrozenCache, build_frozen_cache, cache_key, store_ids
from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer
from unissl.utils.seed import seed_everything


def _default_train() -> TrainConfig:
    # AdamW with a constant-after-warm-up-ish cosine schedule; steps and batch are set per run (configs/reptok).
    return TrainConfig(run_dir="runs/reptok-tokenizer", base_lr=1e-4, weight_decay=0.0, betas=(0.9, 0.99),
                       clip_grad=1.0, warmup_steps=100, num_workers=0)


def _default_model() -> RepTokConfig:
    # encoder, image_size, channels and extra are placeholders: the command sets them (Config.DERIVED)
    return RepTokConfig(encoder={}, image_size=0, channels=1)


@dataclass
class Config:
    """Train a RepTok tokenizer (adapted SSL token + flow-matching decoder)."""

    encoder: Literal["dinov2", "sorcen", "random"] = arg("dinov2", help="SSL encoder kind")
    encoder_path: str | None = arg(None, help="dinov2: local transformers directory; sorcen: run directory")
    encoder_image_size: int | None = arg(None, help="dinov2 input size (default 224, rounded to the patch size)")
    encoder_resize: Literal["antialias", "released"] = arg(
        "antialias", help="dinov2 input resize: released = CompVis/RepTok's (round() crop, no antialiasing)")
    encoder_dtype: Literal["float32", "bfloat16"] = arg("float32", help="dinov2 precision: bfloat16 as the release")
    random_preset: str = arg("tiny", help="random encoder size", choices=RANDOM_VIT_PRESETS)
    dataset: str = arg("fashion-mnist", help="image dataset (digits, fashion-mnist, folder, webdataset)")
    data_dir: str | None = arg(None, help="dataset directory (default: the dataset's standard location)")
    split: str = arg("train", help="dataset split to train on")
    image_size: int | None = arg(None, help="resize the images to this size (default: the dataset's)")
    limit: int | None = arg(None, help="train on the first N images only (quick runs)")
    out: str | None = arg(None, output="dir", help="where the trained tokenizer is saved (default: RUN_DIR/tokenizer)")
    frozen_cache: bool = arg(True, help="compute the frozen encoder's token (and the Sorcen adapter's VQ ids) once "
                                        "per image instead of every step")
    cache_dir: str | None = arg(None, output="dir", help="where that cache lives (default: <encoder-path>/reptok-cache for "
                                           "sorcen, shared by every tokenizer on that encoder; else RUN_DIR)")
    encoder_tokens: str | None = arg(None, help="sorcen: the Sorcen run's VQ id store (`unissl tokenize` output); the "
                                                "frozen cache reads the --split ids from it instead of running the VQ "
                                                "encoder over every image (checked against the encoder and dataset)")
    write_token_store: bool = arg(True, help="write the generator's continuous train token store next to the "
                                             "tokenizer when the frozen cache makes it cheap (sorcen: the cached VQ ids)")
    online_eval: bool = arg(False, help="at every checkpoint, log the PSNR of a fixed batch of test images "
                                        "(online/psnr)")
    online_eval_items: int = arg(64, help="test images of the online evaluation")
    online_domain: str | None = arg(None, help="domain classifier directory: also log the rFD_domain of those "
                                               "reconstructions (online/rFD_domain; implies --online-eval)")
    model: RepTokConfig = field(default_factory=_default_model)  # the tokenizer's settings, defined once there
    train: TrainConfig = field(default_factory=_default_train)

    DERIVED: ClassVar[tuple[str, ...]] = ("model.encoder", "model.image_size", "model.channels", "model.extra")
    ALIASES: ClassVar[dict[str, str]] = {name: f"model.{name}" for name in (  # the flat names before `model`
        "cos_weight", "cls_lr_scale", "new_registers", "register_target", "decoder", "patch_size", "space", "vae_path")}

    def __post_init__(self) -> None:
        if self.encoder != "random" and not self.encoder_path:
            raise UnisslError(f"--encoder {self.encoder} needs --encoder-path (dinov2: a local transformers "
                              "directory with config.json and weights; sorcen: a `unissl train sorcen` run dir)")
        if self.limit is not None and self.limit <= 0:
            raise UnisslError(f"--limit must be positive, got {self.limit}")
        if self.encoder_tokens is not None and self.encoder != "sorcen":
            raise UnisslError(f"--encoder-tokens holds the Sorcen encoder's VQ ids; it needs --encoder sorcen, not "
                              f"{self.encoder} (drop the flag)")
        if self.encoder_tokens is not None and not self.frozen_cache:
            raise UnisslError("--encoder-tokens fills the frozen cache; drop --no-frozen-cache or the flag")


def encoder_spec(cfg: Config, image_size: int, seed: int) -> dict[str, Any]:
    """The encoder adapter's spec (see :func:`unissl.methods.reptok.encoders.build_encoder`)."""
    if cfg.encoder == "random":
        return {"kind": "random", "image_size": cfg.encoder_image_size or image_size,
                **RANDOM_VIT_PRESETS[cfg.random_preset], "seed": seed}
    if cfg.encoder == "dinov2":
        spec: dict[str, Any] = {"kind": "dinov2", "path": cfg.encoder_path, "image_size": cfg.encoder_image_size}
        if cfg.encoder_resize != "antialias":  # only when set: Dinov2Encoder.spec() writes them the same way
            spec["resize"] = cfg.encoder_resize
        if cfg.encoder_dtype != "float32":
            spec["dtype"] = cfg.encoder_dtype
        return spec
    return {"kind": "sorcen", "path": cfg.encoder_path}


def build(cfg: Config):
    """(tokenizer, dataset) for a config; the tokenizer is built after seeding."""
    data = build_dataset(cfg.dataset, cfg.split, data_dir=cfg.data_dir, image_size=cfg.image_size)
    if cfg.limit is not None:
        data = FirstN(data, cfg.limit)
    size, channels = int(data.image_size), int(data.channels)
    seed_everything(cfg.train.seed)
    cfg.model = replace(cfg.model, encoder=encoder_spec(cfg, size, cfg.train.seed), image_size=size,
                        channels=channels, extra={"dataset": cfg.dataset, "split": cfg.split, "limit": cfg.limit})
    return RepTokTokenizer(cfg.model), data


def with_frozen_cache(cfg: Config, tok: Any, data: Any, ids: torch.Tensor | None = None) -> WithFrozenCache:
    """``data`` with the frozen encoder's per-image outputs attached (computed once on rank 0; from ``ids``,
    the encoder's first stage read by :func:`store_ids`, when given)."""
    if cfg.cache_dir:
        cache_dir = Path(cfg.cache_dir)
    elif cfg.encoder == "sorcen":
        cache_dir = Path(str(cfg.encoder_path)) / "reptok-cache"
    else:
        cache_dir = Path(cfg.train.run_dir) / "frozen-cache"
    path = None
    if is_main():
        start = time.perf_counter()
        path = build_frozen_cache(tok.encoder, data, cache_dir, device=resolve_device(cfg.train.device), ids=ids)
        print(f"unissl train reptok-tokenizer: frozen cache {path} ready in {time.perf_counter() - start:.1f} s"
              f"{' (VQ ids from ' + str(cfg.encoder_tokens) + ')' if ids is not None else ''}")
    barrier()
    if path is None:
        path = cache_dir / f"frozen-{cache_key(tok.encoder, data)}.safetensors"
    return WithFrozenCache(data, path)


@torch.no_grad()
def write_generator_store(cfg: Config, tok: Any, data: Any, frozen_input: torch.Tensor, tokenizer_dir: Path,
                          batch_size: int = 512) -> Path | None:
    """The continuous train token store that ``train reptok-generator`` builds (and looks for) at
    ``<tokenizer_dir>-tokens-<dataset>``, from the cached first stage ``frozen_input`` (N, ...) and the trained
    [cls]: the same tokens as encoding the images again, at the cost of the transformer alone. None (with a
    line saying why) when the tokenizer was not trained on the whole train split."""
    full = data.dataset if isinstance(data, FirstN) else data
    if cfg.split != "train" or len(data) != len(full):
        print(f"unissl train reptok-tokenizer: no generator token store written (trained on "
              f"{'split ' + cfg.split if cfg.split != 'train' else f'the first {len(data)} images'}, the generator "
              f"encodes the whole train split)")
        return None
    start = time.perf_counter()
    encoder = tok.encoder.eval()
    device = encoder.cls.device
    zs = [encoder.encode_prepared(frozen_input[i:i + batch_size].to(device), encoder.cls).float().cpu()
          for i in range(0, len(frozen_input), batch_size)]  # (B, D) each
    labels = torch.cat([full.__getitems__(list(range(i, min(i + 4096, len(full)))))["label"]
                        for i in range(0, len(full), 4096)])  # (N,)
    out = write_encoded_store(default_store_path(tokenizer_dir, cfg.dataset), tok, tokenizer_dir, cfg.dataset,
                              {"train": torch.cat(zs).numpy()}, {"train": labels.numpy().astype(np.int64)},
                              {"train": full.fingerprint()}, [str(c) for c in data.classes])
    print(f"unissl train reptok-tokenizer: generator token store ({len(full)} train tokens) written to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return out


def run(cfg: Config) -> Path:
    """Train, then save the tokenizer to ``--out``; returns that directory."""
    init_distributed(cfg.train.dist_timeout * 60)
    check_run_dir(cfg.train.run_dir, cfg)
    tok, data = build(cfg)
    ids = None
    if cfg.encoder_tokens:  # checked (and read) before anything is written
        try:
            ids = store_ids(tok.encoder, data, cfg.encoder_tokens, cfg.split, device=resolve_device(cfg.train.device))
        except UnisslError as e:
            raise ConfigError("encoder_tokens", f"{e} (or drop the flag)") from None
    out = Path(cfg.out) if cfg.out else Path(cfg.train.run_dir) / "tokenizer"
    n_train = sum(p.numel() for p in tok.parameters() if p.requires_grad)
    callbacks: list[Callback] = []
    if cfg.online_eval or cfg.online_domain is not None:
        test = build_dataset(cfg.dataset, "test", data_dir=cfg.data_dir, image_size=tok.cfg.image_size)
        callbacks.append(OnlineReconstruction(test, cfg.online_eval_items, domain_dir=cfg.online_domain,
                                              device=resolve_device(cfg.train.device)))
    trainer = Trainer(tok, data, cfg.train, callbacks=callbacks).prepare()  # a refused resume writes nothing
    cached = None
    if cfg.frozen_cache:
        trainer.dataset = cached = with_frozen_cache(cfg, tok, data, ids)
    if is_main():
        save_run_config(cfg.train.run_dir, cfg)
        print(f"unissl train reptok-tokenizer: encoder {cfg.encoder} (D={tok.encoder.dim}), decoder "
              f"{cfg.model.decoder} on {cfg.model.space}, lambda={cfg.model.cos_weight}, {n_train / 1e6:.2f}M trainable, {len(data)} images "
              f"-> {cfg.train.run_dir}")
    logs = trainer.fit()
    if is_main():
        tok.save_pretrained(out)
        shown = {k: round(v, 4) for k, v in logs.items()
                 if k in ("step", "loss", "flow_mse", "cos_loss", "drift_centred_1mcos", "drift_cka")}
        print(f"unissl train reptok-tokenizer: done {shown}; tokenizer saved to {out}")
        if cfg.write_token_store and cached is not None and "frozen_input" in cached.tensors:
            write_generator_store(cfg, tok, data, cached.tensors["frozen_input"], out)
    return out
