"""Rewrite a saved model (or a Sorcen run) as a self-contained saved model of the current format.

    python -m unissl.utils.upgrade OLD_DIR NEW_DIR [--encoder-path PATH]

``OLD_DIR`` is any directory an older unissl saved (format version 0: a RepTok tokenizer that names its
encoder by the path training was given, a token generator that names its tokenizer so, a VQ tokenizer, a
domain classifier) or a ``unissl train sorcen`` run directory. It is loaded (from the directory it was
trained in, so that relative paths resolve; ``--encoder-path`` says where a RepTok tokenizer's encoder is now)
and saved again with :class:`unissl.utils.hub.PretrainedMixin`'s convention: the frozen parts inside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unissl.errors import UnisslError
from unissl.eval.domain import DomainClassifier
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.tokenizer import RepTokTokenizer
from unissl.methods.sorcen.pretrained import PretrainedSorcen
from unissl.tokenizers.vq import VQTokenizer


def upgrade(old: str | Path, new: str | Path, encoder_path: str | None = None) -> str:
    """Load ``old`` with the loader its ``config.json`` (or ``sorcen.json``) names and save it to ``new``;
    returns what it was."""
    old, new = Path(old), Path(new)
    if (old / "sorcen.json").is_file():
        PretrainedSorcen.from_run(old).save_pretrained(new)
        return "Sorcen run"
    if (old / "generator" / "config.json").is_file():
        old = old / "generator"
    cfg = old / "config.json"
    if not cfg.is_file():
        raise UnisslError(f"{old} holds no saved model (no config.json) and is no Sorcen run (no sorcen.json)")
    try:
        meta = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnisslError(f"{cfg} is not valid JSON ({type(e).__name__})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(fmt, str) and fmt.startswith("unissl-reptok-tokenizer"):
        RepTokTokenizer.from_pretrained(old, encoder_path=encoder_path).save_pretrained(new)
        return "RepTok tokenizer"
    if fmt == "unissl-reptok-generator" or (fmt is None and "token_dim" in meta):
        TokenGeneratorMethod.from_pretrained(old).save_pretrained(new)
        return "token generator"
    if fmt == "unissl-vq":
        VQTokenizer.from_pretrained(old).save_pretrained(new)
        return "VQ tokenizer"
    if fmt == "unissl-sorcen-encoder":
        PretrainedSorcen.from_pretrained(old).save_pretrained(new)
        return "Sorcen encoder"
    if fmt == "unissl-domain-classifier" or (fmt is None and "widths" in meta):
        DomainClassifier.from_pretrained(old).save_pretrained(new)
        return "domain classifier"
    raise UnisslError(f"{cfg}: format {fmt!r} is no unissl saved model this tool upgrades")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unissl.utils.upgrade", description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the saved model (or `unissl train sorcen` run) to rewrite")
    parser.add_argument("new", help="the directory to write (replaced if it exists)")
    parser.add_argument("--encoder-path", default=None, help="where a RepTok tokenizer's pretrained encoder is now")
    args = parser.parse_args(argv)
    try:
        what = upgrade(args.old, args.new, args.encoder_path)
    except UnisslError as e:
        print(f"unissl: error: {e}", file=sys.stderr)
        return 2
    print(f"unissl upgrade: {what} {args.old} -> {args.new} (self-contained, format version 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
