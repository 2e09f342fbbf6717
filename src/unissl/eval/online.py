"""Online evaluation: cheap, fixed measurements logged at every checkpoint of a training run.

* :class:`OnlineKNN` (Sorcen / MAGE / MAGE-C): the weighted k-NN top-1 of the frozen encoder's mean-pooled
  features on fixed subsets of the token store's train and test splits (the stored ids, as ``unissl eval
  knn`` reads them).
* :class:`OnlineMaskGIT` (Sorcen family, with a domain classifier): FD_domain of unconditional MaskGIT samples.
* :class:`OnlineReconstruction` (RepTok tokenizer): the PSNR of a fixed batch of held-out images decoded
  with a fixed noise seed.
* :class:`OnlineGeneration` (RepTok generator, with a domain classifier): FD_domain and class share of guided
  samples.

Each logs ``online/<metric>`` and ``online/seconds`` into the run's ``log.jsonl`` (so the report plots the
curve) and keeps ``online/share``: the evaluation time as a share of the training time so far. Subsets are
drawn once, with a fixed seed, so the curve compares the same images at every checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from unissl.data import build_dataset
from unissl.data.token_store import TokenStore
from unissl.engine.method import unwrap
from unissl.engine.trainer import Callback, Trainer
from unissl.eval.domain import DomainExtractor, load_classifier
from unissl.eval.frechet import frechet_distance_stats, gaussian_stats
from unissl.eval.knn import knn_accuracy
from unissl.methods.reptok.sampling import SamplingConfig, sample_conditions, sample_images
from unissl.methods.reptok.tokenizer import load_reptok_tokenizer
from unissl.methods.sorcen.maskgit import MaskGITConfig, maskgit_generate
from unissl.tokenizers.method import psnr


def _subset(n: int, k: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:min(k, n)].tolist())


class _Timed(Callback):
    """Runs :meth:`measure` on rank 0 after each checkpoint and logs it with its cost."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def measure(self, trainer: Trainer) -> dict[str, float]:
        raise NotImplementedError

    def on_checkpoint(self, trainer: Trainer, step: int, path: Any) -> None:
        if not trainer.is_main:
            return
        start = time.perf_counter()
        method = unwrap(trainer.model)
        was_training = method.training
        method.eval()
        try:
            with torch.no_grad():
                metrics = self.measure(trainer)
        finally:
            method.train(was_training)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        share = self.seconds / max(trainer.elapsed, 1e-9)
        trainer.logger.log(step, {**{f"online/{k}": v for k, v in metrics.items()}, "online/seconds": seconds,
                                  "online/share": share})


class OnlineKNN(_Timed):
    """k-NN top-1 (%) of a Sorcen-family encoder on fixed subsets of a VQ token store."""

    def __init__(self, store_dir: str, train_items: int = 5000, test_items: int = 1000, k: int = 20,
                 temperature: float = 0.07, batch_size: int = 500, seed: int = 0) -> None:
        super().__init__()
        train, test = TokenStore(store_dir, "train"), TokenStore(store_dir, "test")
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        self.train = train.__getitems__(_subset(len(train), train_items, seed))
        self.test = test.__getitems__(_subset(len(test), test_items, seed + 1))
        self.num_classes = int(max(self.train["label"].max(), self.test["label"].max())) + 1

    def _features(self, model: Any, ids: torch.Tensor) -> torch.Tensor:
        device = model.decoder_pos.device
        out = [model.encode(ids[s:s + self.batch_size].to(device).long())[:, 1:].mean(1).float().cpu()
               for s in range(0, ids.shape[0], self.batch_size)]
        return torch.cat(out)

    def measure(self, trainer: Trainer) -> dict[str, float]:
        model = unwrap(trainer.model).model
        tx, vx = self._features(model, self.train["ids"]), self._features(model, self.test["ids"])
        metrics = knn_accuracy(tx, self.train["label"], vx, self.test["label"], self.num_classes, self.k,
                               self.temperature)
        return {"knn_top1": float(metrics["top1"])}


