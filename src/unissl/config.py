"""Typed dataclass configs are the single source of truth; jsonargparse turns them into a command line.

* :func:`parse_config` hands a (nested) dataclass to ``jsonargparse``: one ``--field`` flag per leaf field
  (``--optim.lr`` for a nested one), type checking and coercion, and the merge of YAML files given with
  ``--config`` (later files win, flags win over files, both over the dataclass defaults). On top of it this
  module keeps the surface unissl's users know (:func:`_translate`): dashes in flag names
  (``--train.global-batch``), ``--flag`` / ``--no-flag`` for booleans, lists as ``--layers 4 5 6``,
  ``none`` for an optional value, registry keys as choices (:func:`arg`), and one-line errors: an unknown or
  abbreviated flag is refused with the closest valid one.
* :func:`from_dict` builds a config from a (partial) mapping, as a pipeline stage does.
* A command's ``Config`` may declare ``ALIASES`` (old flag / YAML key -> the path of the setting, e.g.
  ``{"cos_weight": "model.cos_weight"}``: old command lines and pipeline files keep working and keep their stage
  hashes) and ``DERIVED`` (paths of a nested library config that the command sets itself, e.g. the image size
  from the dataset: no flag, never asked of the user).
* Every dataclass is constructed by :func:`_build`, so a :class:`~unissl.errors.ConfigError` raised by a
  nested config's ``__post_init__`` (``ConfigError("global_batch", ...)``) reaches the caller with its whole
  path (``train.global_batch``); the CLI shows that path as the flag (:func:`flag`).
* :func:`save_run_config` writes the resolved config, the command line and the git revision into a
  run directory.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import json
import re
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml
from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace

from unissl import __version__
from unissl.errors import ConfigError, UnisslError
from unissl.utils.io import atomic_file, check_writable, git_revision, write_json

T = TypeVar("T")


def arg(default: Any = dataclasses.MISSING, help: str = "", positional: bool = False,
        choices: Iterable[Any] | None = None, output: Literal["dir", "file"] | None = None,
        **kw: Any) -> Any:
    """A dataclass field with help text (mutable defaults are wrapped in a factory).

    ``positional=True`` also takes the field's value as a bare first argument (``unissl report runs/x``), besides
    its ``--flag``. ``choices`` restricts a value to the keys of a registry (e.g. ``choices=PRESETS``), checked
    on the command line and in YAML alike: the registry stays the one list of names, where a ``Literal`` would
    copy it. ``output`` marks a path the command writes (a ``dir`` or a ``file``): the CLI checks that it can
    be written before the command starts (:func:`output_paths`).
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


def flag(path: str) -> str:
    """The command-line flag of a config field path: ``train.global_batch`` -> ``--train.global-batch``."""
    return "--" + path.replace("_", "-")


def flag_of(cls: type, path: str) -> str | None:
    """The flag of the setting ``path`` of the config class ``cls``, or of its one setting whose path ends in
    ``.path`` (library code names a field of its own config: ``k`` is ``--knn.k``); None when there is no such
    setting or more than one (a library config built at run time, not parsed from the command line)."""
    leaves = _leaves(cls)
    if path in leaves:
        return flag(path)
    matches = [p for p in leaves if p.endswith("." + path)]
    return flag(matches[0]) if len(matches) == 1 else None


