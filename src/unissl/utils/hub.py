"""Hub-style persistence shared by every saved model: a local directory or a Hugging Face Hub repo id.

A saved unissl model is a directory with ``config.json`` and ``model.safetensors`` (plus a ``README.md``
model card). ``from_pretrained`` of every model accepts either that directory or a hub repo id
(``org/name``, optionally ``org/name@revision``); :func:`resolve_pretrained` turns the latter into the local
snapshot directory through ``huggingface_hub`` (the local cache first; with ``HF_HUB_OFFLINE=1`` the cache
only, and a repo id that is not cached is a one-line error naming it). :func:`push_to_hub` uploads a saved
directory. Nothing here executes code from the downloaded files: the loaders read safetensors and JSON.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from unissl.errors import UnisslError
from unissl.utils.io import atomic_dir, sha256_file, write_json
from unissl.utils.optional import require
from unissl.utils.weights import read_safetensors, refuse_file

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_repo_id(name: str | os.PathLike) -> bool:
    """Whether ``name`` is meant as a hub ``org/name[@revision]``: it has that shape and is no local path
    (neither it nor its first component exists here, so ``runs/missing`` stays a missing local directory)."""
    text = str(name)
    if not _REPO_ID.match(text) or text.startswith((".", "/", "~")):
        return False
    return not Path(text).exists() and not Path(text.split("/", 1)[0]).exists()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_pretrained(name: str | os.PathLike, what: str = "model") -> Path:
    """The local directory of ``name``: the path itself, or the hub snapshot of the repo id ``name``.

    Raises :class:`UnisslError` (one line, naming ``name``) when the repo is neither cached nor downloadable.
    """
    if not is_repo_id(name):
        if Path(name).is_file():
            raise refuse_file(Path(name), what, f"pass the {what}'s directory (it holds config and weights together)")
        return Path(name)
    repo_id, _, revision = str(name).partition("@")

    snapshot_download = require("huggingface_hub", "hf", f"{what} {name!r} (a hub repo id)",
                                "pass a local directory").snapshot_download
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=_offline()))
    except Exception as e:  # noqa: BLE001 - every hub failure (offline, missing, auth) becomes one line
        how = ("it is not in the local hub cache and HF_HUB_OFFLINE=1 forbids downloading it; download it on a "
               "connected machine (or unset HF_HUB_OFFLINE)") if _offline() else \
            f"the hub refused it ({type(e).__name__}); check the id and your access"
        raise UnisslError(f"{what} {name!r} is neither a local directory nor an available hub repo: {how}, "
                          f"or pass an existing local directory") from None


def write_model_card(directory: str | os.PathLike, title: str, loader: str, config: dict[str, Any],
                     metrics: dict[str, Any] | None = None) -> Path:
    """``README.md`` of a saved model (its hub model card): what it is, how to load it (``loader``: a
    ``module.Class`` whose ``from_pretrained`` reads it), its config and metrics."""
    directory = Path(directory)
    module, _, cls = loader.rpartition(".")
    lines = ["---", "library_name: unissl", "tags:", "- unissl", "- self-supervised-learning", "---", "",
             f"# {title}", "", "Load it with unissl, from this directory or its hub repo id:", "", "```python",
             f"from {module} import {cls}", f"model = {cls}.from_pretrained(\"ORG/NAME\")", "```", "",
             "## Config", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
    path = directory / "README.md"
    path.write_text("\n".join(lines))
    return path


def push_to_hub(directory: str | os.PathLike, repo_id: str, private: bool = False,
                commit_message: str = "unissl model") -> str:
    """Upload a saved model directory to the hub repo ``repo_id`` (created if missing); returns its URL."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise UnisslError(f"{directory} is not a saved model (no config.json); save_pretrained it first")
    if _offline():
        raise UnisslError(f"cannot push {directory} to {repo_id!r}: HF_HUB_OFFLINE=1 is set")

    api = require("huggingface_hub", "hf", "push_to_hub").HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


