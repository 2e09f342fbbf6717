"""RepTok stage (b): a flow-matching generator over the single continuous token z.

Because an image is one vector z (D,), the generator needs no attention: it is an MLP-Mixer over a
handful of *slots*, ``[noisy z + learned position, condition slot(s), time embedding]``. Each block mixes
information across the slots (token-mixing MLP, the only place where z meets its condition) and then
within each slot (channel MLP), both pre-LayerNorm and residual. The velocity is read from slot 0.

Training is flow matching with the generator convention of the official code (``data_at=1``):
``z_t = t z + (1 - t) eps``, target ``z - eps``, ``t ~ U(0, 1)``; sampling integrates from t=0 (noise)
to t=1 (data), see :mod:`unissl.methods.reptok.sampling`.

Conditioning is either a class (embedding table with an extra *null* row, labels dropped to null 10% of
the time so that one network gives both the conditional and the unconditional velocity for
classifier-free guidance) or text (:class:`unissl.methods.reptok.text.TextConditioner`).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from unissl.engine.method import Method
from unissl.errors import UnisslError
from unissl.flow import LinearPath, UniformTime
from unissl.methods.reptok.mixer import Cond, GeneratorConfig, TokenGenerator
from unissl.methods.reptok.text import CaptionBank
from unissl.methods.reptok.tokenizer import RepTokTokenizer
from unissl.utils.hub import CONFIG_FILE, WEIGHTS_FILE, PretrainedMixin, frozen_dir, resolve_pretrained
from unissl.utils.io import sha256_file
from unissl.utils.weights import read_safetensors

if TYPE_CHECKING:
    from unissl.methods.reptok.text import CaptionBank


# --------------------------------------------------------------------------------------------- method
class TokenGeneratorMethod(Method, PretrainedMixin):
    """Flow matching over (normalised) RepTok tokens; the engine's ``Method``.

    Batches hold ``{"z": float (B, D), "label": int64 (B,)}`` (a continuous token store). Tokens are
    normalised with stored statistics, ``(z - mean) / std`` (per-dimension mean, one global std so that
    near-constant dimensions are not blown up), and :meth:`denormalize` undoes it after sampling.
    In text mode the method also holds a :class:`~unissl.methods.reptok.text.CaptionBank` (frozen text
    states of the training captions) and draws one caption of the sample's class per step.
    """
    z_mean: torch.Tensor  # buffer
    z_std: torch.Tensor  # buffer

    def __init__(self, cfg: GeneratorConfig, z_mean: torch.Tensor | None = None, z_std: torch.Tensor | None = None,
                 caption_bank: CaptionBank | None = None):
        super().__init__()
        self.cfg = cfg
        self.net = TokenGenerator(cfg)
        self.register_buffer("z_mean", torch.zeros(cfg.token_dim) if z_mean is None else z_mean.float().clone())
        self.register_buffer("z_std", torch.ones(()) if z_std is None else z_std.float().reshape(()).clone())
        if cfg.conditioning == "text":
            if caption_bank is None:
                caption_bank = CaptionBank.empty(cfg.text_dim)
            self.captions: CaptionBank = caption_bank
        self.path = LinearPath(data_at=1.0)
        self.time = UniformTime()

    # -- normalisation
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.z_mean) / self.z_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.z_std + self.z_mean

    # -- conditioning
    def condition(self, batch: dict[str, torch.Tensor]) -> Cond:
        """The batch's condition: its labels, or (text mode) a random training caption of its class."""
        if self.cfg.conditioning == "class":
            return {"label": batch["label"].long()}
        return self.captions.sample_for_labels(batch["label"].long())

    def null_condition(self, cond: Cond) -> Cond:
        return self.net.conditioner.null(cond)

    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Velocity in normalised token space: ``z_t`` (B, D), ``t`` (B,) -> (B, D)."""
        return self.net(z_t, t, cond)

    # -- training
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.normalize(batch["z"].float())  # (B, D)
        cond = self.net.conditioner.drop(self.condition(batch), self.cfg.cond_dropout)
        t = self.time.sample(z.shape[0], device=z.device)  # (B,) ~ U(0, 1)
        ps = self.path.sample(z, t)  # z_t = t z + (1 - t) eps, target z - eps
        v = self.velocity(ps.x_t, t, cond)
        loss = F.mse_loss(v.float(), ps.target)
        return {"loss": loss}

    def no_weight_decay(self) -> set[str]:
        names = {"net.pos"}
        if self.cfg.conditioning == "text":
            names |= {"net.conditioner.queries", "net.conditioner.null_context"}
        return names

    # -- persistence (utils/hub.py's convention; loading executes no code)
    FORMAT = "unissl-reptok-generator"
    OLD_FORMATS = (None,)  # version 0: config.json held the GeneratorConfig fields alone
    WHAT = "token generator"
    MADE_BY = "`unissl train reptok-generator` (its run directory or the generator/ inside it)"
    CARD_TITLE = "unissl RepTok token generator"
    WEIGHTS_METADATA = {"format": "unissl-reptok-generator"}

    def pretrained_config(self) -> dict[str, Any]:
        cfg = asdict(self.cfg)
        cfg["tokenizer_path"] = ""  # where it lives is config.json's "frozen" entry, never a training path
        return cfg

    def save_frozen_parts(self, directory: Path) -> dict[str, Any]:
        """The RepTok tokenizer whose tokens it models, inside the saved generator (``tokenizer/``), or its hub
        id plus checksum when it was loaded from the hub: a saved generator samples images on its own."""
        source = self.cfg.tokenizer_path
        if not source:
            return {}

        return {"tokenizer": RepTokTokenizer.embed(source, directory / "tokenizer")}

    @classmethod
    def find_saved(cls, directory: Path) -> Path:
        """A run directory of ``unissl train reptok-generator`` holds the saved generator in ``generator/``."""
        return directory / "generator" if (directory / "generator" / CONFIG_FILE).is_file() else directory

    @classmethod
    def build_pretrained(cls, meta: dict[str, Any], state: dict[str, torch.Tensor], directory: Path,
                         **kwargs: Any) -> TokenGeneratorMethod:
        raw = meta.get("config")
        try:
            cfg = GeneratorConfig(**raw) if isinstance(raw, dict) else None
        except TypeError as e:
            raise UnisslError(f"{directory / CONFIG_FILE} is not a valid generator config ({e}); re-export the "
                              f"generator") from None
        if cfg is None:
            raise UnisslError(f"{directory / CONFIG_FILE} has no generator config; re-export the generator")
        cfg.tokenizer_path = frozen_dir(directory, meta, "tokenizer") or ""
        entry = (meta.get("frozen") or {}).get("tokenizer") or {}
        if entry.get("hub_id") and entry.get("checksum"):  # a referenced tokenizer must be the one it was saved with

            local = resolve_pretrained(entry["hub_id"], "the generator's tokenizer")
            got = sha256_file(local / WEIGHTS_FILE) if (local / WEIGHTS_FILE).is_file() else "missing"
            if got != entry["checksum"]:
                raise UnisslError(f"the tokenizer {entry['hub_id']!r} that {directory} names has other weights than "
                                  f"the one it was saved with (checksum {got[:16]} != {entry['checksum'][:16]}); pin "
                                  f"the revision it was saved with (org/name@revision)")
            cfg.tokenizer_path = str(local)
        bank = None
        if cfg.conditioning == "text":
            bank = CaptionBank.from_state(state, prefix="captions.")
        method = cls(cfg, caption_bank=bank)
        try:
            method.load_state_dict(state)
        except RuntimeError as e:
            raise UnisslError(f"{directory / WEIGHTS_FILE} does not match its config ({str(e).splitlines()[0]}); "
                              f"re-export the generator") from None
        return method

    @classmethod
    def read_version0(cls, directory: Path, meta: dict[str, Any], **kwargs: Any) -> TokenGeneratorMethod:
        """Version 0: config.json held the config's fields; ``tokenizer_path`` is where training found it."""
        state = read_safetensors(directory / WEIGHTS_FILE, "re-export the generator (it is written at the end of "
                                 "`unissl train reptok-generator`) or retrain it")
        method = cls.build_pretrained({"config": meta}, state, directory)
        method.cfg.tokenizer_path = str(meta.get("tokenizer_path") or "")
        return method

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",  # type: ignore[override]
                        map_location: str | torch.device | None = None, **kwargs: Any) -> TokenGeneratorMethod:
        """Load a saved generator (its directory, the run directory that holds it in ``generator/``, or a hub
        repo id) on ``device`` (``map_location`` is its older name)."""
        return super().from_pretrained(path, device=map_location if map_location is not None else device, **kwargs)
