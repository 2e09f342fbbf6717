"""``unissl train sorcen``: pretrain Sorcen, MAGE or MAGE-C.

* ``--method sorcen`` / ``mage`` train on a token store (``--tokens DIR`` from ``unissl tokenize``); no
  image is touched during training. ``--dataset`` without ``--tokens`` is an error that says which
  ``unissl tokenize`` command to run first (tokenizing is a separate, cached stage by design).
* ``--method mage-c`` trains on images (``--dataset``, ``--data-dir``) and tokenizes two augmented crops per
  image every step with the frozen tokenizer (``--tokenizer``, or the one recorded in ``--tokens``);
  ``--sorcen.loss.contrast-weight 0`` makes it the "two crops, no contrast" ablation.

The method's settings are ``--sorcen.<section>.<name>`` (:class:`~unissl.methods.sorcen.config.SorcenConfig`:
``masking``, ``loss``, ``echo``, ``teacher``, ``crops``); the flat ``--loss.<name>`` of earlier versions (and
``loss:`` in pipeline files and saved configs) still reads, through ``ALIASES``, with the same stage hashes.
* ``--method mage-aug`` does the same with ONE augmented crop and no contrast: MAGE's published recipe.

The run directory (``--train.run-dir``) receives ``config.yaml``, ``sorcen.json`` (model shapes + tokenizer
path, see :mod:`unissl.methods.sorcen.run`), checkpoints and logs, and at the end ``encoder/``: the saved
encoder (:mod:`unissl.methods.sorcen.pretrained`, its VQ tokenizer inside) that loads from anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from unissl.config import arg, check_run_dir, save_run_config
from unissl.data import build_dataset
from unissl.data.token_store import TokenStore
from unissl.engine import Callback, TrainConfig, Trainer, init_distributed, is_main
from unissl.errors import UnisslError
from unissl.eval.online import OnlineMaskGIT, OnlineRepresentation
from unissl.methods.sorcen.config import FLAT_NAMES, SorcenConfig
from unissl.methods.sorcen.method import ONLINE_VARIANTS, Variant, build_method
from unissl.methods.sorcen.presets import PRESETS as SORCEN_PRESETS
from unissl.methods.sorcen.presets import arch_for_store
from unissl.methods.sorcen.pretrained import PretrainedSorcen
from unissl.methods.sorcen.run import write_run_info
from unissl.tokenizers import load_tokenizer
from unissl.utils.seed import seed_everything


def _default_train() -> TrainConfig:
    # Paper optimisation (AdamW 0.9/0.95, wd 0.05, base lr 1.5e-4 per 256, clip 3.0); steps and batch are
    # set per run (configs/sorcen/imagenet.yaml, small-fmnist.yaml).
    return TrainConfig(run_dir="runs/sorcen", clip_grad=3.0, base_lr=1.5e-4, weight_decay=0.05,
                       betas=(0.9, 0.95), num_workers=0)


@dataclass
class Config:
    """Pretrain Sorcen / MAGE / MAGE-C on VQ token ids."""

    tokens: str | None = arg(None, help="token store directory (from `unissl tokenize`) for sorcen / mage")
    split: str = arg("train", help="split of the token store or dataset to train on")
    flip: bool = arg(False, help="also train on the store's horizontally flipped ids (if it has them)")
    method: Variant = arg("sorcen", help="sorcen (Echo Contrast), mage (no contrast), mage-c (two online-tokenized "
                                         "crops + SimCLR) or mage-aug (one online-tokenized crop, no contrast)")
    preset: str = arg("small", help="encoder-decoder size (K and grid come from the tokens/tokenizer)",
                      choices=SORCEN_PRESETS)
    dataset: str | None = arg(None, help="image dataset for mage-c (digits, fashion-mnist, folder, webdataset)")
    data_dir: str | None = arg(None, help="image dataset directory (default: the dataset's standard location)")
    tokenizer: str | None = arg(None, help="mage-c: frozen VQ tokenizer (default: the one recorded in --tokens)")
    online_eval: bool = arg(False, help="at every checkpoint, log the k-NN and linear-probe top-1 of the frozen "
                                        "encoder on fixed subsets of the token store's train/test ids "
                                        "(online/knn_top1, online/probe_top1)")
    online_eval_items: int = arg(2000, help="train items of the online k-NN and probe (test: a fifth of it)")
    online_probe_epochs: int = arg(30, help="epochs of the online linear probe over those items (0: k-NN only)")
    online_domain: str | None = arg(None, help="domain classifier directory: at every checkpoint, also log FD_domain "
                                               "of 200 MaskGIT samples (8 steps) against real test images (online/FD_domain)")
    sorcen: SorcenConfig = field(default_factory=SorcenConfig)
    train: TrainConfig = field(default_factory=_default_train)

    # the flat settings before SorcenConfig was split (`--loss.mask-max`, `loss: {mask_max: 0.8}`)
    ALIASES: ClassVar[dict[str, str]] = {
        f"loss.{old}": "sorcen." + ".".join(p for p in path if p) for old, path in FLAT_NAMES.items()}

    def __post_init__(self) -> None:
        if self.method in ("sorcen", "mage") and self.tokens is None:
            hint = f" --dataset {self.dataset}" if self.dataset else ""
            raise UnisslError(f"--method {self.method} trains on precomputed ids: run `unissl tokenize --tokenizer "
                              f"TOKENIZER_DIR{hint} --out TOKENS_DIR` first, then pass --tokens TOKENS_DIR")
        if self.method in ONLINE_VARIANTS and self.dataset is None:
            raise UnisslError(f"--method {self.method} tokenizes images online: pass --dataset (and --tokenizer or "
                              f"--tokens)")
        if self.method in ONLINE_VARIANTS and self.tokenizer is None and self.tokens is None:
            raise UnisslError(f"--method {self.method} needs the frozen tokenizer: pass --tokenizer DIR (or --tokens DIR)")


def build(cfg: Config):
    """(method, dataset, run-info fields) for a config; the method is built after seeding."""
    store = TokenStore(cfg.tokens, cfg.split, flip=cfg.flip) if cfg.tokens is not None else None
    if store is not None and store.kind != "vq":
        raise UnisslError(f"token store {cfg.tokens} holds continuous tokens; Sorcen needs VQ ids")
    tokenizer_path = cfg.tokenizer or (store.tokenizer_path if store is not None else None)
    if cfg.method in ONLINE_VARIANTS:
        assert tokenizer_path is not None and cfg.dataset is not None  # Config.__post_init__ checked both
        tok = load_tokenizer(tokenizer_path)
        if store is not None:
            store.check_tokenizer(tok)
        data = build_dataset(cfg.dataset, cfg.split, data_dir=cfg.data_dir, channels=int(tok.channels))
        arch = arch_for_store(cfg.preset, tok.codebook_size, (int(tok.grid[0]), int(tok.grid[1])))
        classes = list(getattr(data, "classes", []))
    else:
        assert store is not None  # Config.__post_init__: sorcen / mage need --tokens
        tok = _decoder_for_samples(tokenizer_path)
        if tok is not None:
            store.check_tokenizer(tok)  # the path may now hold other weights than the ones that wrote the ids
        data = store
        assert store.codebook_size is not None and store.grid is not None  # a VQ store (kind checked above)
        arch = arch_for_store(cfg.preset, store.codebook_size, store.grid)
        classes = list(store.classes)
    seed_everything(cfg.train.seed)
    method = build_method(arch, cfg.method, cfg.sorcen, num_classes=len(classes), tokenizer=tok,
                          steps_per_epoch=cfg.train.steps_per_epoch(len(data)))
    return method, data, {"arch": arch, "classes": classes, "tokenizer": tokenizer_path}


def _decoder_for_samples(path: str | None):
    """The store's tokenizer, used only to decode the sample grids of the image log (None if unavailable)."""
    if not path:
        return None

    try:
        return load_tokenizer(path)
    except (UnisslError, RuntimeError, OSError) as e:  # best effort: training does not need it
        print(f"unissl train sorcen: no sample images ({str(e).splitlines()[0]})")
        return None


