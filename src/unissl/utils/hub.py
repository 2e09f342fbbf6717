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
from typing import Any

from unissl.errors import UnisslError

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
            from unissl.utils.weights import refuse_file

            raise refuse_file(Path(name), what, f"pass the {what}'s directory (it holds config and weights together)")
        return Path(name)
    repo_id, _, revision = str(name).partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with the hf extra
        raise UnisslError(f"{what} {name!r} is a hub repo id, which needs huggingface_hub: "
                          "pip install 'unissl[hf]', or pass a local directory") from None
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
    from huggingface_hub import HfApi

    api = HfApi()
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
