"""The Sorcen family's settings, one dataclass per concern (paper values by default).

:class:`SorcenConfig` nests them: ``masking`` (MAGE's ratio and dropping), ``loss`` (the terms' weights and the
uniformity term's form), ``echo`` (Echo Contrast: echo sampling, its warm-up, the InfoNCE temperature),
``teacher`` (the EMA teacher), ``crops`` (MAGE-C / MAGE-aug's online crops and NT-Xent), plus the weight-decay
grouping and the online probe. ``unissl train sorcen`` nests it as ``sorcen`` (``--sorcen.masking.max 0.8``).

Where the released Sorcen code (LEASE) differs from the paper's text, options reproduce it: the echo warm-up
horizon (``echo.warmup_unit``, the released ``epoch <= 10`` rule is ``released``), the teacher's initialisation
and trainable projector, the epoch-wise momentum schedule, the uniformity pooling and the weight-decay grouping;
see docs/fidelity.md for which default was chosen and why.

Runs written before the split recorded one flat dict (``mask_max``, ``echo_warmup``, ``teacher_init``, ...):
:func:`upgrade_settings` maps it onto the sections (``sorcen.json`` of older runs, pipeline records of older
stages, pipeline files that still give the flat ``loss:`` section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from unissl.config import arg
from unissl.errors import ConfigError, UnisslError

EchoWarmupUnit = Literal["fraction", "steps", "epochs", "released", "accuracy"]


@dataclass
class MaskingConfig:
    """MAGE's masking: a truncated-normal ratio per step, part of the masked positions dropped from the encoder."""

    mean: float = arg(0.55, help="mean of the truncated-normal masking ratio")
    std: float = arg(0.25, help="std of the truncated-normal masking ratio")
    min: float = arg(0.5, help="lower truncation of the masking ratio")
    max: float = arg(1.0, help="upper truncation of the masking ratio")
    drop_ratio: float = arg(0.5, help="fraction of positions dropped from the encoder input (within the masked)")

    def __post_init__(self) -> None:
        if not 0.0 < self.min <= self.max <= 1.0:
            raise ConfigError("max", f"need 0 < min <= max <= 1, got min {self.min}, max {self.max}")
        if not 0.0 <= self.drop_ratio <= self.min:
            raise ConfigError("drop_ratio", f"must be in [0, min={self.min}], got {self.drop_ratio}")


@dataclass
class LossConfig:
    """The weights of the loss terms (total: recon + uniformity_weight * uniformity + contrast_weight *
    contrastive + probe) and the form of the uniformity term."""

    label_smoothing: float = arg(0.1, help="label smoothing of the token cross-entropy")
    contrast_weight: float = arg(0.1, help="weight of the InfoNCE term (Echo Contrast or MAGE-C's NT-Xent)")
    uniformity_weight: float = arg(0.01, help="weight of the uniformity term (sorcen only)")
    uniformity_pool: Literal["image", "all"] = arg("image", help="uniformity term over the mean of the image "
                                                   "positions, or of all encoder outputs incl. the class slot "
                                                   "(released code)")
    uniformity_diagonal: bool = arg(False, help="average the squared cosines over all pairs incl. i=j "
                                                "(released code) instead of distinct images only")


