"""``unissl train reptok-generator``: flow matching over RepTok tokens (class- or text-conditional).

The trained tokenizer is run ONCE over the dataset into a continuous token store (``z`` (N, D) float32 +
labels, with the mean/std of z in its meta.json); training then reads only that store. When the run
ends, the generator (EMA weights if kept) is exported to ``<run_dir>/generator/`` (config.json +
model.safetensors), which ``unissl sample reptok --checkpoint <run_dir>`` loads, and a grid of guided
samples is written to ``<run_dir>/samples.png`` if the tokenizer is available.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from unissl.config import arg, check_run_dir, save_run_config
from unissl.data import build_dataset
from unissl.data.continuous_store import (
    STATS_KEY,
    default_store_path,
    token_stats,
    tokenizer_checksum,
    write_continuous_store,
)
from unissl.data.token_store import TokenStore
from unissl.engine.config import TrainConfig
from unissl.engine.trainer import Callback, Trainer, resolve_device
from unissl.errors import UnisslError
from unissl.eval.online import OnlineGeneration
from unissl.methods.reptok.captions import class_captions, class_of_prompt, heldout_prompts
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.mixer import GENERATOR_PRESETS, GeneratorConfig
from unissl.methods.reptok.sampling import SamplingConfig, sample_conditions, sample_images, write_samples
from unissl.methods.reptok.text import CaptionBank
from unissl.methods.reptok.text_encoder import FrozenTextEncoder
from unissl.methods.reptok.tokenizer import DECODE_STEPS, load_reptok_tokenizer
from unissl.utils.seed import seed_everything


@dataclass
class Config:
    """Train the RepTok token generator on tokens of a trained RepTok tokenizer."""

    tokenizer: str | None = arg(None, help="trained RepTok tokenizer directory (used to build the token store "
                                           "if it is missing, and to decode samples)")
    tokens: str | None = arg(None, help="continuous token store (default: <tokenizer>-tokens-<dataset> next to "
                                        "the tokenizer; created if missing)")
    dataset: str = arg("fashion-mnist", help="dataset the tokens are computed from")
    data_dir: str | None = arg(None, help="dataset location (default: the registry's)")
    encode_batch: int = arg(256, help="images per tokenizer batch when building the store")
    # The generator's hyperparameters take their defaults from GeneratorConfig (defined there once).
    preset: str = arg(GeneratorConfig.preset, help="mixer size (GENERATOR_PRESETS)", choices=GENERATOR_PRESETS)
    conditioning: Literal["class", "text"] = arg(GeneratorConfig.conditioning,
                                                 help="class labels or synthetic captions")
    cond_dropout: float = arg(GeneratorConfig.cond_dropout, help="probability of the null condition in training "
                                                                 "(for CFG)")
    text_encoder: str = arg("minilm", help="frozen text encoder: 'minilm' or a local transformers directory")
    n_queries: int = arg(GeneratorConfig.n_queries, help="learnable query tokens attending to the text "
                                                         "(text conditioning)")
    text_depth: int = arg(GeneratorConfig.text_depth, help="cross-attention blocks (text conditioning)")
    samples_per_class: int = arg(8, help="guided samples per class in <run_dir>/samples.png (0: none)")
    decode_steps: int = arg(DECODE_STEPS, help="decoder Euler steps for the final sample grid")
    online_domain: str | None = arg(None, help="domain classifier directory: at every checkpoint, log FD_domain and "
                                               "class share of guided samples (online/FD_domain, online/class_share)")
    online_per_class: int = arg(20, help="samples per class of the online evaluation")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/reptok_generator", steps=3000, global_batch=256, base_lr=5e-4, weight_decay=0.0,
        betas=(0.9, 0.99), warmup_steps=100, ema_decay=None, ckpt_every=1000, num_workers=0))
    # (EMA is off by default so that short runs sample from their final weights; the YAML configs turn it on.)

    def __post_init__(self) -> None:
        if self.tokenizer is None and self.tokens is None:
            raise UnisslError("pass --tokenizer <trained RepTok tokenizer dir> or --tokens <continuous token store>")
        if self.encode_batch <= 0:
            raise UnisslError(f"--encode-batch must be positive, got {self.encode_batch}")


def build_token_store(tokenizer_dir: str, dataset: str, data_dir: str | None, out: Path, batch_size: int,
                      device: torch.device, splits: tuple[str, ...] = ("train",)) -> Path:
    """Encode ``splits`` of ``dataset`` with the RepTok tokenizer once into a continuous token store."""

    tok = load_reptok_tokenizer(tokenizer_dir, device=device)
    datasets = {split: build_dataset(dataset, split, data_dir=data_dir, image_size=tok.cfg.image_size)
                for split in splits}
    return write_continuous_store(out, tok, tokenizer_dir, dataset, datasets, batch_size, device)


@contextlib.contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<store>.lock`` next to the store (released when the process ends)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks: the atomic rename alone keeps a store whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_store(cfg: Config, device: torch.device):
    """The training split of the token store, building it first when it is missing."""
    path = Path(cfg.tokens) if cfg.tokens else default_store_path(cfg.tokenizer, cfg.dataset)  # type: ignore[arg-type]
    if not (path / "meta.json").is_file():
        if cfg.tokenizer is None:
            raise UnisslError(f"token store {path} not found; pass --tokenizer to compute it")
        # Each writer builds a private temporary directory and renames it into place (atomic_dir), so two
        # runs never mix files; the lock makes a concurrent run (class and text generators) wait for the
        # first and reuse its store instead of computing the same one again.
        with store_lock(path):
            if not (path / "meta.json").is_file():
                print(f"computing the token store {path} with tokenizer {cfg.tokenizer} (once)")
                build_token_store(cfg.tokenizer, cfg.dataset, cfg.data_dir, path, cfg.encode_batch, device)
    store = TokenStore(path, "train")
    if store.kind != "continuous":
        raise UnisslError(f"{path} is a {store.kind} store; the generator needs continuous tokens (RepTok)")
    if cfg.tokenizer is not None:
        recorded = (store.meta.get("tokenizer") or {}).get("sha256")
        if recorded is not None and recorded != tokenizer_checksum(cfg.tokenizer):
            raise UnisslError(f"token store {path} was computed with other tokenizer weights than {cfg.tokenizer}; "
                              f"delete the store or pass --tokens for a matching one")
    return store


def store_stats(store: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), std ()) of the store's tokens: from meta.json, else computed from the memmap."""
    stats = store.meta.get(STATS_KEY) or token_stats(np.load(store.path / store.files["z"], mmap_mode="r"))
    return torch.tensor(stats["mean"], dtype=torch.float32), torch.tensor(float(stats["std"]))