# ---------------------------------------------------------------------------------------------- the fields
def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(``X``, True) for ``X | None``, else (``tp``, False)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_config(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One command-line setting: a field of ``cls`` (or of a config nested in it) that is not a config itself."""

    path: str  # "train.global_batch"
    field: dataclasses.Field
    kind: Literal["bool", "list", "value", "yaml"]  # yaml: structured values, set in YAML files only
    optional: bool
    element: Any  # a list's element type


@functools.cache
def _leaves(cls: type) -> dict[str, _Leaf]:
    """Every leaf setting of the dataclass ``cls`` a user sets, keyed by its dotted path (``DERIVED`` ones left out)."""
    found: dict[str, _Leaf] = {}
    derived = set(getattr(cls, "DERIVED", ()))

    def walk(c: type, prefix: str) -> None:
        hints = get_type_hints(c)
        for f in dataclasses.fields(c):
            if not f.init or prefix + f.name in derived:
                continue
            inner, optional = _strip_optional(hints[f.name])
            origin, args = get_origin(inner), get_args(inner)
            if _is_config(inner):
                walk(inner, prefix + f.name + ".")
                continue
            element = args[0] if origin in (list, tuple) and args else None
            kind: Literal["bool", "list", "value", "yaml"]
            if inner is dict or origin is dict or get_origin(element) is dict or element is dict:
                kind = "yaml"
            elif inner is bool:
                kind = "bool"
            elif origin in (list, tuple):
                kind = "list"
            else:
                kind = "value"
            found[prefix + f.name] = _Leaf(prefix + f.name, f, kind, optional, element)

    walk(cls, "")
    return found


def _aliases(cls: type) -> dict[str, str]:
    """Other names of settings of ``cls`` (its ``ALIASES``: ``--class`` for ``--classes``, old flat names of a
    nested library config): spelled out, since flags are never abbreviated."""
    return dict(getattr(cls, "ALIASES", {}))


def _unalias(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """A YAML mapping with ``cls``'s old keys moved to the paths they name (``cos_weight: 0.1`` ->
    ``model: {cos_weight: 0.1}``; a dotted old key is looked up nested: ``loss: {mask_max: 0.8}`` ->
    ``sorcen: {masking: {max: 0.8}}``). An old section left empty (``loss: {}``) is dropped."""
    data = copy.deepcopy(data)
    aliases = _aliases(cls)
    for old, new in aliases.items():
        *old_parents, old_last = old.split(".")
        holder: Any = data
        for part in old_parents:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or old_last not in holder:
            continue
        *parents, last = new.split(".")
        node = data
        for part in parents:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        if last in node:
            raise ConfigError(old, f"is given twice (also as {new})", source)
        node[last] = holder.pop(old_last)
    for section in {old.split(".")[0] for old in aliases if "." in old}:
        if data.get(section) == {} and section not in {f.name for f in dataclasses.fields(cls)}:
            data.pop(section)
    return data


def _positional(cls: type) -> str | None:
    return next((p for p, leaf in _leaves(cls).items() if leaf.field.metadata.get("positional")), None)


# ---------------------------------------------------------------------------------------------- the parser
class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help with the flags spelled as they are typed (``--train.global-batch``)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        return _dashed(super()._format_action_invocation(action))

    def _format_usage(self, *args: Any, **kwargs: Any) -> str:
        return _dashed(super()._format_usage(*args, **kwargs))


def _dashed(text: str) -> str:
    """Flags as typed: dashes, ``--x, --no-x`` for a boolean, and no jsonargparse ``--x+`` list-append form."""
    text = re.sub(r"--[\w.]+", lambda m: m.group(0).replace("_", "-"), text)
    text = re.sub(r", --[\w.-]+\+ \[ITEM,\.\.\.\]", "", text)
    return re.sub(r"--([\w.-]+) \{true,false\}", r"--\1, --no-\1", text)


@functools.cache
def _parser(cls: type, prog: str | None = None) -> ArgumentParser:
    """The jsonargparse parser of ``cls``; required fields are checked by :func:`_build` after every source
    (defaults, files, flags) is merged, so a partial YAML file parses."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    epilog = "Booleans: --x or --no-x. Lists: --x a b c. Optional values: --x none. Flags win over --config files."
    parser = ArgumentParser(prog=prog, description=doc, epilog=epilog, exit_on_error=False, allow_abbrev=False,
                            formatter_class=_HelpFormatter)
    parser.add_argument("--config", metavar="YAML", default=argparse.SUPPRESS,
                        help="YAML file overriding the defaults (repeat it: later files win; flags win over files)")
    parser.add_class_arguments(cls, as_group=False)
    leaves = _leaves(cls)
    for name, group in (parser.groups or {}).items():  # a nested config's flags, under its docstring
        doc = " ".join((getattr(group, "group_class", None).__doc__ or "").split("\n\n")[0].split())
        group.title = f"{flag(name)}.*" + (f" ({doc.rstrip('.')})" if doc else "")
    for action in parser._actions:  # argparse's list of actions: the help text lives in the fields' metadata
        leaf = leaves.get(action.dest)
        if leaf is None:
            if action.dest not in ("help", "config"):  # jsonargparse's `--train FILE` (a section's own file)
                action.help = argparse.SUPPRESS
            continue
        action.required = False
        text = leaf.field.metadata.get("help", "")
        if leaf.field.metadata.get("choices"):
            text += f" (choices: {', '.join(map(str, leaf.field.metadata['choices']))})"
        action.help = text
    return parser


