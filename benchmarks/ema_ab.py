"""Exported EMA vs raw weights vs initial weights of one trained RepTok generator, scored side by side.

The study's generators were exported as an EMA that started at the initial weights with a fixed decay
(0.999^1000 = 37% of the init left). This scores three weight sets of one `unissl train reptok-generator`
run with the same samples protocol (``--n`` per class at CFG ``--cfg``, the same noise): the exported
generator (``<run>/generator``, the warmed-up EMA), the raw weights of the last checkpoint, and the
initialisation (rebuilt from the run's seed). Each row: FD_domain, class share, and the share of the
initial weights left in the EMA; the real-token ceiling of the same decoder is printed beside them.

    python benchmarks/ema_ab.py --run runs/fmnist-fidelity/gen-l0.1 --domain runs/fmnist-domain
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a `unissl train reptok-generator` run directory")
    ap.add_argument("--domain", required=True, help="domain classifier directory (FD_domain, class share)")
    ap.add_argument("--reference", default="fashion-mnist:test")
    ap.add_argument("--n", type=int, default=50, help="samples per class")
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from unissl.commands.eval_common import build_split
    from unissl.commands.train_reptok_generator import Config, build_method, open_store
    from unissl.config import from_dict, load_yaml
    from unissl.engine.checkpoint import load_checkpoint
    from unissl.engine.ema import init_share
    from unissl.eval.ceilings import matching_reference, roundtrip
    from unissl.eval.features import load_extractor
    from unissl.eval.generation import class_hits, generation_metrics, quantize_uint8
    from unissl.methods.reptok.generator import TokenGeneratorMethod
    from unissl.methods.reptok.sampling import SamplingConfig, class_condition, decode_tokens, sample_tokens
    from unissl.methods.reptok.tokenizer import RepTokTokenizer
    from unissl.utils.seed import seed_everything

    run = Path(args.run)
    cfg = from_dict(Config, load_yaml(run / "config.yaml"))
    exported = TokenGeneratorMethod.from_pretrained(run)
    raw = TokenGeneratorMethod.from_pretrained(run)
    raw.load_state_dict(load_checkpoint(run, with_trainer_state=False).model)
    seed_everything(cfg.train.seed)  # the command seeds before it builds the method
    init = build_method(cfg, open_store(cfg, torch.device("cpu")))  # the very weights training started from
    tok = RepTokTokenizer.from_pretrained(exported.cfg.tokenizer_path)
    judge = load_extractor(f"domain:{args.domain}", torch.device("cpu"))
    ref_name, _, ref_split = args.reference.partition(":")
    reference = build_split(ref_name, ref_split or "test", None, None)
    labels = torch.arange(exported.cfg.num_classes).repeat_interleave(args.n)
    noise = torch.randn(labels.shape[0], exported.cfg.token_dim, generator=torch.Generator().manual_seed(0))
    scfg = SamplingConfig(steps=args.steps, cfg_scale=args.cfg)
    share = init_share(cfg.train.ema_decay or 0.999, cfg.train.steps, cfg.train.ema_warmup) \
        if cfg.train.ema_decay else float("nan")
    rows = {}
    for name, method in (("exported EMA", exported), ("raw weights", raw), ("initial weights", init)):
        method.eval()
        z = sample_tokens(method, class_condition(labels), scfg, noise=noise)
        images = quantize_uint8(decode_tokens(tok, z, steps=args.steps))
        m = generation_metrics(judge, images, reference, "FD_domain", cache_dir=run / "ema_ab_cache")
        m["class_share"] = class_hits(judge, images, labels).double().mean().item()
        rows[name] = m
    idx = matching_reference(reference, labels, labels.shape[0])
    real = reference.__getitems__(idx.tolist())
    rec = quantize_uint8(roundtrip(tok, real["image"].float(), args.steps))
    ceil = generation_metrics(judge, rec, reference, "FD_domain", cache_dir=run / "ema_ab_cache")
    ceil["class_share"] = class_hits(judge, rec, real["label"]).double().mean().item()
    rows["ceiling: real test tokens"] = ceil
    print(f"{run}: {cfg.train.steps} steps, ema_decay {cfg.train.ema_decay}, warm-up {cfg.train.ema_warmup}: "
          f"initial weights left in the EMA {share:.2e}; {args.n}/class at CFG {args.cfg}")
    print(f"{'weights':<28}{'FD_domain':>10}{'class share':>13}")
    for name, m in rows.items():
        print(f"{name:<28}{m['FD_domain']:>10.3f}{100 * m['class_share']:>12.1f}%")
    (run / "ema_ab.json").write_text(json.dumps({k: {"FD_domain": v["FD_domain"], "class_share": v["class_share"]}
                                                 for k, v in rows.items()} | {"init_share": share}, indent=1))


if __name__ == "__main__":
    main()
