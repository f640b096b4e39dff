"""Typed command configs: one dataclass per command, exposed as CLI flags and YAML recipes.

Every field carries its help text in ``metadata["help"]``. Precedence, lowest to highest:
dataclass default < YAML recipe (``--config recipe.yaml``) < flags given on the command line.
Recipes fail on unknown keys (a typo in a recipe must not silently fall back to a default).
The effective config is saved in each output folder (``config.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sumrl.errors import ConfigError

T = TypeVar("T")


class AutoBool:
    """Type marker for options that take ``auto``, ``true`` or ``false`` (e.g. ``--bf16``): the value
    is the string ``"auto"`` or a bool. On the command line ``--flag`` alone means true,
    ``--flag auto|true|false`` sets it, ``--no-flag`` means false (as for plain bool options)."""


BF16_HELP = ("bfloat16 autocast (parameters and optimizer stay float32): auto = only where this machine runs bf16 "
             "faster (GPU compute capability >= 8, or a CPU measured once and cached; the choice and why are "
             "printed first), true / false to force")


def parse_auto_bool(value: Any, name: str) -> Any:
    """``"auto"``, True or False; ConfigError naming the option otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "auto":
            return "auto"
        if v in ("true", "yes", "1", "on"):
            return True
        if v in ("false", "no", "0", "off"):
            return False
    raise ConfigError(f"option '{name}': expected auto, true or false, got {value!r}")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, choices: list | None = None,
        default_factory: Any = dataclasses.MISSING, cli: bool = True) -> Any:
    """A dataclass field with help text (and optional choices) for the CLI."""
    md = {"help": help, "choices": choices, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, with_config: bool = True) -> None:
    """Add one ``--flag`` per dataclass field; defaults are SUPPRESSed so that only flags the user
    actually typed override the recipe."""
    hints = _field_types(cls)
    if with_config:
        parser.add_argument("--config", default=argparse.SUPPRESS, metavar="RECIPE",
                            help="YAML recipe file, or the name of a packaged recipe (`sumrl recipes list`); its "
                                 "keys are this command's options (unknown keys are an error). Flags given on the "
                                 "command line override it.")
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default!r})" if help_text else f"(default: {default!r})"
        # argparse %-formats help strings: escape literal percent signs
        kw: dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_text.replace("%", "%%"), dest=f.name)
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif tp is AutoBool:
            parser.add_argument(flag, nargs="?", const="true", metavar="auto|true|false", **kw)
            parser.add_argument("--no-" + flag[2:], action="store_const", const="false", dest=f.name,
                                default=argparse.SUPPRESS, help=f"same as {flag} false")
        elif origin in (list, tuple):
            (inner,) = typing.get_args(tp)[:1] or (str,)
            parser.add_argument(flag, nargs="+", type=inner if inner in (int, float, str) else str, **kw)
        elif tp in (int, float, str):
            parser.add_argument(flag, type=tp, metavar=f.name.upper() if tp is str else tp.__name__.upper(), **kw)
        else:  # dicts and other structured values come from recipes only
            continue


def _coerce(name: str, value: Any, tp: Any) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"option '{name}' must not be null")
    origin = typing.get_origin(tp)
    if tp is AutoBool:
        return parse_auto_bool(value, name)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if not math.isfinite(f):
                # a NaN learning rate passes every `< 0` check and then ruins the run silently
                raise ConfigError(f"option '{name}' must be a finite number, got {_short(value)}")
            return f
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin in (list, tuple):
            args = typing.get_args(tp)
            inner = args[0] if args else Any
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            return [_coerce(name, v, inner) for v in value]
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"option '{name}': cannot use {_short(value)} as {getattr(tp, '__name__', tp)}") from None
    return value


def _short(value: Any, limit: int = 60) -> str:
    """repr() of a value for an error message, cut short: a recipe value may be huge."""
    if isinstance(value, (dict, list)):
        return type(value).__name__
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "...'"


