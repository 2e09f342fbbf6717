"""Typed dataclass configs are the single source of truth.

* :func:`build_parser` turns a (possibly nested) dataclass into an ``argparse`` parser: one
  ``--field`` flag per leaf field (``--optim.lr`` for a nested one), ``--flag/--no-flag`` for booleans,
  ``choices`` for ``Literal`` types, the field's ``metadata["help"]`` as help text.
* :func:`parse_config` resolves, in order of precedence: command-line flags > ``--config`` YAML file(s)
  > the dataclass defaults. ``__post_init__`` of every dataclass then validates the result.
* :func:`save_run_config` writes the resolved config, the command line and the git revision into a
  run directory.

Use ``field(default=..., metadata={"help": "..."})`` (or :func:`arg`) to document a field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from unissl.errors import UnisslError

T = TypeVar("T")

_NONE = object()


def arg(default: Any = dataclasses.MISSING, help: str = "", positional: bool = False,
        choices: Iterable[Any] | None = None, output: Literal["dir", "file"] | None = None, **kw: Any) -> Any:
    """A dataclass field with help text (mutable defaults are wrapped in a factory).

    ``positional=True`` makes the field a positional command-line argument instead of a ``--flag``.
    ``choices`` restricts a value to the keys of a registry (e.g. ``choices=PRESETS``), checked on the command
    line and in YAML alike: the registry stays the one list of names, where a ``Literal`` would copy it.
    ``output`` marks a path the command writes (a ``dir`` or a ``file``): the CLI checks that it can be written
    before the command starts (:func:`output_paths`).
    """
    meta: dict[str, Any] = {"help": help, "positional": positional}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if output is not None:
        meta["output"] = output
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar_parser(tp: Any, name: str):
    """A function str -> value for a scalar type, with a clear error message."""
    if tp is bool:
        def parse_bool(s: str) -> bool:
            low = s.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"--{name}: expected true/false, got {s!r}")
        return parse_bool
    if tp in (int, float, str):
        return tp
    if get_origin(tp) is Literal:
        kinds = {type(a) for a in get_args(tp)}
        return kinds.pop() if len(kinds) == 1 else str
    return str


def _field_type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=False)


def _iter_fields(cls: type, prefix: str = ""):
    hints = _field_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        inner, _ = _strip_optional(tp)
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            yield from _iter_fields(inner, prefix + f.name + ".")
        else:
            yield prefix + f.name, f, tp


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per leaf field of the dataclass ``cls``."""
    p = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="YAML file(s) overriding the defaults (later files win; flags win over files)")
    for name, f, tp in _iter_fields(cls):
        inner, optional = _strip_optional(tp)
        default = _default_of(f)
        help_text = f.metadata.get("help", "") if f.metadata else ""
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        dest = name.replace(".", "__")
        flag = "--" + name.replace("_", "-")
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text or " "}
        if default is not dataclasses.MISSING:
            kw["help"] = (help_text + " " if help_text else "") + f"(default: {str(default).replace('%', '%%')})"
        else:
            kw["help"] = (help_text + " " if help_text else "") + "(required)"
        origin = get_origin(inner)
        if inner is dict or origin is dict or (origin in (list, tuple) and get_args(inner)
                                               and get_origin(get_args(inner)[0]) is dict):
            continue  # structured values (e.g. a pipeline's stage list) come from YAML files only
        if inner is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if origin in (list, tuple):
            args = get_args(inner)
            elem = args[0] if args else str
            kw["nargs"] = "+" if origin is list or (len(args) == 2 and args[1] is Ellipsis) else len(args)
            kw["type"] = _scalar_parser(elem, name)
            p.add_argument(flag, **kw)
            continue
        if origin is Literal:
            kw["choices"] = list(get_args(inner)) + ([None] if optional else [])
        elif f.metadata and f.metadata.get("choices"):
            kw["choices"] = list(f.metadata["choices"]) + ([None] if optional else [])
        kw["type"] = _scalar_parser(inner, name)
        if f.metadata and f.metadata.get("positional"):
            kw.pop("dest")
            p.add_argument(dest, nargs="?", metavar=name.upper(), **kw)
            continue
        if optional:
            base = kw["type"]

            def opt(s: str, base=base):
                return None if s.lower() in ("none", "null") else base(s)
            kw["type"] = opt
        p.add_argument(flag, **kw)
    return p


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, with a one-line error on mismatch."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise UnisslError(f"{where}: null is not allowed (expected {getattr(inner, '__name__', inner)})")
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise UnisslError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(inner, value, where)
    origin = get_origin(inner)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = get_args(inner)
        elem = args[0] if args else Any
        out = [_coerce(v, elem, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is Literal:
        if value not in get_args(inner):
            raise UnisslError(f"{where}: {value!r} is not one of {list(get_args(inner))}")
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise UnisslError(f"{where}: expected true/false, got {value!r}")
    if inner is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if inner is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if inner is str:
        return str(value)
    if inner is int and isinstance(value, str):
        try:  # YAML reads `1e3` (exponent without a sign) as a string
            value = float(value) if not value.strip().lstrip("+-").isdigit() else int(value)
        except ValueError:
            raise UnisslError(f"{where}: expected int, got {value!r}") from None
    if inner is int and isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise UnisslError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, bool) and inner in (int, float):
        raise UnisslError(f"{where}: expected {inner.__name__}, got {value!r}")
    if inner in (int, float):
        try:
            return inner(value)
        except (TypeError, ValueError):
            raise UnisslError(f"{where}: expected {inner.__name__}, got {value!r}") from None
    return value


def _from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    assert dataclasses.is_dataclass(cls), cls
    hints = _field_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        raise UnisslError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if isinstance(v, dict):
            # A partial mapping for a nested dataclass overrides the *parent's* default for that field
            # (e.g. ``train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=50))``), not
            # the nested class's own defaults.
            default = _default_of(fields[k])
            if dataclasses.is_dataclass(default) and not isinstance(default, type):
                v = _deep_update(to_dict(default), v)
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}")
        choices = fields[k].metadata.get("choices") if fields[k].metadata else None
        if choices and kwargs[k] is not None and kwargs[k] not in choices:
            raise UnisslError(f"{where}.{k}: {kwargs[k]!r} is not one of {list(choices)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        flags = ", ".join("--" + (f"{where}.{m}".split(".", 1)[1] if "." in where else m).replace("_", "-")
                          for m in missing)
        raise UnisslError(f"missing required value(s) {missing}: pass {flags} or set them in a --config YAML")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UnisslError(f"{where}: {e}") from e


