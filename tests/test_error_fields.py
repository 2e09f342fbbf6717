"""Library errors name the setting, not a command-line flag (issue 30, deliverable 5).

Library code raises :class:`~unissl.errors.ConfigError` with the field path (``train.run_dir``); the CLI shows
it as the command's flag through :func:`unissl.config.flag_of`. A ``raise`` in a library module whose message
spells ``--flag`` would tell a library user about a flag they never passed, so this scan fails on one, outside
the command-line layer and a short allowlist. A whole command line to run, in backticks (`` `unissl tokenize
--flip` ``), is advice, not a flag reference, and is allowed anywhere.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from unissl.config import flag_of

SRC = Path(__file__).resolve().parents[1] / "src" / "unissl"
FLAG = re.compile(r"(?<![\w-])--[a-z][\w.-]*")
COMMAND = re.compile(r"`(?:unissl|python -m) [^`]*`")  # a whole command line in backticks

# The command-line layer: the commands, the entry point, and the parser / checks of config.py that only the
# commands run (they read or refuse what was typed on the command line).
CLI_MODULES = ("commands/", "cli.py", "__main__.py")
ALLOWED = {
    ("config.py", "_translate"): "the argv parser: the flags are the text the user typed",
    ("config.py", "check_run_dir"): "called by the train commands only, before any work, on their --train.run-dir",
    ("engine/trainer.py", "fit"): "a failed collective under DDP (a runtime failure, not a wrong value) names "
                                  "the timeout flag the user set and --train.resume; tests/test_ddp.py asserts that "
                                  "text",
}


def _flag_raises(root: Path = SRC) -> list[tuple[str, str, int, list[str]]]:
    """(module, enclosing function, line, flags) for every raise under ``root`` whose message spells a ``--flag``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(CLI_MODULES):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
                continue
            name = getattr(fn, "name", "<module>")
            body = [n for stmt in fn.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for n in _walk_own(stmt)]
            for node in body:
                if not isinstance(node, ast.Raise) or node.exc is None:
                    continue
                text = " ".join(c.value for c in ast.walk(node.exc)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str))
                flags = FLAG.findall(COMMAND.sub("", text))
                if flags:
                    found.append((rel, name, node.lineno, flags))
    return found


def _walk_own(node: ast.AST):
    """``node`` and its descendants, not entering nested functions (their raises belong to them)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _walk_own(child)


def test_library_raises_name_fields_not_flags() -> None:
    found = _flag_raises()
    bad = [f"{rel}:{line} ({name}): {flags}" for rel, name, line, flags in found if (rel, name) not in ALLOWED]
    assert not bad, "library errors spell CLI flags; raise ConfigError(<field path>, ...) instead:\n" + "\n".join(bad)
    # every allowlisted place still raises one (an entry that matches nothing is stale)
    assert {(rel, name) for rel, name, _, _ in found} == set(ALLOWED)


def test_the_scan_finds_a_spelled_flag(tmp_path) -> None:
    """The scan sees a flag in an f-string message, and not one inside a backticked command line."""
    (tmp_path / "lib.py").write_text(
        'def f(x):\n'
        '    if x:\n'
        '        raise ValueError(f"{x} is bad; pass --train.steps")\n'
        '    raise ValueError("run `unissl tokenize --flip` first")\n')
    assert _flag_raises(tmp_path) == [("lib.py", "f", 3, ["--train.steps"])]


@pytest.mark.parametrize("command", ["tokenizer_train", "train_sorcen", "train_reptok_tokenizer", "train_reptok_generator"])
def test_a_trainer_field_is_shown_as_the_commands_flag(command: str) -> None:
    """The field paths the trainer raises with are settings of every training command (the CLI shows flags)."""
    cls = importlib.import_module(f"unissl.commands.{command}").Config
    for path in ("train.run_dir", "train.global_batch", "train.ema_warmup"):
        assert flag_of(cls, path) == "--" + path.replace("_", "-")