# A recipe is a few dozen options; anything whose aliases expand past this many nodes is an
# alias bomb ("billion laughs"): refused before anything formats (and so expands) the value.
MAX_RECIPE_NODES = 100_000


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _RecipeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a key that is not a plain value",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_short(key)} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _expanded_size(obj: Any, limit: int) -> int:
    """Nodes of ``obj`` with every alias expanded, counted without expanding anything (the size
    of each distinct object is memoised); stops counting past ``limit``."""
    memo: dict[int, int] = {}

    def size(o: Any) -> int:
        if id(o) in memo:
            return memo[id(o)]
        if isinstance(o, dict):
            n = 1 + sum(size(k) + size(v) for k, v in o.items())
        elif isinstance(o, list):
            n = 1 + sum(size(v) for v in o)
        else:
            n = 1
        n = min(n, limit + 1)
        memo[id(o)] = n
        return n

    return size(obj)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (a file, or a packaged recipe's name: :func:`sumrl.recipes.recipe_path`);
    any problem is one ConfigError naming the file (and line)."""
    from sumrl.recipes import recipe_path

    path = recipe_path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --config takes a YAML recipe file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the recipe ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); re-save the recipe "
                          "as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}invalid YAML ({getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer past Python's 4,300-digit conversion limit
        raise ConfigError(f"{path}: unreadable value ({_short(str(e), 120)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of option: value")
    try:
        too_big = _expanded_size(data, MAX_RECIPE_NODES) > MAX_RECIPE_NODES
    except RecursionError:
        too_big = True
    if too_big:
        raise ConfigError(f"{path}: the recipe expands to more than {MAX_RECIPE_NODES:,} values (YAML aliases "
                          "nested into an alias bomb?); refused")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: option names must be text, got {_short(bad[0])} ({type(bad[0]).__name__})")
    return data


def build_config(cls: type[T], recipe: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                 *, source: str = "recipe") -> T:
    """Defaults < recipe < overrides. Unknown keys in the recipe raise ConfigError naming the key."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    from_recipe: set[str] = set()
    for layer, where in ((recipe or {}, source), (overrides or {}, "command line")):
        for key, value in layer.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: option names must be text, got {_short(key)}")
            k = key.replace("-", "_")
            if k not in names:
                close = [n for n in names if n.startswith(k[:3])]
                hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
                raise ConfigError(f"{where}: unknown option '{key}' for {cls.__name__}{hint}")
            try:
                values[k] = _coerce(k, value, hints[k])
                choices = fields[k].metadata.get("choices")
                if choices and values[k] is not None and values[k] not in choices:
                    raise ConfigError(f"option '{k}': {_short(values[k])} is not one of {', '.join(map(str, choices))}")
            except ConfigError as e:
                # argparse checks flags; a recipe's values are checked here and the message names
                # the recipe file as well as the option
                raise ConfigError(f"{where}: {e}" if where != "command line" else str(e)) from None
            if where != "command line":
                from_recipe.add(k)
            else:
                from_recipe.discard(k)
    try:
        cfg = cls(**values)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None
    except ConfigError as e:  # a __post_init__ check
        raise _name_recipe(e, from_recipe, source) from None
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise _name_recipe(e, from_recipe, source) from None
    return cfg


def _name_recipe(e: ConfigError, from_recipe: set[str], source: str) -> ConfigError:
    """Prefix a validation error with the recipe file when it is about a value the recipe set."""
    msg = str(e)
    for k in from_recipe:
        if f"--{k.replace('_', '-')}" in msg or f"'{k}'" in msg:
            return ConfigError(f"{source}: {msg} (set by the recipe)")
    return e


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    ns = dict(vars(args))
    recipe_path = ns.pop("config", None)
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in ns.items() if k in names}
    recipe = load_recipe(recipe_path) if recipe_path else None
    cfg = build_config(cls, recipe, overrides, source=str(recipe_path) if recipe_path else "recipe")
    check_output_paths(cfg)
    return cfg


# Output options checked when the config is read, before any model is loaded or work is done.
OUTPUT_FIELDS = ("out", "json", "markdown")


def check_output_paths(cfg: Any) -> None:
    """One line, up front, for an output path that cannot be written: a folder expected where a
    file is (or the reverse), or a parent that is a file or not writable. (Failures that only show
    at write time -- a full disk -- are caught by the CLI and reported as one line too.)"""
    import os

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name, None)
        if f.name not in OUTPUT_FIELDS or not isinstance(value, str) or not value:
            continue
        flag = "--" + f.name.replace("_", "-")
        wants_folder = f.metadata.get("help", "").startswith("output folder")
        p = Path(value)
        if p.exists():
            if wants_folder and not p.is_dir():
                raise ConfigError(f"{flag} {p}: is a file, not a folder; choose another {flag}")
            if not wants_folder and p.is_dir():
                raise ConfigError(f"{flag} {p}: is a folder; give a file path")
            if not os.access(p, os.W_OK | (os.X_OK if p.is_dir() else 0)):
                raise ConfigError(f"{flag} {p}: not writable (permission denied)")
            continue
        anc = p.absolute().parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            raise ConfigError(f"{flag} {p}: {anc} is a file, so nothing can be created under it")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {p}: cannot create it, {anc} is not writable (permission denied)")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
