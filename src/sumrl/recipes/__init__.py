"""The recipes shipped with sumrl (package data: they are in an installed wheel too).

A recipe is a YAML file of one command's options (``sumrl <command> --config NAME``). Its name is
the file name without ``.yaml``; the prefix says which command reads it (:data:`COMMANDS`).
``--config`` takes a path or a packaged name (:func:`recipe_path`); ``sumrl recipes list|show``
prints them. The repository's ``recipes/`` is a link to this folder.
"""

from __future__ import annotations

from pathlib import Path

from sumrl.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent
# name prefix -> the command that reads the recipe
COMMANDS = {"sft_": "sumrl sft", "rm_": "sumrl rm train", "rl_": "sumrl rl",
            "judge_factuality": "sumrl rm train-factuality", "judge_coherence": "sumrl rm train-coherence"}


def list_recipes() -> list[str]:
    """Names of the packaged recipes, sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def command_of(name: str) -> str:
    """The command a packaged recipe is for (from its name's prefix)."""
    for prefix, cmd in COMMANDS.items():
        if name.startswith(prefix):
            return cmd
    raise ConfigError(f"recipe {name!r}: no command reads it (names start with {', '.join(COMMANDS)})")


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path as given, else the packaged recipe of that name (``rl_grpo``
    or ``rl_grpo.yaml``). ConfigError listing the packaged names when it is neither."""
    p = Path(name_or_path)
    if p.exists():
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") and stem in list_recipes():
        return RECIPES_DIR / f"{stem}.yaml"
    raise ConfigError(f"{name_or_path}: recipe file not found (and not a packaged recipe: "
                      f"{', '.join(list_recipes())})")


def recipe_text(name: str) -> str:
    """A packaged recipe's YAML (``rl_grpo`` or ``rl_grpo.yaml``); ConfigError listing the names
    when there is no such recipe (a path is not a packaged name: ``sumrl recipes show`` shows only those)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if stem not in list_recipes():
        raise ConfigError(f"no packaged recipe {name!r}; choose from {', '.join(list_recipes())}")
    return (RECIPES_DIR / f"{stem}.yaml").read_text(encoding="utf-8")


def recipe_about(name: str) -> str:
    """A packaged recipe's one-line description: its first comment line that is not the command."""
    for line in recipe_text(name).splitlines():
        if line.startswith("#") and not line.lstrip("# ").startswith("sumrl "):
            return line.lstrip("# ").strip()
    return ""