def run(cfg: Config) -> None:
    """Build the method and data, record the run, train, print the final logged values."""
    init_distributed(cfg.train.dist_timeout * 60)  # so that only rank 0 writes the run files under torchrun
    check_run_dir(cfg.train.run_dir, cfg)
    method, data, info = build(cfg)
    callbacks: list[Callback] = []
    if cfg.online_eval:
        if cfg.tokens is None:
            raise UnisslError("--online-eval reads the stored ids: pass --tokens (a store with train and test splits)")
        callbacks.append(OnlineRepresentation(cfg.tokens, cfg.online_eval_items, max(1, cfg.online_eval_items // 5),
                                              probe_epochs=cfg.online_probe_epochs))
    if cfg.online_domain is not None:
        if info["tokenizer"] is None or method.online_tokenizer is None:
            raise UnisslError("--online-domain decodes MaskGIT samples: the run needs its VQ tokenizer "
                              "(--tokenizer, or the one recorded in --tokens)")
        dataset = cfg.dataset or (data.meta.get("dataset") or {}).get("name") or "fashion-mnist"
        callbacks.append(OnlineMaskGIT(cfg.online_domain, dataset, int(method.online_tokenizer.image_size),
                                       data_dir=cfg.data_dir))
    trainer = Trainer(method, data, cfg.train, callbacks=callbacks).prepare()  # a refused resume writes nothing
    if is_main():
        save_run_config(cfg.train.run_dir, cfg)
        write_run_info(cfg.train.run_dir, info["arch"], cfg.method, cfg.sorcen, len(info["classes"]), info["classes"],
                       cfg.tokens, info["tokenizer"])
    n_params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    if is_main():
        print(f"unissl train sorcen: {cfg.method}, preset {cfg.preset} ({n_params / 1e6:.2f}M trainable), "
              f"K={info['arch'].codebook_size}, grid={info['arch'].grid}, {len(data)} samples -> {cfg.train.run_dir}")
    logs = trainer.fit()
    if is_main():
        shown = {k: round(v, 4) for k, v in logs.items() if k in ("step", "loss", "recon", "contrast", "probe_acc")}
        print(f"unissl train sorcen: done {shown}")
        if info["tokenizer"]:  # the saved encoder that travels (the model + its VQ tokenizer inside)
            from pathlib import Path

            saved = PretrainedSorcen.from_run(cfg.train.run_dir).save_pretrained(Path(cfg.train.run_dir) / "encoder")
            print(f"unissl train sorcen: saved encoder -> {saved} (unissl.load_sorcen reads it anywhere)")