@dataclass
class EchoConfig:
    """Echo Contrast: the echo sampled from the decoder's predictions, when it replaces the ground truth, and
    the InfoNCE between its teacher embedding and the student's."""

    topk: int = arg(15, help="echo samples among the k most likely codes after the argmax")
    temperature: float = arg(1.0, help="temperature of the echo sampling")
    warmup: float = arg(10 / 1600, help="how long the echo is the ground truth, in warmup_unit")
    warmup_unit: EchoWarmupUnit = arg("fraction", help="fraction: of the run; steps / epochs: absolute; released: the "
                                      "released code's rule, epoch index <= 10 (value ignored); accuracy: until "
                                      "the decoder's masked top-1 (running mean) reaches warmup")
    contrast_temperature: float = arg(0.3, help="temperature of the Echo Contrast InfoNCE")

    def __post_init__(self) -> None:
        for name in ("temperature", "contrast_temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError("warmup", f"must be >= 0, got {self.warmup}")
        if self.warmup_unit in ("fraction", "accuracy") and not self.warmup <= 1.0:
            what = "a fraction of training" if self.warmup_unit == "fraction" else "a top-1 accuracy"
            raise ConfigError("warmup", f"is {what} in [0, 1] with warmup_unit={self.warmup_unit}, got {self.warmup}")


@dataclass
class TeacherConfig:
    """The EMA teacher that embeds the echo: its momentum schedule and initialisation."""

    momentum: float = arg(0.996, help="initial EMA momentum of the teacher (cosine to 1.0)")
    momentum_schedule: Literal["step", "epoch"] = arg("step", help="step: cosine over the run's steps; epoch: over "
                                                      "the integer epoch (released code)")
    momentum_epochs: float | None = arg(None, help="epoch schedule: horizon of the cosine in epochs (released code: "
                                                   "1600 hard-coded; default: the run's length)")
    init: Literal["copy", "random"] = arg("copy", help="teacher blocks/projector start as a copy of the student or "
                                          "as their own random init (released code)")
    projector_grad: bool = arg(True, help="the teacher projector also gets gradients from the contrast term and is "
                                          "trained by AdamW besides the EMA pull (released code; measured +0.7 "
                                          "probe / +1.0 kNN, docs/fidelity.md)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("momentum", f"must be in [0, 1), got {self.momentum}")
        if self.momentum_epochs is not None and not self.momentum_epochs > 0:
            raise ConfigError("momentum_epochs", f"must be positive, got {self.momentum_epochs}")


@dataclass
class CropConfig:
    """MAGE-C / MAGE-aug: the random resized crops tokenized online, and MAGE-C's NT-Xent between two of them."""

    scale_min: float = arg(0.2, help="smallest crop area fraction")
    temperature: float = arg(0.2, help="MAGE-C NT-Xent temperature")

    def __post_init__(self) -> None:
        if not 0.0 < self.scale_min <= 1.0:
            raise ConfigError("scale_min", f"must be in (0, 1], got {self.scale_min}")
        if not self.temperature > 0:
            raise ConfigError("temperature", f"must be positive, got {self.temperature}")


@dataclass
class SorcenConfig:
    """Every setting of a Sorcen-family method besides its architecture (:class:`~.presets.SorcenArch`)."""

    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    echo: EchoConfig = field(default_factory=EchoConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    decay_embeddings: bool = arg(False, help="weight decay on the embeddings and the decoder position table too "
                                             "(released code: only 1-D parameters and biases are exempt)")
    probe: bool = arg(True, help="train an online linear classifier on detached features (when labels exist)")

    def needs_epochs(self) -> bool:
        """Whether the warm-up or the momentum schedule counts epochs (the method needs steps per epoch)."""
        return self.echo.warmup_unit in ("epochs", "released") or self.teacher.momentum_schedule == "epoch"


# The flat names of the settings before the split -> (section, field); a section of None is top-level.
FLAT_NAMES: dict[str, tuple[str | None, str]] = {
    "mask_mean": ("masking", "mean"), "mask_std": ("masking", "std"), "mask_min": ("masking", "min"),
    "mask_max": ("masking", "max"), "drop_ratio": ("masking", "drop_ratio"),
    "label_smoothing": ("loss", "label_smoothing"), "contrast_weight": ("loss", "contrast_weight"),
    "uniformity_weight": ("loss", "uniformity_weight"), "uniformity_pool": ("loss", "uniformity_pool"),
    "uniformity_diagonal": ("loss", "uniformity_diagonal"),
    "echo_topk": ("echo", "topk"), "echo_temperature": ("echo", "temperature"), "echo_warmup": ("echo", "warmup"),
    "echo_warmup_unit": ("echo", "warmup_unit"), "temperature": ("echo", "contrast_temperature"),
    "momentum": ("teacher", "momentum"), "momentum_schedule": ("teacher", "momentum_schedule"),
    "momentum_epochs": ("teacher", "momentum_epochs"), "teacher_init": ("teacher", "init"),
    "teacher_projector_grad": ("teacher", "projector_grad"),
    "crop_scale_min": ("crops", "scale_min"), "magec_temperature": ("crops", "temperature"),
    "decay_embeddings": (None, "decay_embeddings"), "probe": (None, "probe"),
}


def upgrade_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat settings dict of a run written before the split (``{"mask_max": 0.8, "teacher_init": "random"}``)
    as the nested dict of :class:`SorcenConfig` (``{"masking": {"max": 0.8}, "teacher": {"init": "random"}}``).
    An unknown name is a one-line error."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        if name not in FLAT_NAMES:
            raise UnisslError(f"unknown Sorcen loss setting {name!r} (a run or pipeline file of another unissl "
                              f"version?); the settings are {sorted(FLAT_NAMES)}")
        section, key = FLAT_NAMES[name]
        if section is None:
            nested[key] = value
        else:
            nested.setdefault(section, {})[key] = value
    return nested


def is_flat(settings: dict[str, Any]) -> bool:
    """True for a settings dict in the layout before the split (any flat name that is no section of today's)."""
    sections = {"masking", "loss", "echo", "teacher", "crops"}
    return any(k in FLAT_NAMES and k not in sections for k in settings) and not any(k in sections for k in settings)


def build_config(settings: dict[str, Any] | None = None) -> SorcenConfig:
    """A :class:`SorcenConfig` from its nested dict (or the flat dict of an older run)."""
    settings = dict(settings or {})
    if is_flat(settings):
        settings = upgrade_settings(settings)
    sections = {"masking": MaskingConfig, "loss": LossConfig, "echo": EchoConfig, "teacher": TeacherConfig,
                "crops": CropConfig}
    kwargs: dict[str, Any] = {k: v for k, v in settings.items() if k not in sections}
    for name, cls in sections.items():
        kwargs[name] = cls(**settings.get(name, {}))
    return SorcenConfig(**kwargs)
