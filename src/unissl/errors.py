"""One exception type for user-facing errors.

Library code raises :class:`UnisslError` with a one-line message that names the offending file or value
and says what to do. The CLI prints it as ``unissl: error: <message>`` and exits with status 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UnisslError(Exception):
    """A problem with the user's input, files or environment (not a bug in unissl)."""


class ConfigError(UnisslError):
    """A config value that is wrong, named by its field path (``train.global_batch``), not by a flag.

    Library code (a config's ``__post_init__``) raises it with the field relative to its own dataclass;
    :func:`unissl.config.from_dict` / :func:`~unissl.config.parse_config` prefix the path where the config is
    nested, and the CLI shows it as the flag (``--train.global-batch: ...``). ``source`` names the YAML file
    the value came from, when it did.
    """

    def __init__(self, path: str, reason: str, source: str | None = None) -> None:
        self.path, self.reason, self.source = path, reason, source
        super().__init__(f"{source}: {path}: {reason}" if source else f"{path}: {reason}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C honoured at a step boundary: training wrote ``checkpoint`` (its state at ``step``) and stopped.

    The CLI names the checkpoint and prints the command that continues the run.
    """

    def __init__(self, step: int, checkpoint: str | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"interrupted at step {step}")
