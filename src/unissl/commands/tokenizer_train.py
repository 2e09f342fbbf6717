"""``unissl tokenizer train``: train a VQ tokenizer (stage 0), then evaluate it on the test split.

The run directory (``--train.run-dir``) receives ``config.yaml``, checkpoints and logs (from the engine),
then ``tokenizer/`` (``save_pretrained``: config.json + model.safetensors, loadable with
``unissl.tokenizers.load_tokenizer``), ``tokenizer_eval.json`` (PSNR and codebook usage / perplexity over
the whole evaluation split) and ``reconstructions.png`` (originals interleaved with reconstructions).
``--out DIR`` also writes the tokenizer to ``DIR``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from unissl.config import arg, check_run_dir, save_run_config
from unissl.data import build_dataset
from unissl.engine import TrainConfig, Trainer, init_distributed, is_main
from unissl.errors import UnisslError
from unissl.eval.results import record_result
from unissl.tokenizers.evaluate import evaluate
from unissl.tokenizers.method import VQTokenizerMethod
from unissl.tokenizers.vq import PRESETS as VQ_PRESETS
from unissl.tokenizers.vq import VQConfig, VQTokenizer, preset
from unissl.utils.images import save_grid
from unissl.utils.io import write_json
from unissl.utils.seed import seed_everything


def _default_train() -> TrainConfig:
    # Adam without weight decay (the EMA codebook is a buffer; the conv nets are small), short warm-up.
    return TrainConfig(run_dir="runs/tokenizer", steps=2000, global_batch=64, lr=1e-3, min_lr=0.0,
                       weight_decay=0.0, betas=(0.9, 0.99), warmup_steps=100, clip_grad=1.0, num_workers=0,
                       ckpt_every=1000)


@dataclass
class Config:
    """Train a VQ tokenizer on an image dataset and report test PSNR and codebook usage."""

    dataset: str = arg("digits", help="image dataset (digits, fashion-mnist, folder, webdataset)")
    data_dir: str | None = arg(None, help="dataset directory (default: the dataset's standard location)")
    image_size: int | None = arg(None, help="resize images to this size (default: the preset's image size)")
    preset: str = arg("digits", help="tokenizer architecture preset (unissl.tokenizers.vq.PRESETS)",
                      choices=VQ_PRESETS)
    codebook_size: int | None = arg(None, help="override the preset's number of codes K")
    code_dim: int | None = arg(None, help="override the preset's code dimension")
    ch: int | None = arg(None, help="override the preset's base channel width")
    quantizer: Literal["ema", "st"] | None = arg(None, help="override the preset's quantizer: ema or st")
    dead_after: int | None = arg(None, help="override: restart codes unused for this many steps (0: never)")
    eval_split: str = arg("test", help="split on which PSNR and codebook usage are measured after training")
    eval_batch: int = arg(500, help="batch size of the evaluation pass")
    out: str | None = arg(None, output="dir", help="also save the trained tokenizer to this directory")
    train: TrainConfig = field(default_factory=_default_train)

    def __post_init__(self) -> None:
        if self.eval_batch < 1:
            raise UnisslError(f"--eval-batch must be positive, got {self.eval_batch}")

    def model_config(self) -> VQConfig:
        """The :class:`~unissl.tokenizers.vq.VQConfig`: the preset with this config's overrides."""
        base = preset(self.preset)
        overrides: dict[str, Any] = {k: getattr(self, k) for k in
                                     ("codebook_size", "code_dim", "ch", "quantizer", "dead_after")
                                     if getattr(self, k) is not None}
        if self.image_size is not None:
            overrides["image_size"] = self.image_size
        try:
            return dataclasses.replace(base, **overrides)
        except ValueError as e:
            raise UnisslError(f"invalid tokenizer settings for preset {self.preset!r}: {e}") from e


def run(cfg: Config) -> None:
    """Train, save the tokenizer, evaluate on ``eval_split``, write the eval JSON and a reconstruction grid."""
    init_distributed(cfg.train.dist_timeout * 60)
    mcfg = cfg.model_config()
    train = build_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, image_size=mcfg.image_size,
                          channels=mcfg.channels)
    # the evaluation split must exist before hours of training, not after them
    test = build_dataset(cfg.dataset, cfg.eval_split, data_dir=cfg.data_dir, image_size=mcfg.image_size,
                         channels=mcfg.channels)
    seed_everything(cfg.train.seed)
    method = VQTokenizerMethod(VQTokenizer(mcfg))
    run_dir = Path(cfg.train.run_dir)
    check_run_dir(run_dir, cfg)
    trainer = Trainer(method, train, cfg.train).prepare()  # a refused resume writes nothing
    if is_main():
        save_run_config(run_dir, cfg)
        n_params = sum(p.numel() for p in method.parameters())
        print(f"unissl tokenizer train: preset {cfg.preset} ({n_params / 1e6:.2f}M params), {mcfg.image_size}px -> "
              f"{mcfg.grid[0]}x{mcfg.grid[1]} ids, K={mcfg.codebook_size}, {mcfg.quantizer} quantizer, "
              f"{len(train)} {cfg.dataset} images -> {run_dir}")
    trainer.fit()
    if not is_main():
        return
    tok = method.tokenizer.eval()
    tok.save_pretrained(run_dir / "tokenizer")
    if cfg.out:
        tok.save_pretrained(cfg.out)
    res = evaluate(tok, test, cfg.eval_batch)
    x = test.__getitems__(list(range(min(16, len(test)))))["image"].to(next(tok.parameters()).device)
    rec = tok.decode(tok.encode(x))
    save_grid(torch.stack([x, rec], 1).flatten(0, 1).cpu(), run_dir / "reconstructions.png", nrow=8,
              scale=max(1, 128 // mcfg.image_size))
    report = {"dataset": cfg.dataset, "split": cfg.eval_split, **res, "codebook_size": tok.codebook_size,
              "grid": list(tok.grid), "preset": cfg.preset, "checksum": tok.checksum(),
              "tokenizer": str((run_dir / "tokenizer").resolve())}
    write_json(run_dir / "tokenizer_eval.json", report)
    # the record the report and the study read (results/tokenizer_eval.json)
    record_result(run_dir, "tokenizer_eval", {k: v for k, v in res.items() if isinstance(v, (int, float))},
                  {k: v for k, v in report.items() if k not in res})
    print(f"unissl tokenizer train: {cfg.eval_split} PSNR {res['psnr']:.2f} dB, codebook usage "
          f"{100 * res['usage']:.1f}% ({tok.codebook_size} codes), perplexity {res['perplexity']:.1f} over "
          f"{res['images']} images; tokenizer -> {run_dir / 'tokenizer'}"
          + (f" and {cfg.out}" if cfg.out else ""))
