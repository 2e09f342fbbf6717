"""The ``unissl`` command line.

Every command is a module under ``unissl.commands`` exposing a dataclass ``Config`` and ``run(cfg)``;
its flags are generated from that dataclass (see :mod:`unissl.config`). The registry below is the one
place that lists commands; modules are imported only when their command runs, so ``--help`` is fast.
"""

from __future__ import annotations

import difflib
import importlib
import shlex
import sys
from dataclasses import dataclass

from unissl.errors import ConfigError, Interrupted, UnisslError


@dataclass(frozen=True)
class Command:
    module: str  # module with `Config` and `run(cfg)`
    help: str


# (group, name) -> Command; a group of None is a top-level command.
COMMANDS: dict[tuple[str | None, str], Command] = {
    ("tokenizer", "train"): Command("unissl.commands.tokenizer_train", "train a VQ tokenizer (stage 0)"),
    (None, "tokenize"): Command("unissl.commands.tokenize", "run a frozen VQ tokenizer once over a split into a token store"),
    ("train", "sorcen"): Command("unissl.commands.train_sorcen", "pretrain Sorcen / MAGE / MAGE-C on token ids"),
    ("train", "reptok-tokenizer"): Command("unissl.commands.train_reptok_tokenizer", "train a RepTok one-token tokenizer"),
    ("train", "reptok-generator"): Command("unissl.commands.train_reptok_generator", "train the RepTok token generator"),
    ("sample", "sorcen"): Command("unissl.commands.sample_sorcen", "unconditional MaskGIT samples from Sorcen"),
    ("sample", "reptok"): Command("unissl.commands.sample_reptok", "class- or text-conditional RepTok samples"),
    (None, "reconstruct"): Command("unissl.commands.reconstruct", "RepTok reconstructions with PSNR/SSIM/rFD"),
    (None, "interpolate"): Command("unissl.commands.interpolate", "interpolate between two images' RepTok tokens"),
    ("eval", "linear-probe"): Command("unissl.commands.eval_linear_probe", "linear probe on frozen features"),
    ("eval", "few-shot"): Command("unissl.commands.eval_few_shot", "few-shot linear probe (5/10/13/25 per class)"),
    ("eval", "knn"): Command("unissl.commands.eval_knn", "weighted k-NN classifier on frozen features"),
    ("eval", "transfer"): Command("unissl.commands.eval_transfer", "probe a frozen encoder on another dataset"),
    ("eval", "train-extractor"): Command("unissl.commands.eval_train_extractor", "train a domain classifier for FD_<name>"),
    ("eval", "generation"): Command("unissl.commands.eval_generation", "FD / IS / precision-recall of generated images"),
    ("eval", "sampler-sweep"): Command("unissl.commands.eval_sampler_sweep",
                                       "FD at the released MaskGIT setting and at the best of a sweep (fresh samples)"),
    ("eval", "verdict"): Command("unissl.commands.eval_verdict", "a claim 'A beats B' over a study's seeds, with intervals"),
    ("eval", "reconstruction"): Command("unissl.commands.eval_reconstruction", "PSNR / SSIM / rFD of reconstructions"),
    ("convert", "reptok"): Command("unissl.commands.convert_reptok", "convert CompVis/RepTok's released checkpoint (no code run)"),
    (None, "pipeline"): Command("unissl.commands.pipeline", "the whole chain: tokenizer -> Sorcen -> eval -> RepTok -> samples"),
    (None, "report"): Command("unissl.commands.report", "an HTML + Markdown report of a run directory"),
}


def _usage() -> str:
    lines = ["usage: unissl <command> [<subcommand>] [--help] [flags]", "", "commands:"]
    width = max(len(f"{g} {n}" if g else n) for g, n in COMMANDS)
    for (group, name), cmd in COMMANDS.items():
        label = f"{group} {name}" if group else name
        lines.append(f"  {label:<{width}}  {cmd.help}")
    lines += ["", "Run `unissl <command> --help` for the flags of a command."]
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str, Command, list[str]]:
    groups = {g for g, _ in COMMANDS if g}
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] == "--version":
        from unissl import __version__
        print(f"unissl {__version__}")
        raise SystemExit(0)
    head = argv[0]
    if head in groups:
        subs = {n: c for (g, n), c in COMMANDS.items() if g == head}
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            print(f"usage: unissl {head} <{'|'.join(subs)}> [flags]\n")
            for n, c in subs.items():
                print(f"  {n:<18} {c.help}")
            raise SystemExit(0 if len(argv) >= 2 else 2)
        if argv[1] not in subs:
            raise UnisslError(f"unknown command 'unissl {head} {argv[1]}'; choose one of: {', '.join(subs)}")
        return f"unissl {head} {argv[1]}", subs[argv[1]], argv[2:]
    if (None, head) in COMMANDS:
        return f"unissl {head}", COMMANDS[(None, head)], argv[1:]
    close = difflib.get_close_matches(head, sorted(groups | {n for g, n in COMMANDS if g is None}), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "run `unissl --help` for the list"
    raise UnisslError(f"unknown command {head!r}; {hint}")


def _interrupted(e: KeyboardInterrupt, argv: list[str], cfg: object) -> str:
    """The line for Ctrl-C: the checkpoint training saved and the exact command that continues from it."""
    if not isinstance(e, Interrupted) or e.checkpoint is None:
        return "unissl: interrupted"
    from unissl.engine.health import continue_command  # the one way a continuing command line is written

    trains = hasattr(getattr(cfg, "train", None), "resume")  # else a pipeline: it resumes its started stages
    again = (continue_command(["--train.resume"], ["unissl", *argv]) if trains else None) or shlex.join(
        ["unissl", *argv])
    return f"unissl: interrupted at step {e.step}; saved {e.checkpoint}; continue with: {again}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unissl`` executable."""
    from unissl.config import check_outputs, flag_of, parse_config
    from unissl.engine.dist import shutdown_distributed

    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = module = None
    try:
        prog, cmd, rest = _resolve(argv)
        module = importlib.import_module(cmd.module)
        cfg = parse_config(module.Config, rest, prog=prog)
        check_outputs(cfg)  # an output path that can never be written: one line before any work
        module.run(cfg)
        shutdown_distributed()  # under torchrun: leave the process group before the interpreter tears down
    except ConfigError as e:  # a setting of the command: shown as its flag, or in the file that set it
        where = e.source and f"{e.source}: {e.path}" or (module and flag_of(module.Config, e.path)) or e.path
        print(f"unissl: error: {where}: {e.reason}", file=sys.stderr)
        return 2
    except UnisslError as e:
        print(f"unissl: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        # an output path that cannot be written (a parent is a file, a read-only location): one line
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"unissl: error: cannot write{where}: {e.strerror or e}; choose another output path", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(_interrupted(e, argv, cfg), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