# ---------------------------------------------------------------------------------------------- the command line
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _unknown_flag(name: str, cls: type) -> str:
    """One line for an unknown (or abbreviated) flag, naming the closest valid one."""
    known = ["--config", "--help"]
    for path, leaf in _leaves(cls).items():
        if leaf.kind != "yaml":
            known.append(flag(path))
            if leaf.kind == "bool":
                known.append("--no-" + flag(path)[2:])
    canonical = {flag(old): flag(new) for old, new in _aliases(cls).items()}  # an old name: suggest today's
    close = difflib.get_close_matches("--" + name, known + list(canonical), n=1, cutoff=0.6)
    hint = f"; did you mean {canonical.get(close[0], close[0])}?" if close else "; run with --help for the flags"
    return f"unknown flag --{name}{hint}"


def _translate(cls: type, argv: list[str]) -> tuple[list[str], list[str]]:
    """(``--config`` files, jsonargparse arguments) of unissl's command line for ``cls``.

    ``--train.global-batch 64`` -> ``--train.global_batch=64``; ``--x`` / ``--no-x`` -> ``--x=true|false`` for
    a boolean; ``--layers 4 5 6`` -> ``--layers=[4, 5, 6]``; ``none`` -> ``null`` for an optional value; a bare
    first argument -> the positional field. An unknown flag is one line naming the closest valid flag.
    """
    leaves, positional = _leaves(cls), _positional(cls)
    files: list[str] = []
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok in ("-h", "--help"):
            out.append("--help")
            continue
        if not tok.startswith("--"):
            if positional is None or any(a.startswith(f"--{positional}=") for a in out):
                raise UnisslError(f"unexpected argument {tok!r}: settings are passed as --name value "
                                  f"(run with --help for the flags)")
            out.append(f"--{positional}={tok}")
            continue
        name, eq, value = tok[2:].partition("=")
        if name == "config":
            if not eq:
                if i >= len(argv) or argv[i].startswith("--"):
                    raise UnisslError("--config needs a YAML file")
                value, i = argv[i], i + 1
            files.append(value)
            continue
        key = name.replace("-", "_")
        leaf = leaves.get(_aliases(cls).get(key, key))
        negated = leaf is None and key.startswith("no_") and getattr(leaves.get(key[3:]), "kind", "") == "bool"
        if negated:
            leaf = leaves[key[3:]]
        if leaf is None or leaf.kind == "yaml":
            raise UnisslError(_unknown_flag(name, cls) if leaf is None
                              else f"{flag(key)} is set in a --config YAML file only")
        if leaf.kind == "bool":
            if negated and eq:
                raise UnisslError(f"--{name} takes no value")
            if not eq and not negated and i < len(argv) and argv[i].lower() in _TRUE + _FALSE:
                value, i = argv[i], i + 1
            value = "false" if negated else "true" if not eq and value == "" else value
            value = "true" if value.lower() in _TRUE else "false" if value.lower() in _FALSE else value
            out.append(f"--{leaf.path}={value}")
            continue
        values = [value] if eq else []
        while not eq and i < len(argv) and not argv[i].startswith("--") and (leaf.kind == "list" or not values):
            values.append(argv[i])
            i += 1
        if not values:
            raise UnisslError(f"{flag(leaf.path)} needs a value")
        if leaf.optional and len(values) == 1 and values[0].lower() in ("none", "null"):
            value = "null"
        elif leaf.kind == "list" and not (len(values) == 1 and values[0].startswith("[")):
            items = values if leaf.element is str else [yaml.safe_load(v) for v in values]
            value = json.dumps(items)
        else:
            value = values[0]
        out.append(f"--{leaf.path}={value}")
    return files, out


# ---------------------------------------------------------------------------------------------- errors and build
def _type_name(text: str) -> str:
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = re.sub(r"typing\.Literal\[(.*)\]", r"one of [\1]", text)
    return text.replace("NoneType", "null")


def _config_error(e: Exception, source: str | None) -> ConfigError | UnisslError:
    """jsonargparse's (multi-line) message as one line naming the field."""
    text = str(e)
    m = re.match(r'Parser key "([^"]+)":\s*(.*)', text, re.S)
    if not m:
        line = " ".join(text.split())
        return UnisslError(f"{source}: {line}" if source else line)
    path, detail = m.groups()
    given = re.search(r"Given value: (.*)", detail)
    subtypes = re.search(r"Subtypes: \[(.*?)\]", detail)
    if subtypes and given:
        kinds = " or ".join(_type_name(t.strip()) for t in subtypes.group(1).split(", "))
        reason = f"expected {kinds}, got {given.group(1).strip()!r}"
    else:
        got = re.search(r"Expected a (.*?)\. Got value: (.*)", detail.strip().splitlines()[0])
        reason = (f"expected {_type_name(got.group(1))}, got {got.group(2)!r}" if got
                  else " ".join(_type_name(detail).split()))
    return ConfigError(path, reason, source)


