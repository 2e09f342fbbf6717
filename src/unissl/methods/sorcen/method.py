"""Sorcen and its baselines: one masked-token base, a class per variant, over the same encoder-decoder.

:class:`MaskedTokenMethod` holds what every variant shares (the encoder-decoder, masking, the token loss, the
online probe, progress buffers, the optional frozen tokenizer and the engine hooks); each variant is its own
class, registered by name in :data:`VARIANTS` (``build_method(arch, variant, ...)`` builds one by name):

* ``sorcen`` (:class:`SorcenMethod`): masked token reconstruction + Echo Contrast (generated positive, EMA
  teacher, InfoNCE) + a uniformity term, on precomputed ids (``batch["ids"]`` (B, h, w)).
* ``mage`` (:class:`MAGEMethod`): masked token reconstruction only, on precomputed ids.
* ``mage-c`` (:class:`MAGECMethod`): reconstruction of two augmented crops tokenized *online* by a frozen VQ
  tokenizer (``batch["image"]`` (B, C, H, W)) + SimCLR's NT-Xent between the crops' pooled features
  (``sorcen.loss.contrast_weight 0`` is the "two crops, no contrast" ablation).
* ``mage-aug`` (:class:`MAGEAugMethod`): masked token reconstruction of ONE RandomResizedCrop + flip view per
  image, tokenized online: the recipe behind MAGE's published numbers (no contrast).

The settings (masking, loss weights, echo, teacher, crops) are :class:`~.config.SorcenConfig`'s sections; where
the released code (LEASE) differs from the paper's text, options there reproduce it.

Every variant trains an online linear classifier on detached pooled features when labels are present
(``probe_acc`` in the logs; monitoring only, it does not shape the representation).
Total loss: ``recon + loss.uniformity_weight * uniformity + loss.contrast_weight * contrastive + probe``.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from unissl.engine.method import Method
from unissl.engine.schedule import cosine_value
from unissl.layers.heads import ProjectionHead
from unissl.layers.vit import init_vit_weights
from unissl.methods.sorcen.augment import random_resized_crop_flip
from unissl.methods.sorcen.config import SorcenConfig
from unissl.methods.sorcen.echo import sample_echo
from unissl.methods.sorcen.losses import info_nce, masked_token_loss, masked_top1, nt_xent, uniformity_loss
from unissl.methods.sorcen.maskgit import MaskGITConfig, maskgit_generate
from unissl.methods.sorcen.masking import random_masking, sample_mask_ratio, sample_window_side, window_mask
from unissl.methods.sorcen.model import SorcenModel
from unissl.methods.sorcen.presets import SorcenArch
from unissl.tokenizers.base import Tokenizer

Variant = Literal["sorcen", "mage", "mage-c", "mage-aug"]
ONLINE_VARIANTS = ("mage-c", "mage-aug")  # variants that read images and tokenize them every step
RELEASED_ECHO_EPOCHS = 10  # LEASE: ground-truth echoes while the (0-based) epoch index is <= 10


class MaskedTokenMethod(Method):
    """The masked-token base of the Sorcen family (an engine :class:`Method`); ``model`` is the
    encoder-decoder to keep. Not trained itself: a variant (:data:`VARIANTS`) implements :meth:`forward` and
    adds its own modules in :meth:`build_variant_modules`.
    """
    step: torch.Tensor  # buffer
    total_steps: torch.Tensor  # buffer
    top1_running: torch.Tensor  # buffer
    echo_live: torch.Tensor  # buffer
    variant: ClassVar[str] = ""

    def __init__(self, arch: SorcenArch, cfg: SorcenConfig | None = None, num_classes: int = 0,
                 tokenizer: Tokenizer | None = None, steps_per_epoch: int = 0) -> None:
        super().__init__()
        self.arch = arch
        self.cfg = cfg or SorcenConfig()
        self.steps_per_epoch = steps_per_epoch
        self.model = SorcenModel(arch)
        self.build_variant_modules()  # before the probe: a seed gives the same weights as before the split
        # Every variant accepts a frozen VQ tokenizer: the online variants tokenize their crops with it
        # (``tokenizer`` raises without one; a run reloaded to evaluate or sample is built without it), the
        # others only decode the samples of ``log_images``. It is not trained and not checkpointed
        # (``frozen_state_prefixes``): it is rebuilt from the token store's tokenizer path whenever the method is.
        self.online_tokenizer = tokenizer
        if tokenizer is not None:
            if isinstance(tokenizer, nn.Module):
                tokenizer.requires_grad_(False).eval()
            if int(tokenizer.codebook_size) != arch.codebook_size or tuple(tokenizer.grid) != tuple(arch.grid):
                raise ValueError(f"tokenizer (K={tokenizer.codebook_size}, grid={tuple(tokenizer.grid)}) does "
                                 f"not match the model (K={arch.codebook_size}, grid={arch.grid})")
        self.probe = nn.Linear(arch.dim, num_classes) if (num_classes > 0 and self.cfg.probe) else None
        # Training progress, for the echo warm-up and the momentum schedule (saved with checkpoints).
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))
        # echo_warmup_unit=accuracy: running mean of the masked top-1 and the latched "echoes are on" flag
        # (kept by every variant, so that every run's checkpoint has the same buffers)
        self.register_buffer("top1_running", torch.zeros(()))
        self.register_buffer("echo_live", torch.zeros((), dtype=torch.bool))
        # A host-side copy, so that forward never synchronises with the device to read the buffers;
        # invalidated when a checkpoint is loaded.
        self._progress: tuple[int, int] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_progress", None))
        self._register_load_state_dict_pre_hook(self._fill_echo_state)

    def build_variant_modules(self) -> None:
        """The variant's own modules (projectors, teacher), created right after the encoder-decoder."""

    def _fill_echo_state(self, state_dict, prefix, *args) -> None:
        """Weights saved before the accuracy warm-up existed (older runs, converted official weights) lack
        its two buffers: they load with the buffers at their start values."""
        for name, value in (("top1_running", torch.zeros(())), ("echo_live", torch.zeros((), dtype=torch.bool))):
            state_dict.setdefault(prefix + name, value)

    # ------------------------------------------------------------------ engine hooks
    def no_weight_decay(self) -> set[str]:
        """The decoder's position table (an ``nn.Parameter``, not an ``nn.Embedding``)."""
        return set() if self.cfg.decay_embeddings else {"model.decoder_pos"}

    def decays_embeddings(self) -> bool:
        """Engine hook: with ``decay_embeddings`` only 1-D parameters escape weight decay (released code)."""
        return self.cfg.decay_embeddings

    @torch.no_grad()
    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Record progress (the variants with a teacher also move it here)."""
        self.step.fill_(step)
        self.total_steps.fill_(total_steps)
        self._progress = (step, total_steps)

    def compiled_blocks(self) -> list[nn.Module]:
        """The transformer blocks :meth:`compile_networks` compiles (a teacher adds its own)."""
        return [*self.model.blocks, *self.model.decoder_blocks]

    def compile_networks(self, **kwargs) -> list[nn.Module]:
        """Engine hook for ``--train.compile``: compile every transformer block (student, decoder, teacher).

        The blocks take one tensor of a fixed shape per stack (the kept tokens, the full decoder sequence,
        the echo), so each compiles once: the per-step mask ratio and the progress counters stay in eager
        Python around them and never enter a guard. Returns the compiled modules.
        """
        blocks = self.compiled_blocks()
        for blk in blocks:
            blk.compile(**kwargs)
        return blocks

    @torch.no_grad()
    def log_images(self, batch: dict[str, torch.Tensor], num_samples: int = 16, steps: int = 12) -> dict[str, torch.Tensor]:
        """MaskGIT samples decoded by the tokenizer (when the method has one), for the run's image log."""
        if self.online_tokenizer is None:
            return {}

        ids = maskgit_generate(self.model, num_samples, MaskGITConfig(steps=steps))  # (n, h, w)
        return {"samples": self.tokenizer.decode(ids).float().clamp(0, 1)}

    def train(self, mode: bool = True) -> MaskedTokenMethod:
        super().train(mode)
        if isinstance(self.online_tokenizer, nn.Module):
            self.online_tokenizer.eval()  # the frozen tokenizer always runs in inference mode
        return self

    def frozen_state_prefixes(self) -> tuple[str, ...]:
        """The online tokenizer's weights stay out of checkpoints (rebuilt from the store's tokenizer)."""
        return ("online_tokenizer.",)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One training step's losses. Returns ``loss`` and scalar logs (``recon``, ``contrast``, ...)."""
        raise NotImplementedError

    def _reconstruct(self, ids: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The shared masked pass of ids (B, h, w) -> latent (B, 1+N_keep, D), logits (B, N, K), the token
        loss and the logs ``recon`` / ``masked_top1``."""
        latent, logits, targets, masking = self._masked_pass(ids)
        recon = masked_token_loss(logits, targets, masking.token_mask, self.cfg.loss.label_smoothing)
        out = {"recon": recon.detach(), "masked_top1": masked_top1(logits, targets, masking.token_mask)}
        return latent, logits, recon, out

    def _masked_pass(self, ids: torch.Tensor):
        """Sample this step's ratio and masks, run encoder + decoder. -> latent, logits, targets, masking."""
        c = self.cfg.masking
        ratio = sample_mask_ratio(c.mean, c.std, c.min, c.max)
        flat = ids.reshape(ids.shape[0], -1)  # (B, N)
        masking = random_masking(flat.shape[0], flat.shape[1], ratio, c.drop_ratio, device=ids.device)
        latent, logits = self.model(flat, masking)  # (B, 1+N_keep, D), (B, N, K)
        return latent, logits, flat, masking

    def _probe(self, pooled: torch.Tensor, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Online linear classifier on detached features; adds ``probe_loss`` / ``probe_acc`` to ``out``."""
        if self.probe is None or "label" not in batch:
            return pooled.new_zeros(())
        labels = batch["label"].long().view(-1)  # (B,)
        logits = self.probe(pooled.detach().float())  # (B, classes)
        loss = F.cross_entropy(logits, labels)
        out["probe_loss"] = loss.detach()
        out["probe_acc"] = (logits.argmax(dim=1) == labels).float().mean()
        return loss

    # ------------------------------------------------------------------ helpers
    @property
    def tokenizer(self) -> Tokenizer:
        """The frozen online tokenizer (MAGE-C, MAGE-aug), moved to the method's device on first use."""
        tok = self.online_tokenizer
        if tok is None:
            raise RuntimeError("this method has no online tokenizer (only mage-c / mage-aug use one)")
        if isinstance(tok, nn.Module):
            device = self.model.decoder_pos.device
            first = next(iter(tok.parameters()), None)
            if first is not None and first.device != device:
                tok.to(device)
        return tok


class MAGEMethod(MaskedTokenMethod):
    """MAGE: masked token reconstruction of the precomputed ids (``batch["ids"]`` (B, h, w))."""

    variant = "mage"

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        latent, _, recon, out = self._reconstruct(batch["ids"].long())
        out["loss"] = recon + self._probe(latent[:, 1:].mean(dim=1), batch, out)
        return out


class MAGEAugMethod(MaskedTokenMethod):
    """MAGE's published recipe: one RandomResizedCrop + flip view per image, tokenized online."""

    variant = "mage-aug"

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]  # (B, C, H, W) in [0, 1]
        tok = self.tokenizer
        with torch.no_grad():
            view = random_resized_crop_flip(images, int(tok.image_size), (self.cfg.crops.scale_min, 1.0))
            ids = tok.encode(view).long()  # (B, h, w)
        latent, _, recon, out = self._reconstruct(ids)
        out["loss"] = recon + self._probe(latent[:, 1:].mean(dim=1), batch, out)
        return out


class MAGECMethod(MaskedTokenMethod):
    """MAGE-C: two augmented crops tokenized online, their reconstruction + SimCLR's NT-Xent between the crops'
    pooled features (``sorcen.loss.contrast_weight 0`` is the "two crops, no contrast" ablation)."""

    variant = "mage-c"

    def build_variant_modules(self) -> None:
        self.projector = ProjectionHead(self.arch.dim, self.arch.proj_hidden, self.arch.proj_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]  # (B, C, H, W) in [0, 1]
        tok = self.tokenizer
        size = int(tok.image_size)
        scale = (self.cfg.crops.scale_min, 1.0)
        with torch.no_grad():
            views = torch.cat([random_resized_crop_flip(images, size, scale),
                               random_resized_crop_flip(images, size, scale)])  # (2B, C, S, S)
            ids = tok.encode(views).long()  # (2B, h, w), tokenized online every step
        latent, _, recon, out = self._reconstruct(ids)
        pooled = latent[:, 1:].mean(dim=1)  # (2B, D)
        z = self.projector(pooled)  # (2B, P)
        b = images.shape[0]
        contrast = nt_xent(z[:b], z[b:], self.cfg.crops.temperature)
        out["contrast"] = contrast.detach()
        out["loss"] = recon + self.cfg.loss.contrast_weight * contrast + self._probe(pooled[:b], batch, out)
        return out


class SorcenMethod(MaskedTokenMethod):
    """Sorcen: masked token reconstruction + Echo Contrast (an echo sampled from the model's own predictions,
    encoded by an EMA teacher, as the InfoNCE positive) + a uniformity term, on precomputed ids."""

    variant = "sorcen"

    def build_variant_modules(self) -> None:
        arch = self.arch
        if self.cfg.needs_epochs() and self.steps_per_epoch <= 0:
            raise ValueError("echo.warmup_unit epochs/released and teacher.momentum_schedule=epoch need steps_per_epoch")
        self.projector = ProjectionHead(arch.dim, arch.proj_hidden, arch.proj_dim)
        self.predictor = ProjectionHead(arch.proj_dim, arch.pred_hidden, arch.proj_dim)
        # EMA teacher: its own blocks and projector; it shares the embedding and final norm.
        self.teacher_blocks = copy.deepcopy(self.model.blocks).requires_grad_(False)
        self.teacher_projector = copy.deepcopy(self.projector).requires_grad_(False)
        if self.cfg.teacher.init == "random":  # the released code initialises the teacher separately
            self.teacher_blocks.apply(init_vit_weights)
            for m in self.teacher_projector.modules():
                if isinstance(m, (nn.Linear, nn.BatchNorm1d)):
                    m.reset_parameters()
        self.teacher_projector.requires_grad_(self.cfg.teacher.projector_grad)
        self._last_top1: torch.Tensor | None = None

    @torch.no_grad()
    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Record progress and move the teacher towards the student (momentum 0.996 -> 1, cosine)."""
        super().on_train_step_end(step, total_steps)
        if self.cfg.echo.warmup_unit == "accuracy" and self._last_top1 is not None:
            self.top1_running.lerp_(self._last_top1.to(self.top1_running), 0.1)  # running mean of ~10 steps
            self.echo_live |= self.top1_running >= self.cfg.echo.warmup
        beta = self.momentum_at(step, total_steps)
        for student, teacher in ((self.model.blocks, self.teacher_blocks), (self.projector, self.teacher_projector)):
            s_params: list[torch.Tensor] = [p.detach() for p in student.parameters()]
            t_params: list[torch.Tensor] = list(teacher.parameters())
            torch._foreach_lerp_(t_params, s_params, 1.0 - beta)  # t <- beta * t + (1 - beta) * s

    def compiled_blocks(self) -> list[nn.Module]:
        return [*super().compiled_blocks(), *self.teacher_blocks]

    def momentum_at(self, step: int, total_steps: int) -> float:
        """beta = 1 - (1 - m0) * (cos(pi * x) + 1) / 2 with x = step / total, or with
        ``momentum_schedule=epoch`` x = (integer epoch) / momentum_epochs (the released code's rule)."""
        if self.cfg.teacher.momentum_schedule == "step":
            return cosine_value(step, self.cfg.teacher.momentum, 1.0, max(total_steps, 1))
        spe = max(self.steps_per_epoch, 1)
        horizon = self.cfg.teacher.momentum_epochs or max(total_steps / spe, 1.0)
        x = min((step // spe) / horizon, 1.0)
        return 1.0 - (1.0 - self.cfg.teacher.momentum) * (math.cos(math.pi * x) + 1.0) / 2.0

    def in_echo_warmup(self) -> bool:
        """True while the echo is the ground truth (the decoder is not yet a useful generator)."""
        if self._progress is None:
            self._progress = (int(self.step), int(self.total_steps))
        step, total = self._progress
        unit, w = self.cfg.echo.warmup_unit, self.cfg.echo.warmup
        if unit == "fraction":
            return total == 0 or step < math.ceil(w * total)
        if unit == "steps":
            return step < w
        if unit == "epochs":  # ground truth for the first w epochs
            return step < math.ceil(w * self.steps_per_epoch)
        if unit == "released":  # LEASE: `if epoch <= 10` with the 0-based epoch index
            return step // max(self.steps_per_epoch, 1) <= RELEASED_ECHO_EPOCHS
        return not bool(self.echo_live)  # accuracy: until the decoder's running masked top-1 reached w

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = batch["ids"].long()  # (B, h, w)
        latent, logits, recon, out = self._reconstruct(ids)
        pooled = latent[:, 1:].mean(dim=1)  # (B, D) mean of the kept image positions
        self._last_top1 = out["masked_top1"]
        pool_u = latent.mean(dim=1) if self.cfg.loss.uniformity_pool == "all" else pooled
        uniformity = uniformity_loss(pool_u, diagonal=self.cfg.loss.uniformity_diagonal)
        z = self._echo_embedding(ids, logits)  # (B, P); a gradient only into a trainable teacher projector
        p = self.predictor(self.projector(pooled))  # (B, P)
        contrast = info_nce(z, p, self.cfg.echo.contrast_temperature)  # queries: echoes; keys: anchors of all ranks
        loss = recon + self.cfg.loss.uniformity_weight * uniformity + self.cfg.loss.contrast_weight * contrast
        out.update(uniformity=uniformity.detach(), contrast=contrast.detach(),
                   echo_warmup=torch.tensor(float(self.in_echo_warmup()), device=loss.device))
        out["loss"] = loss + self._probe(pooled, batch, out)
        return out

    def _echo_embedding(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Echo -> jittered window -> EMA teacher (no dropping) -> mean of image positions -> projector.

        The teacher blocks always run without gradient; the projector too unless ``teacher_projector_grad``
        (the released code calls it outside ``no_grad``, so AdamW trains it besides the EMA pull).
        """
        b, (h, w) = ids.shape[0], self.arch.grid
        with torch.no_grad():
            if self.in_echo_warmup():
                echo = ids.reshape(b, h, w)
            else:
                echo = sample_echo(logits.detach(), self.cfg.echo.topk, self.cfg.echo.temperature).view(b, h, w)
            echo = window_mask(echo, sample_window_side(self.arch.grid), self.model.special.mask)  # (B, h, w)
            x = self.model.embed(self.model.with_class_slot(echo))  # (B, 1+N, D), shared embedding
            t = self.model.run_encoder(x, self.teacher_blocks)[:, 1:].mean(dim=1)  # (B, D), shared final norm
        if self.cfg.teacher.projector_grad:
            return self.teacher_projector(t)  # (B, P)
        with torch.no_grad():
            return self.teacher_projector(t)  # (B, P)


VARIANTS: dict[str, type[MaskedTokenMethod]] = {
    "sorcen": SorcenMethod, "mage": MAGEMethod, "mage-c": MAGECMethod, "mage-aug": MAGEAugMethod}
"""The Sorcen family by variant name (``train sorcen --method``, ``sorcen.json``'s ``variant``)."""


def build_method(arch: SorcenArch, variant: str = "sorcen", cfg: SorcenConfig | None = None,
                 num_classes: int = 0, tokenizer: Tokenizer | None = None,
                 steps_per_epoch: int = 0) -> MaskedTokenMethod:
    """The method of ``variant`` (a key of :data:`VARIANTS`); the other arguments go to its constructor."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](arch, cfg, num_classes=num_classes, tokenizer=tokenizer,
                             steps_per_epoch=steps_per_epoch)
