"""RepTok: one adapted SSL token per image, a flow-matching decoder, and a generator over the token.

Tokenizer side (this package's modules, top to bottom): :mod:`.encoders` (SSL encoder adapters with one
trainable [cls]), :mod:`.projection` (token -> decoder condition, cosine regulariser), :mod:`.spaces`
(pixels or frozen VAE latents), :mod:`.decoder` (flow-matching transformer and its presets),
:mod:`.tokenizer` (the trainable method, save/load), :mod:`.features` (evaluation extractor),
:mod:`.tiny` (random stand-in weights for offline tests). The generator side lives in
:mod:`.generator` / :mod:`.sampling` / :mod:`.text`.

Interfaces for other packages:

* ``load_reptok_tokenizer(dir, device) -> RepTokTokenizer`` with ``encode(images (B, C, H, W) in [0, 1])
  -> z (B, D)`` and ``decode(z, steps=50, solver="euler") -> images``; ``tokenizer.encoder.dim`` is D,
  ``tokenizer.cfg`` has ``image_size`` / ``channels``.
* The flow math (paths, time samplers, Euler/Heun) is :mod:`unissl.flow`.
"""

from unissl.methods.reptok.decoder import DECODER_PRESETS, DecoderPreset, FlowDecoder
from unissl.methods.reptok.encoders import ENCODERS, RANDOM_VIT_PRESETS, SSLEncoder, build_encoder
from unissl.methods.reptok.projection import ResidualProjection, cosine_loss
from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer, load_reptok_tokenizer

__all__ = ["DECODER_PRESETS", "DecoderPreset", "ENCODERS", "FlowDecoder", "RANDOM_VIT_PRESETS", "RepTokConfig",
           "RepTokTokenizer", "ResidualProjection", "SSLEncoder", "build_encoder", "cosine_loss",
           "load_reptok_tokenizer"]