def build_method(cfg: Config, store: Any) -> TokenGeneratorMethod:
    """The generator for the store's token width and classes (with a caption bank for text)."""
    classes = store.classes or [str(i) for i in range(int(store.labels.max()) + 1)]
    bank, text_dim, text_encoder = None, 0, ""
    if cfg.conditioning == "text":
        encoder = FrozenTextEncoder(cfg.text_encoder)
        bank = CaptionBank.build(encoder, class_captions(classes))  # frozen text states, computed once
        text_dim, text_encoder = encoder.dim, str(encoder.path)
    tokenizer_path = str(Path(cfg.tokenizer).resolve()) if cfg.tokenizer else str(store.tokenizer_path or "")
    gcfg = GeneratorConfig(token_dim=int(store.dim), preset=cfg.preset, conditioning=cfg.conditioning,
                           num_classes=len(classes), cond_dropout=cfg.cond_dropout, text_dim=text_dim,
                           n_queries=cfg.n_queries, text_depth=cfg.text_depth, text_encoder=text_encoder,
                           classes=list(classes), tokenizer_path=tokenizer_path)
    mean, std = store_stats(store)
    return TokenGeneratorMethod(gcfg, z_mean=mean, z_std=std, caption_bank=bank)


def run(cfg: Config) -> None:
    """Build/open the token store, train, export ``generator/`` and write a sample grid."""
    device = resolve_device(cfg.train.device)
    run_dir = Path(cfg.train.run_dir)
    check_run_dir(run_dir, cfg)
    store = open_store(cfg, device)
    seed_everything(cfg.train.seed)
    method = build_method(cfg, store)
    callbacks: list[Callback] = []
    if cfg.online_domain is not None:
        if cfg.conditioning != "class" or not cfg.tokenizer:
            raise UnisslError("--online-domain scores class-conditional samples: it needs --conditioning class and "
                              "--tokenizer (to decode them)")
        callbacks.append(OnlineGeneration(cfg.tokenizer, cfg.online_domain, cfg.dataset, cfg.data_dir,
                                          n_per_class=cfg.online_per_class, device=device))
    trainer = Trainer(method, store, cfg.train, run_dir, callbacks=callbacks).prepare()  # a refused resume writes nothing
    save_run_config(run_dir, cfg, extra={"token_store": str(store.path)})
    trainer.fit()
    if not trainer.is_main:
        return
    if trainer.ema is not None:
        share = trainer.ema.init_share()
        print(f"exporting the EMA weights ({trainer.ema.updates} updates, decay {trainer.ema.decay}"
              f"{' warmed up' if trainer.ema.warmup else ''}; share of the initial weights left: {share:.2e})")
        trainer.ema.copy_to(method)
    method.cpu().save_pretrained(run_dir / "generator")
    print(f"generator saved to {run_dir / 'generator'}")
    tokenizer = cfg.tokenizer or method.cfg.tokenizer_path
    if cfg.samples_per_class > 0 and tokenizer and Path(tokenizer).is_dir():
        exported = method.to(device).eval()  # the exported weights, already in memory (no reload from disk)
        prompts = None if cfg.conditioning == "class" else \
            [p for p, _ in heldout_prompts(method.cfg.classes)][:len(method.cfg.classes)]
        conds, asked = sample_conditions(exported, cfg.samples_per_class, prompts=prompts, device=device)
        images = sample_images(exported, load_reptok_tokenizer(tokenizer, device=device), conds, SamplingConfig(),
                               cfg.decode_steps, generator=torch.Generator().manual_seed(0))
        labels = asked if prompts is None else \
            torch.tensor([class_of_prompt(p, method.cfg.classes) for p in prompts])[asked]  # prompt -> class
        path = write_samples(images, labels, run_dir, "samples", nrow=cfg.samples_per_class)
        print(f"wrote {images.shape[0]} guided samples to {path.with_suffix('.png')}")
