"""Official MAGE / Sorcen weights (``models_mage.py`` / ``models_lease_tk_1600.py`` layout) -> this model.

The official vocabulary has ``V = K + 1000 + 1`` rows: K codes, 1000 ImageNet class ids and [MASK] last.
Unconditional MAGE feeds one fixed "fake class" id, ``K + 1100 - 1024`` (class row 76), in the class slot.
Here the vocabulary is K codes, [MASK] = K, class = K + 1 (:class:`~.model.SpecialIds`), so the converter
keeps the code rows, moves the [MASK] row and the fake-class row, and keeps only the K code biases of
the head (the loss and the sampler only ever use code logits). Pieces the official model carries but
never uses for token modelling (pixel patch embedding, fixed sin-cos tables, the pixel decoder head,
the VQGAN, Sorcen's MLP classifier) are dropped and listed in the report.

Usage: ``python -m unissl.methods.sorcen.convert mage-vitb.pth RUN_DIR --preset vit_b [--tokenizer DIR]``
writes a run directory that ``unissl sample sorcen`` and the ``sorcen`` feature extractor accept.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from unissl.engine.checkpoint import save_checkpoint
from unissl.errors import UnisslError
from unissl.methods.sorcen.config import SorcenConfig
from unissl.methods.sorcen.method import build_method
from unissl.methods.sorcen.model import SpecialIds
from unissl.methods.sorcen.presets import PRESETS, SorcenArch
from unissl.methods.sorcen.run import write_run_info
from unissl.utils.weights import read_torch_weights

OFFICIAL_NUM_CLASS_IDS = 1000  # ImageNet class rows between the codes and [MASK]
OFFICIAL_FAKE_CLASS_ROW = 76  # models_mage.py: fake_class_label = codebook_size + 1100 - 1024
OFFICIAL_PATCH, OFFICIAL_IN_CHANS = 16, 3  # the unused pixel patch embedding / pixel head of MAE heritage

# Official prefixes that carry nothing for token modelling.
_IGNORED = re.compile(r"^(vqgan\.|patch_embed\.|cls_token$|pos_embed$|mask_token$|decoder_pos_embed$|"
                      r"decoder_pred\.|token_emb\.position_ids$|classifier\.)")
# Official name -> ours, for tensors copied as they are (blocks keep their sub-module names).
_RENAMES: list[tuple[str, str]] = [
    (r"^token_emb\.position_embeddings\.weight$", "model.embed.position.weight"),
    (r"^token_emb\.LayerNorm\.(weight|bias)$", r"model.embed.norm.\1"),
    (r"^blocks\.(\d+)\.(.*)$", r"model.blocks.\1.\2"),
    (r"^norm\.(weight|bias)$", r"model.norm.\1"),
    (r"^decoder_embed\.(weight|bias)$", r"model.decoder_embed.\1"),
    (r"^decoder_pos_embed_learned$", "model.decoder_pos"),
    (r"^decoder_blocks\.(\d+)\.(.*)$", r"model.decoder_blocks.\1.\2"),
    (r"^decoder_norm\.(weight|bias)$", r"model.decoder_norm.\1"),
    (r"^mlm_layer\.fc\.(weight|bias)$", r"model.head.fc.\1"),
    (r"^mlm_layer\.ln\.(weight|bias)$", r"model.head.norm.\1"),
    # Sorcen's Echo-Contrast parts (absent from MAGE checkpoints).
    (r"^blocks_momentum\.(\d+)\.(.*)$", r"teacher_blocks.\1.\2"),
    (r"^projector\.projector\.(.*)$", r"projector.net.\1"),
    (r"^momentum_projector\.projector\.(.*)$", r"teacher_projector.net.\1"),
    (r"^predictor\.projector\.(.*)$", r"predictor.net.\1"),
]


def converted_name(official: str) -> str | None:
    """Our name of the official tensor ``official``; None for the tensors the converter drops."""
    if official == "token_emb.word_embeddings.weight":
        return "model.embed.word.weight"  # rows reordered (see the module docstring)
    if official == "mlm_layer.bias":
        return "model.head.bias"  # only the K code biases kept
    if _IGNORED.match(official):
        return None
    for pattern, target in _RENAMES:
        if re.match(pattern, official):
            return re.sub(pattern, target, official)
    raise UnisslError(f"official key {official!r} has no counterpart here; is this a MAGE / Sorcen checkpoint?")


def official_codebook_size(vocab_rows: int) -> int:
    """K from the official embedding's row count ``K + 1000 + 1``."""
    k = vocab_rows - OFFICIAL_NUM_CLASS_IDS - 1
    if k < 2:
        raise UnisslError(f"official word embedding has {vocab_rows} rows; expected K + 1001 with K >= 2")
    return k


