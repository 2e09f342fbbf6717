"""Online evaluation: cheap, fixed measurements logged at every checkpoint of a training run.

* :class:`OnlineRepresentation` (Sorcen / MAGE / MAGE-C): the weighted k-NN top-1 and a short linear probe's
  top-1 of the frozen encoder's mean-pooled features on fixed subsets of the token store's train and test
  splits (the stored ids, as ``unissl eval knn`` / ``linear-probe`` read them; one feature pass serves both).
* :class:`OnlineMaskGIT` (Sorcen family, with a domain classifier): FD_domain of unconditional MaskGIT samples.
* :class:`OnlineReconstruction` (RepTok tokenizer): the PSNR of a fixed batch of held-out images decoded
  with a fixed noise seed and, with a domain classifier, their rFD_domain (the Frechet distance between the
  classifier's features of the reconstructions and of the same real images).
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
from unissl.data.base import ImageDataset
from unissl.data.token_store import TokenStore
from unissl.engine.method import unwrap
from unissl.engine.trainer import Callback, Trainer
from unissl.eval.domain import DomainExtractor, load_classifier
from unissl.eval.features import features_of
from unissl.eval.frechet import GaussianStats, frechet_distance_stats, gaussian_stats
from unissl.eval.generation import class_consistency, quantize_uint8
from unissl.eval.knn import KNNConfig, knn_accuracy
from unissl.eval.probe import ProbeConfig, linear_probe
from unissl.methods.reptok.sampling import SamplingConfig, sample_conditions, sample_images
from unissl.methods.reptok.tokenizer import load_reptok_tokenizer
from unissl.methods.sorcen.features import pooled_features
from unissl.methods.sorcen.maskgit import MaskGITConfig, maskgit_generate
from unissl.utils.images import psnr


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
        # The measurement may draw random numbers (the probe seeds its heads, samplers draw noise): it runs on
        # forked RNG states, so a run trains the same with and without online evaluation (and DDP ranks,
        # of which only rank 0 measures, keep identical RNG streams).
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                metrics = self.measure(trainer)
        finally:
            method.train(was_training)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        share = self.seconds / max(trainer.elapsed, 1e-9)
        trainer.logger.log(step, {**{f"online/{k}": v for k, v in metrics.items()}, "online/seconds": seconds,
                                  "online/share": share})


class OnlineRepresentation(_Timed):
    """k-NN top-1 (%) and a short linear probe's top-1 (%) of a Sorcen-family encoder on fixed subsets of a
    VQ token store.

    The probe is the offline protocol (:func:`unissl.eval.probe.linear_probe`: a grid of learning rates, the
    head chosen on a held-out tenth of the train subset) with a short schedule, ``probe_epochs`` passes over
    the subset's features; ``probe_epochs=0`` logs the k-NN only.
    """

    def __init__(self, store_dir: str, train_items: int = 2000, test_items: int = 400, knn: KNNConfig | None = None,
                 probe_epochs: int = 30, batch_size: int = 500, seed: int = 0) -> None:
        super().__init__()
        train, test = TokenStore(store_dir, "train"), TokenStore(store_dir, "test")
        self.knn, self.batch_size = knn or KNNConfig(), batch_size
        self.probe = ProbeConfig(lrs=[0.01, 0.1, 1.0], epochs=probe_epochs, warmup_epochs=min(3.0, probe_epochs),
                                 batch_size=128, seed=seed) if probe_epochs > 0 else None
        self.train = train.__getitems__(_subset(len(train), train_items, seed))
        self.test = test.__getitems__(_subset(len(test), test_items, seed + 1))
        self.num_classes = int(max(self.train["label"].max(), self.test["label"].max())) + 1

    def _features(self, model: Any, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([pooled_features(model, ids[s:s + self.batch_size]).cpu()
                          for s in range(0, ids.shape[0], self.batch_size)])

    def measure(self, trainer: Trainer) -> dict[str, float]:
        model = unwrap(trainer.model).model
        tx, vx = self._features(model, self.train["ids"]), self._features(model, self.test["ids"])
        ty, vy = self.train["label"], self.test["label"]
        out = {"knn_top1": float(knn_accuracy(tx, ty, vx, vy, self.num_classes, self.knn.k,
                                                self.knn.temperature)["top1"])}
        if self.probe is not None:
            with torch.enable_grad():  # the probe trains its heads; the encoder's features are fixed tensors
                metrics, _ = linear_probe(tx, ty, vx, vy, self.num_classes, self.probe, progress=False)
            out["probe_top1"] = float(metrics["top1"])
        return out


class _DomainReference:
    """A domain classifier and its Gaussian statistics of a fixed set of real images.

    Images are scored as ``unissl eval generation`` scores them (:func:`features_of`: uint8-quantised, adapted
    to the classifier's input channels and size), so an online curve and the offline number share a protocol.
    """

    def __init__(self, domain_dir: str, real: torch.Tensor, device: torch.device | str) -> None:
        model, weights_id = load_classifier(domain_dir)
        self.judge = DomainExtractor(model, weights_id, torch.device(device))
        self.stats = self.stats_of(real)

    @classmethod
    def test_split(cls, domain_dir: str, dataset: str, data_dir: str | None, image_size: int, items: int,
                   device: torch.device | str, seed: int) -> _DomainReference:
        """Against a fixed seeded subset of ``items`` images of the dataset's test split."""
        test = build_dataset(dataset, "test", data_dir=data_dir, image_size=image_size)
        return cls(domain_dir, test.__getitems__(_subset(len(test), items, seed))["image"], device)

    def stats_of(self, images: torch.Tensor) -> GaussianStats:
        return gaussian_stats(features_of(self.judge, quantize_uint8(images), batch_size=500))

    def fd(self, images: torch.Tensor) -> float:
        return float(frechet_distance_stats(self.stats_of(images), self.stats))

    def class_share(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Share (%) of ``images`` the classifier assigns to ``labels``."""
        return 100.0 * class_consistency(self.judge, quantize_uint8(images), labels, batch_size=500)


class OnlineMaskGIT(_Timed):
    """FD_domain of unconditional MaskGIT samples of a Sorcen-family run, decoded by its VQ tokenizer."""

    def __init__(self, domain_dir: str, dataset: str, image_size: int, data_dir: str | None = None,
                 samples: int = 200, steps: int = 8, reference_items: int = 2000, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        super().__init__()
        self.reference = _DomainReference.test_split(domain_dir, dataset, data_dir, image_size, reference_items,
                                                     device, seed)
        self.samples, self.steps, self.seed = samples, steps, seed

    def measure(self, trainer: Trainer) -> dict[str, float]:
        method: Any = unwrap(trainer.model)
        ids = maskgit_generate(method.model, self.samples, MaskGITConfig(steps=self.steps),
                               generator=torch.Generator().manual_seed(self.seed))
        images = method.tokenizer.decode(ids).float().clamp(0, 1)
        return {"FD_domain": self.reference.fd(images)}


class OnlineReconstruction(_Timed):
    """PSNR (dB) of a fixed batch of held-out images through a RepTok tokenizer (fixed decoder noise) and,
    given a domain classifier, rFD_domain: the Frechet distance between its features of the reconstructions and
    of the same real images (a few hundred images make it a fixed-subset curve, not a paper rFID)."""

    def __init__(self, dataset: ImageDataset, items: int = 64, steps: int = 25, domain_dir: str | None = None,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__()
        self.images = dataset.__getitems__(_subset(len(dataset), items, seed))["image"]
        self.steps, self.seed = steps, seed
        self.reference = _DomainReference(domain_dir, self.images, device) if domain_dir is not None else None

    def measure(self, trainer: Trainer) -> dict[str, float]:
        tok: Any = unwrap(trainer.model)  # a RepTokTokenizer
        device = next(tok.parameters()).device
        x = self.images.to(device)
        gen = torch.Generator(device=device).manual_seed(self.seed)
        rec = torch.cat([tok.reconstruct(x[s:s + 128], steps=self.steps, generator=gen)
                         for s in range(0, len(x), 128)])
        out = {"psnr": float(psnr(rec, x).mean())}
        if self.reference is not None:
            out["rFD_domain"] = self.reference.fd(rec.float().clamp(0, 1))
        return out


class OnlineGeneration(_Timed):
    """FD_domain and class share of class-conditional samples of a RepTok token generator.

    ``n_per_class`` samples per class are drawn from the (EMA, when the run keeps one) generator with a fixed
    noise seed, decoded by the RepTok tokenizer and scored by the domain classifier against the features of a
    fixed subset of real test images (computed once).
    """

    def __init__(self, tokenizer_dir: str, domain_dir: str, dataset: str, data_dir: str | None = None,
                 n_per_class: int = 20, reference_items: int = 2000, decode_steps: int = 25,
                 sampling: SamplingConfig | None = None, device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__()
        self.tokenizer = load_reptok_tokenizer(tokenizer_dir, device=device)
        self.reference = _DomainReference.test_split(domain_dir, dataset, data_dir, self.tokenizer.cfg.image_size,
                                                     reference_items, device, seed)
        self.sampling = sampling or SamplingConfig()  # the guidance of `sample reptok` unless told otherwise
        self.n_per_class, self.decode_steps, self.seed = n_per_class, decode_steps, seed

    def measure(self, trainer: Trainer) -> dict[str, float]:
        method: Any = unwrap(trainer.model)
        device = next(method.parameters()).device
        swap = trainer.ema.swapped(method) if trainer.ema is not None else contextlib.nullcontext()
        with swap:
            conds, labels = sample_conditions(method, self.n_per_class, device=device)
            images = sample_images(method, self.tokenizer, conds, self.sampling,
                                   self.decode_steps, generator=torch.Generator().manual_seed(self.seed))
        return {"FD_domain": self.reference.fd(images), "class_share": self.reference.class_share(images, labels)}
