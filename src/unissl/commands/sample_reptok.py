"""``unissl sample reptok``: class- or text-conditional samples from a trained RepTok generator.

Tokens are sampled by the generator's ODE (Euler or Heun, classifier-free guidance inside the guidance
interval) and decoded by the RepTok tokenizer. Writes ``<out>/<name>.png`` (one row per class/prompt)
and ``<out>/<name>.npz`` with ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,) (the requested class;
for a prompt, the class named in it or -1) and, for prompts, ``prompts`` and ``prompt_index`` (N,).
``--class`` is accepted as a shorthand of ``--classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from unissl.config import arg
from unissl.engine.runtime import device_arg
from unissl.engine.trainer import resolve_device
from unissl.errors import UnisslError
from unissl.methods.reptok.captions import class_of_prompt, heldout_prompts
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.sampling import SamplingConfig, sample_conditions, sample_images, write_samples
from unissl.methods.reptok.tokenizer import DECODE_STEPS, load_reptok_tokenizer
from unissl.utils.io import check_writable


@dataclass
class Config:
    """Sample images from a trained RepTok token generator."""

    checkpoint: str = arg(help="run directory of `unissl train reptok-generator` (or its generator/ directory)")
    classes: list[str] | None = arg(None, help="class names or indices (default: all classes; "
                                               "--class also works)")
    prompt: list[str] | None = arg(None, help="text prompt(s) (text-conditional generators)")
    heldout_prompts: bool = arg(False, help="prompt with every held-out caption template x class (zero-shot "
                                            "evaluation of a text generator; the npz labels are the named classes)")
    n: int = arg(8, help="samples per class / prompt")
    decode_steps: int = arg(DECODE_STEPS, help="decoder Euler steps")
    tokenizer: str | None = arg(None, help="RepTok tokenizer directory (default: the one the generator records)")
    out: str | None = arg(None, output="dir", help="output directory (default: <checkpoint>/samples)")
    name: str | None = arg(None, help="file stem (default: derived from the settings)")
    batch_size: int = arg(500, help="samples generated per batch")
    seed: int = arg(0, help="random seed")
    device: str = device_arg()
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ALIASES: ClassVar[dict[str, str]] = {"class": "classes"}

    def __post_init__(self) -> None:
        if self.n <= 0 or self.decode_steps <= 0 or self.batch_size <= 0:
            raise UnisslError("--n, --decode-steps and --batch-size must be positive")
        if sum([self.classes is not None, self.prompt is not None, self.heldout_prompts]) > 1:
            raise UnisslError("pass only one of --class/--classes, --prompt and --heldout-prompts")


def run(cfg: Config) -> Path:
    """Sample, decode, write the grid and the npz; returns the npz path."""
    device = resolve_device(cfg.device)
    method = TokenGeneratorMethod.from_pretrained(cfg.checkpoint, map_location=device)
    gcfg = method.cfg
    tok_path = cfg.tokenizer or gcfg.tokenizer_path
    if not tok_path or not Path(tok_path).is_dir():
        raise UnisslError(f"tokenizer {tok_path!r} not found; pass --tokenizer <RepTok tokenizer dir>")
    tokenizer = load_reptok_tokenizer(tok_path, device=device)
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint) / "samples"
    check_writable(out, "--out")  # the default lies in the checkpoint directory, which may be read-only

    extra: dict[str, np.ndarray] = {}
    prompts = cfg.prompt
    if cfg.heldout_prompts:
        if not gcfg.classes:
            raise UnisslError(f"{cfg.checkpoint} records no class names; --heldout-prompts needs them")

        prompts = [p for p, _ in heldout_prompts(gcfg.classes)]
    conds, asked = sample_conditions(method, cfg.n, classes=cfg.classes, prompts=prompts, device=device,
                                     name=cfg.checkpoint)  # asked: (N,) prompt index or class
    if prompts is not None:
        labels = torch.tensor([class_of_prompt(p, gcfg.classes) for p in prompts])[asked]
        extra = {"prompts": np.array(prompts), "prompt_index": asked.numpy()}
    else:
        labels = asked

    gen = torch.Generator().manual_seed(cfg.seed)
    imgs = sample_images(method, tokenizer, conds, cfg.sampling, cfg.decode_steps, cfg.batch_size, gen)  # (N, C, H, W)
    n = labels.shape[0]

    kind = "heldout" if cfg.heldout_prompts else "prompt" if prompts is not None else "class"
    scfg = cfg.sampling
    name = cfg.name or f"{kind}_cfg{scfg.cfg_scale:g}_{scfg.solver}{scfg.steps}_seed{cfg.seed}"
    path = write_samples(imgs, labels, out, name, nrow=cfg.n, extra=extra)
    print(f"wrote {n} samples to {out / (name + '.png')} and {path}")
    return path