def _check_keys(cls: type, data: Any, source: str, prefix: str = "") -> None:
    """Unknown keys and sections given as scalars in a YAML mapping for ``cls``: one line with the closest key."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", f"expected a mapping of settings, got {data!r}", source)
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(names)}"
            raise ConfigError(f"{prefix}{key}", f"unknown key; {hint}", source)
        inner, _ = _strip_optional(hints[key])
        if _is_config(inner) and value is not None:
            _check_keys(inner, value, source, f"{prefix}{key}.")


def _merge(cls: type, data: dict[str, Any], base: Namespace, source: str) -> Namespace:
    """``base`` with the (partial, nested) mapping ``data`` on top, type-checked by jsonargparse."""
    data = _unalias(cls, data, source) if isinstance(data, dict) else data
    _check_keys(cls, data, source)
    try:
        return _parser(cls).parse_object(data, namespace=base, defaults=False)
    except (argparse.ArgumentError, TypeError, ValueError) as e:
        raise _config_error(e, source) from None


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """``cls(**data)`` with its nested configs built first; a field's problem is raised with its full path."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # T is a dataclass
        if not f.init or f.name not in data:
            continue
        path, value = prefix + f.name, data[f.name]
        inner, optional = _strip_optional(hints[f.name])
        if _is_config(inner) and isinstance(value, dict):
            value = _build(inner, value, path + ".")
        elif value is None and not optional:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            raise ConfigError(path, "a value is required" if required else "may not be null")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(path, f"{value!r} is not one of {', '.join(map(str, choices))}")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(prefix + e.path, e.reason, e.source) from None
    except (ValueError, AssertionError, TypeError) as e:  # __post_init__ checks that do not name a field yet
        raise UnisslError(f"invalid configuration: {e}") from None


# ---------------------------------------------------------------------------------------------- public API
def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    """Parse ``argv`` into a validated ``cls`` instance (flags > ``--config`` YAML files > dataclass defaults).

    Every problem is one :class:`UnisslError` line (a :class:`ConfigError` naming the field where there is
    one); ``--help`` prints the flags and exits 0.
    """
    files, args = _translate(cls, sys.argv[1:] if argv is None else list(argv))
    parser = _parser(typing.cast(type, cls), prog)
    if "--help" in args:
        parser.print_help()
        raise SystemExit(0)
    ns = parser.get_defaults()
    for path in files:
        ns = _merge(cls, load_yaml(path), ns, str(path))
    try:
        ns = parser.parse_args(args, namespace=ns)
    except (argparse.ArgumentError, TypeError, ValueError) as e:
        raise _config_error(e, None) from None
    values = ns.as_dict()
    values.pop("config", None)
    return _build(cls, values)


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a (partial, nested) mapping on top of its defaults, checked as a ``--config`` file
    is (``source`` names it in errors)."""
    parser = _parser(typing.cast(type, cls))
    values = _merge(cls, data, parser.get_defaults(), source).as_dict()
    values.pop("config", None)
    return _build(cls, values)


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
    base = data.get("extends")  # a derived pipeline file (unissl.pipeline): its base is relative to it
    if isinstance(base, str) and not Path(base).is_absolute() and (path.parent / base).is_file():
        data["extends"] = str(path.parent / base)
    return data


def output_paths(cfg: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(flag, path, kind) of every field marked ``arg(output=...)`` in ``cfg`` and its nested configs
    (fields left ``None`` are skipped: the command derives their default from another path)."""
    found = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found += output_paths(value, f"{prefix}{f.name}.")
        elif f.metadata.get("output") and value is not None:
            found.append((flag(prefix + f.name), str(value), f.metadata["output"]))
    return found


def check_outputs(cfg: Any) -> None:
    """One line, before any work, for an output path of ``cfg`` that can never be written (a read-only or
    virtual file system, a file in the way, no permission)."""
    for name, path, kind in output_paths(cfg):
        check_writable(path, name, kind)


def check_run_dir(run_dir: str | Path, cfg: Any) -> None:
    """Refuse, before anything is written, a run directory that belongs to something else.

    A path that is a file, a directory holding a saved model (``config.json`` without ``run_info.json``: a
    tokenizer or generator directory) or a run of another command (``run_info.json``'s ``config_class``).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UnisslError(f"run directory {run_dir} is a file; choose another --train.run-dir")

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

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config (used to decide whether a finished stage can be reused)."""
    return stable_hash(to_dict(cfg))
