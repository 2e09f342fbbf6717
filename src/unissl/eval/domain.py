"""A small CNN classifier trained on the evaluation dataset: the feature extractor of ``FD_<name>``.

Inception-v3 is an ImageNet network; on 28x28 grey Fashion-MNIST its features say little, and its
weights may not be available. A domain classifier trained on the dataset itself gives a Fréchet distance
in a space that separates the dataset's classes (penultimate layer) and class probabilities for the
Inception Score and for class consistency of conditional samples. Its numbers are reported as
``FD_domain``, never FID: they are only comparable between runs that use the same classifier.

Saved as a directory (:class:`unissl.utils.hub.PretrainedMixin`): ``config.json`` (architecture, classes, dataset
fingerprint) + ``model.safetensors`` + a model card.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from unissl.errors import ConfigError, UnisslError
from unissl.utils.hub import CONFIG_FILE, WEIGHTS_FILE, PretrainedMixin
from unissl.utils.io import sha256_file
from unissl.utils.progress import progress
from unissl.utils.weights import read_safetensors


@dataclass
class DomainClassifierConfig:
    """Architecture of :class:`DomainClassifier` (stored in ``config.json``)."""

    channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    feature_dim: int = 128
    classes: list[str] = field(default_factory=list)
    dataset: str = ""  # "name:split:fingerprint" of the training data


class DomainClassifier(nn.Module, PretrainedMixin):
    """Stages of (conv3x3-BN-ReLU x2, 2x2 max pool) -> global average pool -> Linear-ReLU (features) -> Linear."""

    FORMAT = "unissl-domain-classifier"
    OLD_FORMATS = (None,)  # version 0: the config's fields at the top level of config.json, no "format"
    WHAT = "domain classifier"
    MADE_BY = "`unissl eval train-extractor --dataset NAME --out DIR`"
    CARD_TITLE = "unissl domain classifier (FD_domain features)"

    def __init__(self, cfg: DomainClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.training_info: dict[str, Any] | None = None  # provenance written into config.json
        self.weights_digest = ""  # sha256 (16 hex digits) of the weights file it was loaded from
        layers: list[nn.Module] = []
        cin = cfg.channels
        for i, w in enumerate(cfg.widths):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(cfg.widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> penultimate features (B, feature_dim)."""
        h = self.body(x * 2.0 - 1.0).mean(dim=(2, 3))  # (B, widths[-1])
        return F.relu(self.proj(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes)."""
        return self.head(self.features(x))

    # ---------------------------------------------------------------- persistence (utils/hub.py)
    def pretrained_config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def pretrained_extra(self) -> dict[str, Any]:
        return {"training": self.training_info} if self.training_info else {}

    @classmethod
    def build_pretrained(cls, meta: dict[str, Any], state: dict[str, torch.Tensor], directory: Path,
                         **kwargs: Any) -> DomainClassifier:
        cfg_file, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        raw = meta.get("config")
        if not isinstance(raw, dict):
            raise UnisslError(f"{cfg_file} has no config; retrain it with `unissl eval train-extractor`")
        known = set(DomainClassifierConfig.__dataclass_fields__)
        try:
            model = cls(DomainClassifierConfig(**{k: v for k, v in raw.items() if k in known}))
            model.load_state_dict(state)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UnisslError(f"{weights} does not match {cfg_file} ({str(e).splitlines()[0]}); retrain it with "
                              f"`unissl eval train-extractor`") from None
        model.weights_digest = sha256_file(weights)[:16]
        return model

    @classmethod
    def read_version0(cls, directory: Path, meta: dict[str, Any], **kwargs: Any) -> DomainClassifier:
        """Version 0 kept the config's fields at the top level of config.json."""
        state = read_safetensors(directory / WEIGHTS_FILE, "retrain it with `unissl eval train-extractor`")
        return cls.build_pretrained({"config": {k: v for k, v in meta.items() if k != "training"}}, state, directory)


class DomainExtractor:
    """FeatureExtractor over a trained :class:`DomainClassifier` (penultimate features, softmax probs)."""

    def __init__(self, model: DomainClassifier, weights_id: str, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.input_channels = model.cfg.channels
        self.input_size = model.cfg.image_size
        self.classes = model.cfg.classes
        self._id = weights_id

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images.to(self.device))

    @torch.no_grad()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device)).softmax(-1)

    def identity(self) -> str:
        return f"domain({self._id})"


def save_classifier(model: DomainClassifier, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the saved classifier (utils/hub.py's convention) into ``out_dir`` atomically (replacing it);
    ``extra`` (training provenance and ``metrics``) goes into ``config.json`` and the model card."""
    model.training_info = extra
    return model.save_pretrained(out_dir, metrics=(extra or {}).get("metrics"))


def load_classifier(path: str | Path) -> tuple[DomainClassifier, str]:
    """Load a saved classifier (a local directory or a hub repo id); returns the model and a hash of its weights."""
    model = DomainClassifier.from_pretrained(path)
    return model, model.weights_digest


def load_extractor(checkpoint: str | None, device: torch.device) -> DomainExtractor:
    """Loader registered as ``domain``: ``checkpoint`` is the classifier directory."""
    if not checkpoint:
        raise ConfigError("extractor", "the domain extractor needs its directory: domain:/path/to/classifier")
    model, digest = load_classifier(checkpoint)
    return DomainExtractor(model, digest, device)


def _batches(dataset: Any, idx: torch.Tensor, bs: int):
    for i in range(0, len(idx), bs):
        part = idx[i:i + bs].tolist()
        if hasattr(dataset, "__getitems__"):
            b = dataset.__getitems__(part)
        else:
            items = [dataset[j] for j in part]
            b = {"image": torch.stack([it["image"] for it in items]),
                 "label": torch.as_tensor([int(it["label"]) for it in items])}
        yield b["image"].float(), torch.as_tensor(b["label"]).long()


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translations by up to ``pad`` pixels (edge padding): a little robustness, no flips."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    return torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Any, batch_size: int = 512, device: torch.device | None = None) -> float:
    """Top-1 accuracy (percent) of ``model`` on a dataset split."""
    device = device or torch.device("cpu")
    model.eval()
    correct = total = 0
    for x, y in _batches(dataset, torch.arange(len(dataset)), batch_size):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += y.numel()
    return 100.0 * correct / max(1, total)


def train_classifier(dataset: Any, cfg: DomainClassifierConfig, epochs: int = 3, batch_size: int = 128,
                     lr: float = 2e-3, weight_decay: float = 5e-4, seed: int = 0, augment: bool = True,
                     device: torch.device | None = None) -> DomainClassifier:
    """Train a classifier with AdamW + cosine schedule and label smoothing 0.1."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DomainClassifier(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(dataset)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = progress(total=steps, desc="train domain classifier", leave=False)
    for _ in range(epochs):
        model.train()
        for x, y in _batches(dataset, torch.randperm(n, generator=gen), batch_size):
            if augment:
                x = _augment(x, gen)
            loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()