class HubMixin:
    """``push_to_hub(repo_id)`` for a model with ``save_pretrained(dir)``; its ``from_pretrained`` takes a
    local directory or a repo id through :func:`resolve_pretrained`."""

    def save_pretrained(self, directory: str | Path) -> Path:  # implemented by the model
        raise NotImplementedError

    def push_to_hub(self, repo_id: str, private: bool = False, commit_message: str = "unissl model") -> str:
        """Save to a temporary directory and upload it to ``repo_id``; returns the commit URL."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            saved = self.save_pretrained(Path(tmp) / "model")
            return push_to_hub(saved, repo_id, private=private, commit_message=commit_message)


# --------------------------------------------------------------------------------------------- saved models
FORMAT_VERSION = 1  # the save/load convention below; directories without "format_version" are version 0
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"

M = TypeVar("M", bound="PretrainedMixin")


def upgrade_hint(directory: str | os.PathLike) -> str:
    """The one command that rewrites a version-0 saved model as a self-contained version-1 directory."""
    return (f"convert it once, from the directory it was trained in: python -m unissl.utils.upgrade {directory} "
            f"NEW_DIR (add --encoder-path PATH if its encoder moved)")


def read_saved_config(directory: Path, formats: tuple[str | None, ...], what: str, made_by: str) -> dict[str, Any]:
    """``config.json`` of a saved model, checked: present, JSON, one of ``formats``, a version this unissl reads."""
    cfg_file = directory / CONFIG_FILE
    if not cfg_file.is_file():
        raise UnisslError(f"{directory} is not a {what} directory (no {CONFIG_FILE}); pass a directory written by "
                          f"{made_by}")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnisslError(f"{cfg_file} is not valid JSON ({type(e).__name__}); save the {what} again") from None
    if not isinstance(meta, dict):
        raise UnisslError(f"{cfg_file} is not a {what} config (a JSON object); save the {what} again")
    if formats and meta.get("format") not in formats:
        raise UnisslError(f"{cfg_file}: format {meta.get('format')!r} is not a {what} ({' or '.join(repr(f) for f in formats if f)});"
                          f" pass a directory written by {made_by}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UnisslError(f"{cfg_file} has format_version {version!r}, newer than this unissl reads "
                          f"({FORMAT_VERSION}); upgrade unissl (pip install -U unissl)")
    return meta


class PretrainedMixin(HubMixin):
    """The one save/load convention of every saved unissl model.

    A saved model is a directory: ``config.json`` (``format``, ``format_version``, the model's ``config``, the
    sha256 ``checksum`` of the weights and ``frozen``: where each frozen part it needs lives),
    ``model.safetensors`` (its own weights, read without executing code) and ``README.md`` (the model card).
    It is **self-contained**: the frozen parts it needs (a RepTok tokenizer's encoder and VAE, a generator's
    tokenizer, a Sorcen encoder's VQ tokenizer) are saved inside it as sub-directories in their own saved
    format, or referenced by a hub id plus checksum; never by a path relative to where training ran.

    A model implements ``FORMAT`` / ``WHAT`` / ``MADE_BY`` / ``CARD_TITLE``, :meth:`pretrained_config`,
    :meth:`save_frozen_parts` (optional) and :meth:`build_pretrained`; :meth:`read_version0` reads the
    directories older unissl versions wrote (or says how to convert them).
    """

    FORMAT: ClassVar[str] = ""  # value of "format" in config.json
    OLD_FORMATS: ClassVar[tuple[str | None, ...]] = ()  # other accepted "format" values (version 0; None: no key)
    WHAT: ClassVar[str] = "model"  # what the error messages call it
    MADE_BY: ClassVar[str] = "save_pretrained"  # what writes it (named in the error messages)
    CARD_TITLE: ClassVar[str] = "unissl model"
    WEIGHTS_METADATA: ClassVar[dict[str, str] | None] = None  # safetensors header metadata (kept byte-stable)

    # ------------------------------------------------------------ model hooks
    def pretrained_config(self) -> dict[str, Any]:
        """The JSON config that :meth:`build_pretrained` rebuilds the model from."""
        raise NotImplementedError

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The tensors of ``model.safetensors`` (default: the state dict)."""
        return self.state_dict()  # type: ignore[attr-defined]

    def save_frozen_parts(self, directory: Path) -> dict[str, Any]:
        """Write the frozen parts into ``directory`` (sub-directories); returns ``config.json``'s ``frozen``."""
        return {}

    def pretrained_extra(self) -> dict[str, Any]:
        """Extra top-level ``config.json`` keys (read by other tools; default none)."""
        return {}

    @classmethod
    def build_pretrained(cls: type[M], meta: dict[str, Any], state: dict[str, torch.Tensor], directory: Path,
                         **kwargs: Any) -> M:
        """The model from ``config.json`` (``meta``), its weights and its directory (for the frozen parts)."""
        raise NotImplementedError

    @classmethod
    def read_version0(cls: type[M], directory: Path, meta: dict[str, Any], **kwargs: Any) -> M:
        """A model from a directory an older unissl wrote (no ``format_version``)."""
        raise UnisslError(f"{directory} was saved by an older unissl (format version 0); {upgrade_hint(directory)}")

    # ------------------------------------------------------------ the convention
    def save_pretrained(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        """Write the saved model into ``directory`` atomically (replacing it); returns the directory."""
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.pretrained_state().items()}
        with atomic_dir(directory) as tmp:
            frozen = self.save_frozen_parts(tmp)
            save_file(state, str(tmp / WEIGHTS_FILE), metadata=self.WEIGHTS_METADATA)
            meta = {"format": self.FORMAT, "format_version": FORMAT_VERSION, "config": self.pretrained_config(),
                    "frozen": frozen, "checksum": sha256_file(tmp / WEIGHTS_FILE), **self.pretrained_extra()}
            write_json(tmp / CONFIG_FILE, meta)
            cls = type(self)
            write_model_card(tmp, self.CARD_TITLE, f"{cls.__module__}.{cls.__qualname__}", meta, metrics)
        self.saved_to(directory, str(meta["checksum"]))
        return directory

    def saved_to(self, directory: Path, checksum: str) -> None:
        """Called after :meth:`save_pretrained` (e.g. to remember the weights file's checksum)."""

    @classmethod
    def from_pretrained(cls: type[M], path_or_hub_id: str | os.PathLike, device: str | torch.device = "cpu",
                        **kwargs: Any) -> M:
        """Load a saved model from a local directory or a hub repo id (``org/name[@revision]``), in eval
        mode on ``device``; every problem is one line naming the directory and what to do."""
        directory = resolve_pretrained(path_or_hub_id, cls.WHAT)
        if directory.is_dir() and not (directory / CONFIG_FILE).is_file():
            directory = cls.find_saved(directory)
        meta = read_saved_config(directory, (cls.FORMAT, *cls.OLD_FORMATS), cls.WHAT, cls.MADE_BY)
        if meta.get("format_version", 0) == 0:
            model = cls.read_version0(directory, meta, **kwargs)
        else:
            state = read_safetensors(directory / WEIGHTS_FILE, f"the {cls.WHAT} directory is incomplete or damaged: "
                                     f"save it again or download it again")
            model = cls.build_pretrained(meta, state, directory, **kwargs)
        return model.to(device).eval()  # type: ignore[attr-defined]

    @classmethod
    def find_saved(cls, directory: Path) -> Path:
        """The saved model inside ``directory`` when it is e.g. a run directory (default: itself)."""
        return directory


def frozen_dir(directory: Path, meta: dict[str, Any], name: str) -> str | None:
    """Where the frozen part ``name`` of a saved model lives: its sub-directory, or its hub id; None if absent."""
    entry = (meta.get("frozen") or {}).get(name)
    if not entry:
        return None
    if entry.get("hub_id"):
        return str(entry["hub_id"])
    return str(directory / entry["dir"])


def hub_id_of(path: str | os.PathLike) -> str | None:
    """``org/name@revision`` when ``path`` is (inside) a hub cache snapshot ``models--org--name/snapshots/rev``,
    or ``path`` itself when it is a hub id; else None (a plain local directory)."""
    if is_repo_id(path):
        return str(path)
    parts = Path(path).resolve().parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots" and i + 3 == len(parts):
            org_name = parts[i][len("models--"):].split("--", 1)
            if len(org_name) == 2:
                return f"{org_name[0]}/{org_name[1]}@{parts[i + 2]}"
    return None
