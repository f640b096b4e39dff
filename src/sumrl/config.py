"""Typed command configs: one dataclass per command, exposed as CLI flags and YAML recipes.

Every field carries its help text in ``metadata["help"]``. Precedence, lowest to highest:
dataclass default < YAML recipe (``--config recipe.yaml``) < flags given on the command line.
Recipes fail on unknown keys (a typo in a recipe must not silently fall back to a default).
The effective config is saved in each output folder (``config.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
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
        parser.add_argument("--config", default=argparse.SUPPRESS, metavar="RECIPE.yaml",
                            help="YAML recipe; its keys are this command's options (unknown keys are an error). "
                                 "Flags given on the command line override it.")
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
            return float(value)
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
    except (TypeError, ValueError):
        raise ConfigError(f"option '{name}': cannot use {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of option: value")
    return data


def build_config(cls: type[T], recipe: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                 *, source: str = "recipe") -> T:
    """Defaults < recipe < overrides. Unknown keys in the recipe raise ConfigError naming the key."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer, where in ((recipe or {}, source), (overrides or {}, "command line")):
        for key, value in layer.items():
            k = key.replace("-", "_")
            if k not in names:
                close = [n for n in names if n.startswith(k[:3])]
                hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
                raise ConfigError(f"{where}: unknown option '{key}' for {cls.__name__}{hint}")
            values[k] = _coerce(k, value, hints[k])
            choices = next(f for f in dataclasses.fields(cls) if f.name == k).metadata.get("choices")
            if choices and values[k] is not None and values[k] not in choices:
                raise ConfigError(f"{where}: option '{key}' must be one of {', '.join(map(str, choices))}, "
                                  f"got {values[k]!r}")
    try:
        cfg = cls(**values)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    ns = dict(vars(args))
    recipe_path = ns.pop("config", None)
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in ns.items() if k in names}
    recipe = load_recipe(recipe_path) if recipe_path else None
    return build_config(cls, recipe, overrides, source=str(recipe_path) if recipe_path else "recipe")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# Option groups shared by several commands (a command's config inherits the groups it needs).


@dataclasses.dataclass
class DataOptions:
    data: str = opt("scisummnet", "dataset: a built-in name (scisummnet, scisummnet:human, scitldr, qmsum) "
                                  "or a JSONL/CSV/Parquet file or Hugging Face save_to_disk folder")
    split: str = opt("test", "split to use: train, val, test or all")
    limit: typing.Optional[int] = opt(None, "use only the first N examples of the split")
    id_field: str = opt("id", "name of the id field in the input file")
    document_field: str = opt("document", "name of the document field in the input file")
    summary_field: str = opt("summary", "name of the reference-summary field (a string or a list of strings)")
    query_field: str = opt("query", "name of the optional query field")
    skip_invalid: bool = opt(False, "skip invalid rows (and report how many) instead of failing")
    seed: int = opt(0, "random seed (data split of unsplit files, sampling, initialisation)")


@dataclasses.dataclass
class GenerationOptions:
    max_new_tokens: int = opt(128, "maximum tokens generated per summary")
    max_input_tokens: typing.Optional[int] = opt(
        None, "token budget for the prompt; longer documents use --strategy (default: model context - max_new_tokens)")
    strategy: str = opt("truncate", "long-document strategy when a document exceeds the budget: truncate = keep "
                                    "the beginning; chunk = hierarchical map-reduce", choices=["truncate", "chunk"])
    batch_size: int = opt(4, "documents generated in parallel")
    sample: bool = opt(False, "sample instead of greedy decoding")
    temperature: float = opt(1.0, "sampling temperature (with --sample)")
    top_p: float = opt(1.0, "nucleus sampling threshold (with --sample)")
    instruction: typing.Optional[str] = opt(None, "instruction placed before the document in the prompt")
    dtype: str = opt("float32", "model dtype", choices=["float32", "bfloat16"])

    def generation_settings(self, progress: bool = True):
        from sumrl.generation.summarize import GenerationSettings

        return GenerationSettings(max_new_tokens=self.max_new_tokens, do_sample=self.sample,
                                  temperature=self.temperature, top_p=self.top_p, batch_size=self.batch_size,
                                  strategy=self.strategy, max_input_tokens=self.max_input_tokens,
                                  instruction=self.instruction, seed=getattr(self, "seed", 0), progress=progress)
