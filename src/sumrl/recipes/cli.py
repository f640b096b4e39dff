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


def cmd_list(args: argparse.Namespace) -> int:
    from sumrl.recipes import command_of, list_recipes, recipe_about

    for name in list_recipes():
        print(f"{name:18s} {command_of(name):28s} {recipe_about(name)}".rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sumrl.recipes import recipe_text

    print(recipe_text(args.name), end="")
    return 0
