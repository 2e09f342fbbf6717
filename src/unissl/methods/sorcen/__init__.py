"""Sorcen (masked token modelling + Echo Contrast) and its MAGE / MAGE-C baselines.

Modules, top to bottom: :mod:`.presets` (architecture registry), :mod:`.masking` (MAGE masking/dropping,
jittered window), :mod:`.model` (token encoder-decoder, tied head), :mod:`.echo` (echo sampling),
:mod:`.losses` (token CE, InfoNCE, NT-Xent, uniformity), :mod:`.augment` (MAGE-C crops), :mod:`.config`
(the settings, one dataclass per concern), :mod:`.method`
(the trainable method), :mod:`.maskgit` (generation), :mod:`.convert` (official MAGE / Sorcen weights),
:mod:`.run` (run directories), :mod:`.features` (evaluation features).

Interfaces for other packages:

* ``load_sorcen(run_dir, device="cpu") -> (model, tokenizer)``: the frozen :class:`SorcenModel`
  (eval mode, ``requires_grad=False``) of a ``unissl train sorcen`` run and the VQ tokenizer its ids came
  from. ``model.encode(ids (B, h, w), class_embedding_override=None) -> (B, 1 + N, D)`` encodes full id
  maps (no masking) and returns the outputs after the final norm; position 0 is the class slot.
  ``class_embedding_override`` ((B, D) or (D,), e.g. a trainable parameter) replaces the class slot's
  input word embedding (position embedding, LayerNorm and dropout still apply), and gradients flow to it.
  ``model.arch.dim`` is D; ``model.special.mask`` / ``.cls`` are the [MASK] / class ids (K, K + 1).
* ``unissl.methods.sorcen.features.load_extractor(checkpoint, device)``: an evaluation extractor with
  ``features(images (B, C, H, W) in [0, 1]) -> (B, D)`` (tokenize, encode unmasked, mean of the
  image-position outputs after the final norm), ``features_from_ids(ids) -> (B, D)`` and ``identity()``.
* ``maskgit_generate(model, num_samples, MaskGITConfig(...)) -> ids (B, h, w)``.
"""

from unissl.methods.sorcen.config import (
    CropConfig,
    EchoConfig,
    LossConfig,
    MaskingConfig,
    SorcenConfig,
    TeacherConfig,
)
from unissl.methods.sorcen.maskgit import MaskGITConfig, maskgit_generate
from unissl.methods.sorcen.method import (
    VARIANTS,
    MAGEAugMethod,
    MAGECMethod,
    MAGEMethod,
    MaskedTokenMethod,
    SorcenMethod,
    build_method,
)
from unissl.methods.sorcen.model import SorcenModel, SpecialIds
from unissl.methods.sorcen.presets import PRESETS, SorcenArch, arch_for_store, get_preset
from unissl.methods.sorcen.run import load_method, load_sorcen

__all__ = ["PRESETS", "VARIANTS", "CropConfig", "EchoConfig", "LossConfig", "MAGEAugMethod", "MAGECMethod", "MAGEMethod",
           "MaskGITConfig", "MaskedTokenMethod", "MaskingConfig", "SorcenArch", "SorcenConfig", "SorcenMethod",
           "TeacherConfig", "SorcenModel", "SpecialIds", "arch_for_store",
           "build_method", "get_preset", "load_method", "load_sorcen", "maskgit_generate"]
