"""Training method for :class:`~unissl.tokenizers.vq.VQTokenizer` (an engine :class:`~unissl.engine.method.Method`).

loss = MSE(reconstruction, image) + vq_loss, where vq_loss is the quantizer's codebook + commitment
loss (straight-through) or commitment loss (EMA). Logged: PSNR (mean over images of per-image PSNR, data
range 1, reconstructions clamped to [0, 1]), codebook usage and perplexity. Dead codes are restarted after
each optimizer step in :meth:`VQTokenizerMethod.on_train_step_end`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unissl.engine.method import Method
from unissl.tokenizers.vq import VQTokenizer
from unissl.utils.images import psnr


class VQTokenizerMethod(Method):
    """Wraps a :class:`VQTokenizer` for the trainer: ``forward(batch) -> {"loss", ...}``."""

    def __init__(self, tokenizer: VQTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.restarted = 0  # total number of dead-code restarts so far

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # (B, C, H, W) in [0, 1]
        out = self.tokenizer(x)
        rec_loss = F.mse_loss(out.recon, x)
        with torch.no_grad():
            p = psnr(out.recon.detach().clamp(0, 1), x).mean().float()
        return {"loss": rec_loss + out.vq_loss, "rec_loss": rec_loss.detach(), "vq_loss": out.vq_loss.detach(),
                "psnr": p, "usage": out.usage, "perplexity": out.perplexity}

    def get_extra_state(self) -> torch.Tensor:
        """The quantizer's code ages (steps since each code was last used) go into training checkpoints, so a
        resumed run restarts the same dead codes as an uninterrupted one; the saved tokenizer omits them."""
        return self.tokenizer.quantizer.code_age.detach().clone()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.tokenizer.quantizer.code_age.copy_(state)

    def no_weight_decay(self) -> set[str]:
        """The straight-through codebook is a 2-D parameter, but decaying it would shrink the codes."""
        return {"tokenizer.quantizer.codebook"} if self.tokenizer.quantizer.kind == "st" else set()

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Restart codes unused for ``dead_after`` steps (after the optimizer step, never in the last 10%)."""
        # late restarts would leave freshly initialised codes that the decoder never learned to use
        if step < 0.9 * total_steps:
            self.restarted += self.tokenizer.quantizer.restart_dead_codes()

    @torch.no_grad()
    def log_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"reconstruction": (2N, C, H, W)}: originals interleaved with their reconstructions."""
        x = batch["image"][:16]
        was_training = self.tokenizer.training
        self.tokenizer.eval()
        rec = self.tokenizer.decode(self.tokenizer.encode(x)).to(x.device)
        self.tokenizer.train(was_training)
        return {"reconstruction": torch.stack([x, rec], dim=1).flatten(0, 1)}