class _DomainReference:
    """A domain classifier and the Gaussian statistics of its features on a fixed subset of real test images."""

    def __init__(self, domain_dir: str, dataset: str, data_dir: str | None, image_size: int, items: int,
                 device: torch.device | str, seed: int) -> None:
        model, weights_id = load_classifier(domain_dir)
        self.judge = DomainExtractor(model.to(device).eval(), weights_id, torch.device(device))
        test = build_dataset(dataset, "test", data_dir=data_dir, image_size=image_size)
        real = test.__getitems__(_subset(len(test), items, seed))["image"]
        with torch.no_grad():
            self.stats = gaussian_stats(torch.cat([self.judge.features(real[s:s + 500]).float().cpu()
                                                   for s in range(0, len(real), 500)]))

    def fd(self, images: torch.Tensor) -> float:
        return float(frechet_distance_stats(gaussian_stats(self.judge.features(images).float().cpu()), self.stats))


class OnlineMaskGIT(_Timed):
    """FD_domain of unconditional MaskGIT samples of a Sorcen-family run, decoded by its VQ tokenizer."""

    def __init__(self, domain_dir: str, dataset: str, image_size: int, data_dir: str | None = None,
                 samples: int = 200, steps: int = 8, reference_items: int = 2000, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        super().__init__()
        self.reference = _DomainReference(domain_dir, dataset, data_dir, image_size, reference_items, device, seed)
        self.samples, self.steps, self.seed = samples, steps, seed

    def measure(self, trainer: Trainer) -> dict[str, float]:
        method: Any = unwrap(trainer.model)
        ids = maskgit_generate(method.model, self.samples, MaskGITConfig(steps=self.steps),
                               generator=torch.Generator().manual_seed(self.seed))
        images = method.tokenizer.decode(ids).float().clamp(0, 1)
        return {"FD_domain": self.reference.fd(images)}


class OnlineReconstruction(_Timed):
    """PSNR (dB) of a fixed batch of held-out images through a RepTok tokenizer (fixed decoder noise)."""

    def __init__(self, dataset: Any, items: int = 64, steps: int = 25, seed: int = 0) -> None:
        super().__init__()
        self.images = dataset.__getitems__(_subset(len(dataset), items, seed))["image"]
        self.steps, self.seed = steps, seed

    def measure(self, trainer: Trainer) -> dict[str, float]:
        tok: Any = unwrap(trainer.model)  # a RepTokTokenizer
        device = next(tok.parameters()).device
        x = self.images.to(device)
        gen = torch.Generator(device=device).manual_seed(self.seed)
        rec = tok.reconstruct(x, steps=self.steps, generator=gen)
        return {"psnr": float(psnr(rec, x).mean())}


class OnlineGeneration(_Timed):
    """FD_domain and class share of class-conditional samples of a RepTok token generator.

    ``n_per_class`` samples per class are drawn from the (EMA, when the run keeps one) generator with a fixed
    noise seed, decoded by the RepTok tokenizer and scored by the domain classifier against the features of a
    fixed subset of real test images (computed once).
    """

    def __init__(self, tokenizer_dir: str, domain_dir: str, dataset: str, data_dir: str | None = None,
                 n_per_class: int = 20, reference_items: int = 2000, decode_steps: int = 25, cfg_scale: float = 1.5,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__()
        self.tokenizer = load_reptok_tokenizer(tokenizer_dir, device=device)
        self.reference = _DomainReference(domain_dir, dataset, data_dir, self.tokenizer.cfg.image_size,
                                          reference_items, device, seed)
        self.n_per_class, self.decode_steps, self.cfg_scale, self.seed = n_per_class, decode_steps, cfg_scale, seed

    def measure(self, trainer: Trainer) -> dict[str, float]:
        method: Any = unwrap(trainer.model)
        device = next(method.parameters()).device
        swap = trainer.ema.swapped(method) if trainer.ema is not None else contextlib.nullcontext()
        with swap:
            conds, labels = sample_conditions(method, self.n_per_class, device=device)
            images = sample_images(method, self.tokenizer, conds, SamplingConfig(cfg_scale=self.cfg_scale),
                                   self.decode_steps, generator=torch.Generator().manual_seed(self.seed))
        share = (self.reference.judge.probs(images).argmax(-1).cpu() == labels.cpu()).float().mean()
        return {"FD_domain": self.reference.fd(images), "class_share": float(share) * 100.0}
