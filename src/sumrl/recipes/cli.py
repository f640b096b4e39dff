"""``sumrl recipes list|show NAME``: the recipes shipped with sumrl (parsing only; the recipes
are :mod:`sumrl.recipes`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list or print the packaged recipes (use one with --config NAME)",
                       description="The YAML recipes shipped with sumrl. Any command's --config takes a recipe "
                                   "file or one of these names.")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    rs = p.add_subparsers(dest="recipes_command", metavar="SUBCOMMAND")
    ls = rs.add_parser("list", help="names of the packaged recipes and the command each is for")
    ls.set_defaults(func=cmd_list)
    show = rs.add_parser("show", help="print a packaged recipe")
    show.add_argument("name", help="recipe name (e.g. rl_grpo), as listed by `sumrl recipes list`")
    show.set_defaults(func=cmd_show)


def _first_comment(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#") and not line.lstrip("# ").startswith("sumrl "):
            return line.lstrip("# ").strip()
    return ""


def cmd_list(args: argparse.Namespace) -> int:
    from sumrl.recipes import RECIPES_DIR, command_of, list_recipes

    for name in list_recipes():
        about = _first_comment((RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        print(f"{name:18s} {command_of(name):28s} {about}".rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sumrl.errors import ConfigError
    from sumrl.recipes import RECIPES_DIR, list_recipes

    name = args.name[:-5] if args.name.endswith(".yaml") else args.name
    if name not in list_recipes():
        raise ConfigError(f"no packaged recipe {args.name!r}; choose from {', '.join(list_recipes())}")
    print((RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8"), end="")
    return 0
