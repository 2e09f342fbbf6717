"""Read a PyTorch Lightning checkpoint without executing code: a restricted unpickler with an allowlist.

A Lightning ``.ckpt`` is ``torch.save``'s zip archive whose pickle holds the state dict and, beside it, the
module's ``hyper_parameters``, often OmegaConf ``DictConfig`` / ``ListConfig`` objects (what hydra passes to a
``LightningModule``). ``torch.load(weights_only=True)`` refuses those; ``weights_only=False`` would import and
run whatever the pickle names. This reader does neither: the unpickler resolves a global only from
:data:`ALLOWED` and never imports a module.

* torch's own tensor / storage globals are the functions torch's weights-only unpickler uses;
* builtins and ``collections`` containers are the real types (they only hold data);
* OmegaConf's containers and nodes become inert stand-ins (:class:`ConfigStandIn`, :class:`NodeStandIn`) whose
  pickled state is kept as data, and :func:`to_plain` turns them into plain dicts / lists / values, so omegaconf
  is neither needed nor imported.

Any other global (``os.system``, ``builtins.eval``, a project class ...) raises :class:`UnisslError` naming it,
before anything is imported or called.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import typing
import zipfile
from pathlib import Path
from typing import Any

import torch

from unissl.errors import UnisslError


class StandIn:
    """An inert object of a non-allowlisted-but-known data class: keeps its pickled state, runs nothing."""

    kind = ""
    args: tuple[Any, ...] = ()  # class-level defaults: pickle's NEWOBJ builds with __new__ alone
    state: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance by __setstate__, never mutated

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.state = args, {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}


class ConfigStandIn(StandIn):
    """OmegaConf ``DictConfig`` / ``ListConfig``: ``state["_content"]`` holds the keys / items."""


class NodeStandIn(StandIn):
    """An OmegaConf value node (``AnyNode``, ``StringNode`` ...): ``state["_val"]`` holds the value."""


class MetadataStandIn(StandIn):
    """OmegaConf's node / container metadata (types, flags): not needed for the values."""


def _stand_in(base: type[StandIn], name: str) -> type[StandIn]:
    return type(name, (base,), {"kind": name})


_OMEGACONF_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode",
                    "EnumNode", "InterpolationResultNode", "ValueNode")


def _allowed() -> dict[tuple[str, str], Any]:
    from torch import _utils

    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("typing", "Any"): typing.Any,
        ("omegaconf.dictconfig", "DictConfig"): _stand_in(ConfigStandIn, "DictConfig"),
        ("omegaconf.listconfig", "ListConfig"): _stand_in(ConfigStandIn, "ListConfig"),
        ("omegaconf.base", "Metadata"): _stand_in(MetadataStandIn, "Metadata"),
        ("omegaconf.base", "ContainerMetadata"): _stand_in(MetadataStandIn, "ContainerMetadata"),
    }
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                  torch.int16, torch.int8, torch.uint8, torch.bool):
        allowed[("torch", str(dtype).split(".")[1])] = dtype
    for name in _OMEGACONF_NODES:
        allowed[("omegaconf.nodes", name)] = _stand_in(NodeStandIn, name)
    for t in (dict, list, tuple, set, frozenset, int, float, complex, str, bytes, bool, object, type(None)):
        allowed[("builtins", t.__name__)] = t
    return allowed


ALLOWED = _allowed()


class RefusedGlobal(UnisslError):
    """A pickle named a global outside :data:`ALLOWED`."""


def _restricted_module(path: Path) -> Any:
    """A ``pickle_module`` for ``torch.load`` whose Unpickler resolves globals from :data:`ALLOWED` only."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # protocol-2 pickles name Python 3 globals by their Python 2 names (__builtin__.long for int ...):
            # map them back as pickle's own find_class does, then look the result up
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            found = ALLOWED.get((module, name))
            if found is None:
                raise RefusedGlobal(f"{path} pickles {module}.{name}, which is not on the allowlist of plain data "
                                    f"(tensors, containers, OmegaConf configs); refused without importing or "
                                    f"running it: convert only checkpoints from a source you trust")
            return found

    class Module:
        pass

    mod = Module()
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.__name__ = "unissl_restricted_pickle"  # type: ignore[attr-defined]
    return mod


def read_restricted(path: str | Path, fix: str) -> Any:
    """The object in a ``torch.save`` zip archive (a Lightning ``.ckpt``), read with the allowlist; OmegaConf
    objects are returned as stand-ins (see :func:`to_plain`)."""
    path = Path(path)
    if not path.is_file():
        raise UnisslError(f"{path} not found; {fix}")
    if not zipfile.is_zipfile(path):
        raise UnisslError(f"{path} is not a torch.save zip archive (a Lightning .ckpt); {fix}")
    try:
        # weights_only=False hands unpickling to the restricted module above: torch rebuilds storages itself and
        # asks our find_class for every other global, which refuses anything off the allowlist
        # mmap: the tensors are read from the file when used (the released checkpoint holds several GB)
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_module(path),
                          mmap=True)
    except UnisslError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            AttributeError, TypeError, KeyError) as e:
        text = str(e).strip().splitlines()
        raise UnisslError(f"{path} is corrupt or not a checkpoint ({type(e).__name__}: "
                          f"{text[0][:100] if text else ''}); {fix}") from None


def to_plain(obj: Any) -> Any:
    """Stand-ins and containers -> plain Python: a DictConfig becomes a dict, a ListConfig a list, a node its
    value (an unresolved ``${...}`` interpolation stays its string)."""
    if isinstance(obj, ConfigStandIn):
        content = obj.state.get("_content")
        if isinstance(content, dict):
            return {k: to_plain(v) for k, v in content.items()}
        if isinstance(content, (list, tuple)):
            return [to_plain(v) for v in content]
        return content  # None or a "???" / interpolation string
    if isinstance(obj, NodeStandIn):
        return to_plain(obj.state.get("_val"))
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if isinstance(obj, list) else tuple(to_plain(v) for v in obj)
    return obj
