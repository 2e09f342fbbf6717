"""A brief end-to-end fine-tune of a Sorcen / MAGE encoder on a labelled dataset (the transfer protocol's third
number, beside the frozen linear probe and k-NN).

The images are tokenized once by the encoder's frozen VQ tokenizer (adapted to its input size and channels);
the encoder (a copy: the extractor is left untouched) and a new linear head on its pooled features (the
extractor's pooling) are trained with AdamW on cross-entropy for a few epochs on the train split, then the
test top-1 is measured. No augmentation, no masking, no layer-wise decay: a small, fixed protocol that fits a
CPU, not the papers' fine-tuning recipe.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unissl.config import arg
from unissl.errors import ConfigError, UnisslError


@dataclass
class FinetuneConfig:
    """Settings of the brief fine-tune (``epochs: 0`` skips it)."""

    epochs: int = arg(0, help="fine-tuning epochs over the target's train split (0: no fine-tune)")
    lr: float = arg(3e-4, help="AdamW learning rate of encoder and head (cosine to 0 over the run)")
    weight_decay: float = arg(0.05, help="AdamW weight decay")
    batch_size: int = arg(64, help="images per step")
    seed: int = arg(0, help="seed of the head's initialisation and the batch order")

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("epochs", f"needs epochs >= 0, batch_size >= 1 and lr > 0, got {self.epochs}, "
                                        f"{self.batch_size}, {self.lr}")


@torch.no_grad()
def encode_ids(extractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Token ids (N, h, w) of images (N, C, H, W) in [0, 1] by the extractor's frozen tokenizer."""
    from unissl.data.base import adapt_images

    if getattr(extractor, "tokenizer", None) is None or not hasattr(extractor, "model"):
        raise UnisslError("fine-tuning needs a Sorcen-family extractor with its tokenizer (sorcen:RUN)")
    device = extractor.model.decoder_pos.device
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = adapt_images(images[i:i + batch_size].float(), getattr(extractor, "input_channels", None),
                         getattr(extractor, "input_size", None))
        out.append(extractor.tokenizer.encode(x.to(device)).cpu())
    return torch.cat(out)


def finetune_top1(extractor, train_ids: torch.Tensor, train_y: torch.Tensor, test_ids: torch.Tensor,
                  test_y: torch.Tensor, num_classes: int, cfg: FinetuneConfig) -> dict[str, float]:
    """Fine-tune a copy of ``extractor.model`` + a linear head on ``train_ids`` (N, h, w); test top-1 (%) and
    the last epoch's mean train loss."""
    from unissl.methods.sorcen.features import pooled_features

    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(extractor.model).train().requires_grad_(True)
    pool = getattr(extractor, "pool", "final-norm")
    device = model.decoder_pos.device
    with torch.no_grad():
        dim = pooled_features(model, train_ids[:1], pool).shape[1]
    head = nn.Linear(dim, num_classes).to(device)
    params = [p for p in (*model.parameters(), *head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = train_ids.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(cfg.epochs * steps_per_epoch, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    g = torch.Generator().manual_seed(cfg.seed)
    loss_sum = 0.0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        loss_sum = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            logits = head(pooled_features(model, train_ids[idx].to(device), pool))  # (b, C)
            loss = F.cross_entropy(logits, train_y[idx].long().to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * idx.numel()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, test_ids.shape[0], 256):
            pred = head(pooled_features(model, test_ids[i:i + 256].to(device), pool)).argmax(1).cpu()
            correct += int((pred == test_y[i:i + 256].long()).sum())
    return {"finetune_top1": 100.0 * correct / max(test_ids.shape[0], 1), "finetune_train_loss": loss_sum / n}