@dataclass
class ConversionReport:
    """What the converter did with every official tensor."""

    variant: Literal["mage", "sorcen"]  # "mage": no Echo-Contrast tensors
    converted: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def convert_official_state_dict(state: dict[str, torch.Tensor], arch: SorcenArch | None = None
                                ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map an official MAGE / Sorcen state dict onto :class:`~.method.MaskedTokenMethod`'s names.

    ``arch`` is needed for the head counts (not stored in weights); by default it is inferred from the
    widths and depths (see :func:`infer_arch`). Returns (state dict, report); every key of a ``mage``
    or ``sorcen`` variant method must be present (checked by ``load_state_dict(strict=True)``).
    """
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if "token_emb.word_embeddings.weight" not in state:
        raise UnisslError("not an official MAGE / Sorcen state dict: no 'token_emb.word_embeddings.weight'")
    arch = arch or infer_arch(state)
    word = state["token_emb.word_embeddings.weight"]  # (K + 1001, D)
    k = official_codebook_size(word.shape[0])
    if k != arch.codebook_size:
        raise UnisslError(f"official weights have K={k} codes but the architecture expects {arch.codebook_size}")
    special = SpecialIds(k)
    out: dict[str, torch.Tensor] = {}
    report = ConversionReport(variant="sorcen" if any(n.startswith("blocks_momentum.") for n in state) else "mage")
    # Our rows: codes 0..K-1, [MASK] = K (official: the last row), class = K+1 (official: the fake class).
    rows = torch.cat([torch.arange(k), torch.tensor([word.shape[0] - 1, k + OFFICIAL_FAKE_CLASS_ROW])])
    assert rows.shape[0] == special.vocab_size
    out["model.embed.word.weight"] = word[rows.to(word.device)]
    out["model.head.bias"] = state["mlm_layer.bias"].reshape(-1)[:k]  # (1, 1, V) -> the K code biases
    report.converted += ["token_emb.word_embeddings.weight", "mlm_layer.bias"]
    out["step"] = torch.zeros((), dtype=torch.long, device=word.device)  # training progress: none yet
    out["total_steps"] = torch.zeros((), dtype=torch.long, device=word.device)
    out["top1_running"] = torch.zeros((), device=word.device)  # the accuracy echo warm-up has not started
    out["echo_live"] = torch.zeros((), dtype=torch.bool, device=word.device)
    for name, tensor in state.items():
        if name in ("token_emb.word_embeddings.weight", "mlm_layer.bias"):
            continue
        ours = converted_name(name)
        if ours is None:
            report.ignored.append(name)
        else:
            out[ours] = tensor
            report.converted.append(name)
    return out, report


def infer_arch(state: dict[str, torch.Tensor]) -> SorcenArch:
    """The preset whose widths, depths, K and grid match an official state dict (heads are not in weights)."""
    word = state["token_emb.word_embeddings.weight"]
    dim = word.shape[1]
    depth = len({n.split(".")[1] for n in state if n.startswith("blocks.")})
    dec_depth = len({n.split(".")[1] for n in state if n.startswith("decoder_blocks.")})
    dec_dim = state["decoder_embed.weight"].shape[0]
    positions = state["token_emb.position_embeddings.weight"].shape[0] - 1
    k = official_codebook_size(word.shape[0])
    for arch in PRESETS.values():
        if (arch.dim, arch.depth, arch.decoder_dim, arch.decoder_depth, arch.codebook_size, arch.num_positions) == \
                (dim, depth, dec_dim, dec_depth, k, positions):
            return arch
    raise UnisslError(f"no preset matches the official weights (dim {dim}, depth {depth}, decoder {dec_dim}x{dec_depth}, "
                      f"K={k}, {positions} positions); pass the architecture explicitly")


def official_key_shapes(arch: SorcenArch, sorcen: bool = False) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``MaskedGenerativeEncoderViT.state_dict()`` (without the VQGAN) for ``arch``.

    With ``sorcen`` also the tensors ``SorcenViT`` adds (EMA blocks, projectors, predictor, classifier).
    Used to build synthetic official checkpoints in tests and to count MAGE's parameters.
    """
    d, dd, n1 = arch.dim, arch.decoder_dim, arch.num_positions + 1
    vocab = arch.codebook_size + OFFICIAL_NUM_CLASS_IDS + 1
    hidden, dec_hidden = int(d * arch.mlp_ratio), int(dd * arch.mlp_ratio)

    def block(prefix: str, w: int, h: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.norm1.weight": (w,), f"{prefix}.norm1.bias": (w,),
                f"{prefix}.attn.qkv.weight": (3 * w, w), f"{prefix}.attn.qkv.bias": (3 * w,),
                f"{prefix}.attn.proj.weight": (w, w), f"{prefix}.attn.proj.bias": (w,),
                f"{prefix}.norm2.weight": (w,), f"{prefix}.norm2.bias": (w,),
                f"{prefix}.mlp.fc1.weight": (h, w), f"{prefix}.mlp.fc1.bias": (h,),
                f"{prefix}.mlp.fc2.weight": (w, h), f"{prefix}.mlp.fc2.bias": (w,)}

    def projector(prefix: str, i: int, h: int, o: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.projector.0.weight": (h, i), f"{prefix}.projector.0.bias": (h,),
                f"{prefix}.projector.1.weight": (h,), f"{prefix}.projector.1.bias": (h,),
                f"{prefix}.projector.1.running_mean": (h,), f"{prefix}.projector.1.running_var": (h,),
                f"{prefix}.projector.1.num_batches_tracked": (),
                f"{prefix}.projector.3.weight": (o, h), f"{prefix}.projector.3.bias": (o,)}

    shapes: dict[str, tuple[int, ...]] = {
        "token_emb.word_embeddings.weight": (vocab, d), "token_emb.position_embeddings.weight": (n1, d),
        "token_emb.LayerNorm.weight": (d,), "token_emb.LayerNorm.bias": (d,), "token_emb.position_ids": (1, n1),
        "cls_token": (1, 1, d), "pos_embed": (1, n1, d),
        "patch_embed.proj.weight": (d, OFFICIAL_IN_CHANS, OFFICIAL_PATCH, OFFICIAL_PATCH), "patch_embed.proj.bias": (d,),
    }
    for i in range(arch.depth):
        shapes.update(block(f"blocks.{i}", d, hidden))
    shapes.update({"norm.weight": (d,), "norm.bias": (d,), "decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,),
                   "mask_token": (1, 1, dd), "decoder_pos_embed": (1, n1, dd), "decoder_pos_embed_learned": (1, n1, dd)})
    for i in range(arch.decoder_depth):
        shapes.update(block(f"decoder_blocks.{i}", dd, dec_hidden))
    shapes.update({"decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
                   "decoder_pred.weight": (OFFICIAL_PATCH ** 2 * OFFICIAL_IN_CHANS, dd),
                   "decoder_pred.bias": (OFFICIAL_PATCH ** 2 * OFFICIAL_IN_CHANS,),
                   "mlm_layer.fc.weight": (d, dd), "mlm_layer.fc.bias": (d,), "mlm_layer.ln.weight": (d,),
                   "mlm_layer.ln.bias": (d,), "mlm_layer.bias": (1, 1, vocab)})
    if sorcen:
        for i in range(arch.depth):
            shapes.update(block(f"blocks_momentum.{i}", d, hidden))
        shapes.update(projector("projector", d, arch.proj_hidden, arch.proj_dim))
        shapes.update(projector("momentum_projector", d, arch.proj_hidden, arch.proj_dim))
        shapes.update(projector("predictor", arch.proj_dim, arch.pred_hidden, arch.proj_dim))
        shapes.update({"classifier.0.weight": (512, d), "classifier.0.bias": (512,),
                       "classifier.2.weight": (OFFICIAL_NUM_CLASS_IDS, 512),
                       "classifier.2.bias": (OFFICIAL_NUM_CLASS_IDS,)})
    return shapes


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an official ``.pth`` (``{"model": state_dict, ...}``) loaded without executing code."""
    path = Path(path)

    obj = read_torch_weights(path, "re-save its 'model' state dict with torch.save(ckpt['model'], 'weights.pth') "
                                   "in a trusted environment, or download the official checkpoint again")
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise UnisslError(f"{path} holds no state dict")
    if "token_emb.word_embeddings.weight" not in state:
        raise UnisslError(f"{path} holds no MAGE / Sorcen encoder (no token_emb.word_embeddings.weight among its "
                          f"{len(state)} tensors); pass an official MAGE or Sorcen checkpoint")
    return state


def write_converted_run(state: dict[str, torch.Tensor], arch: SorcenArch, run_dir: str | Path,
                        tokenizer: str | None = None) -> ConversionReport:
    """Convert and write a run directory (``sorcen.json`` + ``checkpoints/step_0000000``)."""
    converted, report = convert_official_state_dict(state, arch)
    method = build_method(arch, report.variant)  # no probe: the official classifier is an MLP, not kept
    full = method.state_dict()
    full.update(converted)
    try:
        method.load_state_dict(full, strict=True)
    except RuntimeError as e:
        raise UnisslError(f"converted weights do not fit the {arch} model: {str(e).splitlines()[0]}") from e
    save_checkpoint(run_dir, 0, method.state_dict(), {"step": 0, "converted_from": "official"})
    write_run_info(run_dir, arch, report.variant, SorcenConfig(), 0, [], None, tokenizer)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m unissl.methods.sorcen.convert CKPT RUN_DIR [--preset vit_b] [--tokenizer DIR]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="architecture (default: inferred)")
    p.add_argument("--tokenizer", default=None, help="the VQGAN to record for decoding / features")
    a = p.parse_args(argv)
    try:
        state = load_official_checkpoint(a.checkpoint)
        arch = PRESETS[a.preset] if a.preset else infer_arch(state)
        report = write_converted_run(state, arch, a.run_dir, a.tokenizer)
    except UnisslError as e:
        print(f"unissl: error: {e}", file=sys.stderr)
        return 2
    print(f"converted {len(report.converted)} tensors ({report.variant}); ignored {len(report.ignored)}: "
          f"{sorted({n.split('.')[0] for n in report.ignored})} -> {a.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