def _deep_update(base: dict[str, Any], upd: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Merge ``upd`` into ``base`` (nested mappings merge; a section given as a scalar is an error)."""
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v, f"{where}{k}.")
        elif isinstance(v, dict) and base.get(k) is not None and not dataclasses.is_dataclass(base.get(k)):
            raise UnisslError(f"{where}{k}: expected a mapping of settings, got {base[k]!r}")
        else:
            base[k] = v
    return base


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain (YAML-serialisable) dict of a dataclass config."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v
    return conv(cfg)


def shipped_config(path: str | Path) -> Path | None:
    """A config shipped inside the package (``unissl/configs``) for ``path`` such as
    ``configs/digits-quick.yaml`` or ``sorcen/small-fmnist.yaml``, so an installed unissl finds them too."""
    root = Path(__file__).resolve().parent / "configs"
    parts = Path(path).parts
    rel = Path(*parts[1:]) if parts and parts[0] == "configs" else Path(path)
    candidate = root / rel
    return candidate if candidate.is_file() else None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with one-line errors for a missing or malformed file; a path that does not exist
    from here is looked up among the configs shipped with unissl (``configs/NAME.yaml``)."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute():
        path = shipped_config(path) or path
    if not path.is_file():
        raise UnisslError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UnisslError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise UnisslError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise UnisslError(f"config file {path} must hold a mapping at top level")
    return data


def from_dict(cls: type[T], data: dict[str, Any], defaults: T | None = None) -> T:
    """Build ``cls`` from a (partial, nested) dict, on top of ``defaults`` or the dataclass defaults."""
    base = to_dict(defaults) if defaults is not None else {}
    try:
        return _from_dict(cls, _deep_update(base, data))
    except (ValueError, AssertionError) as e:  # raised by __post_init__ validation: one line, as on the CLI
        raise UnisslError(f"invalid configuration: {e}") from e


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None,
                 defaults: T | None = None) -> T:
    """Parse ``argv`` into a validated ``cls`` instance (flags > YAML files > ``defaults`` > dataclass)."""
    parser = build_parser(cls, prog=prog)
    ns = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    data: dict[str, Any] = to_dict(defaults) if defaults is not None else {}
    for path in ns.pop("config"):
        _deep_update(data, load_yaml(path))
    cli: dict[str, Any] = {}
    for dest, value in ns.items():
        node = cli
        parts = dest.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    _deep_update(data, cli)
    try:
        return _from_dict(cls, data)
    except (ValueError, AssertionError) as e:  # raised by __post_init__ validation
        raise UnisslError(f"invalid configuration: {e}") from e


def output_paths(cfg: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(flag, path, kind) of every field marked ``arg(output=...)`` in ``cfg`` and its nested configs
    (fields left ``None`` are skipped: the command derives their default from another path)."""
    found = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found += output_paths(value, f"{prefix}{f.name}.")
        elif f.metadata.get("output") and value is not None:
            flag = f.name if f.metadata.get("positional") else f"--{prefix}{f.name}".replace("_", "-")
            found.append((flag, str(value), f.metadata["output"]))
    return found


def check_outputs(cfg: Any) -> None:
    """One line, before any work, for an output path of ``cfg`` that can never be written (a read-only or
    virtual file system, a file in the way, no permission)."""
    from unissl.utils.io import check_writable

    for flag, path, kind in output_paths(cfg):
        check_writable(path, flag, kind)


def check_run_dir(run_dir: str | Path, cfg: Any) -> None:
    """Refuse, before anything is written, a run directory that belongs to something else.

    A path that is a file, a directory holding a saved model (``config.json`` without ``run_info.json``: a
    tokenizer or generator directory) or a run of another command (``run_info.json``'s ``config_class``).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UnisslError(f"run directory {run_dir} is a file; choose another --train.run-dir")
    from unissl.utils.io import check_writable

    check_writable(run_dir, "--train.run-dir")
    if not run_dir.is_dir():
        return
    info_path = run_dir / "run_info.json"
    if not info_path.is_file():
        if (run_dir / "config.json").is_file():
            raise UnisslError(f"{run_dir} holds a saved model (config.json), not a training run; choose another "
                              f"--train.run-dir")
        return
    try:
        recorded = json.loads(info_path.read_text()).get("config_class")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
        raise UnisslError(f"{info_path} is not a readable run record; choose another --train.run-dir") from None
    here = f"{type(cfg).__module__}.{type(cfg).__qualname__}"
    if recorded and recorded != here:
        raise UnisslError(f"{run_dir} is a run of another command ({recorded.rsplit('.', 2)[-2]}); choose another "
                          f"--train.run-dir")


def save_run_config(run_dir: str | Path, cfg: Any, extra: dict[str, Any] | None = None) -> None:
    """Write ``config.yaml`` (the resolved config) and ``run_info.json`` (argv, git revision, versions)."""
    import platform

    import torch

    from unissl import __version__
    from unissl.utils.io import atomic_file, git_revision, write_json

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / "config.yaml", "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    info = {
        "argv": sys.argv,
        "git_revision": git_revision(),
        "unissl_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "config_class": f"{type(cfg).__module__}.{type(cfg).__qualname__}",
    }
    if extra:
        info.update(extra)
    write_json(run_dir / "run_info.json", info)


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-serialisable object, independent of key order."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config (used to decide whether a finished stage can be reused)."""
    return stable_hash(to_dict(cfg))
