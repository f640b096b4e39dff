"""Every packaged recipe is loaded and validated by the config of the command it is for, and
`--config NAME` / `sumrl recipes list|show` find the recipes inside the package (no checkout)."""

from __future__ import annotations

import pytest

from sumrl.cli import main
from sumrl.config import build_config, load_recipe
from sumrl.errors import ConfigError
from sumrl.recipes import RECIPES_DIR, command_of, list_recipes, recipe_path


def _config_class(command: str) -> type:
    from sumrl.rewards.coherence_model import CoherenceTrainConfig
    from sumrl.rewards.factuality import FactualityTrainConfig
    from sumrl.rl.config import RLConfig
    from sumrl.training.config import RMTrainConfig, SFTConfig

    return {"sumrl sft": SFTConfig, "sumrl rm train": RMTrainConfig, "sumrl rl": RLConfig,
            "sumrl rm train-factuality": FactualityTrainConfig,
            "sumrl rm train-coherence": CoherenceTrainConfig}[command]


def test_recipes_are_package_data():
    assert RECIPES_DIR.parent.name == "sumrl" and RECIPES_DIR.parent.parent.name == "src"
    assert len(list_recipes()) >= 15 and "rl_grpo" in list_recipes()


def _documented_flags(name: str) -> dict[str, str]:
    """The flags of the command line the recipe documents in its comments (``# sumrl ... --config
    recipes/NAME.yaml --pairs FILE --out DIR``): what a user adds to it. A recipe that a script
    reads (no such line) is validated on its own."""
    for line in (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and f"--config recipes/{name}.yaml" in line:
            words = line.split(f"--config recipes/{name}.yaml", 1)[1].split("(")[0].split()
            return {w[2:].replace("-", "_"): v for w, v in zip(words[::2], words[1::2])}
    return {}


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_loads_and_validates(name):
    """Loaded as the recipe's own documented command line reads it (validate() runs, the reward
    list included)."""
    cls = _config_class(command_of(name))
    flags = _documented_flags(name)
    cfg = build_config(cls, load_recipe(name), flags, source=name)
    assert all(str(getattr(cfg, k)) == v for k, v in flags.items())


def test_config_name_resolves_a_packaged_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the name alone must find the packaged file
    assert recipe_path("rl_grpo") == recipe_path("rl_grpo.yaml") == RECIPES_DIR / "rl_grpo.yaml"
    assert load_recipe("rl_grpo")["algo"] == "grpo"
    (tmp_path / "rl_grpo.yaml").write_text("algo: ppo\n")  # a file of that name wins: paths first
    assert load_recipe("rl_grpo.yaml")["algo"] == "ppo"
    with pytest.raises(ConfigError, match="recipe file not found .*rl_grpo"):
        load_recipe("no_such_recipe")


def test_nested_reward_options_are_checked_when_the_config_is_read(tmp_path):
    from sumrl.rl.config import RLConfig

    bad = {"reward": [{"name": "rouge"}, {"name": "length", "per_tokn_penalty": -1.0}]}
    with pytest.raises(ConfigError, match="reward 'length': unknown option.*per_tokn_penalty"):
        build_config(RLConfig, bad, {"out": str(tmp_path)})
    with pytest.raises(ConfigError, match="unknown reward 'rogue'"):
        build_config(RLConfig, {"reward": "rogue,length"}, {"out": str(tmp_path)})


def test_recipes_cli_list_and_show(capsys):
    assert main(["recipes", "list"]) == 0
    out = capsys.readouterr().out
    assert "rl_grpo" in out and "sumrl rl" in out and "sft_lora" in out and "sumrl sft" in out
    assert main(["recipes", "show", "rl_grpo"]) == 0
    assert capsys.readouterr().out == (RECIPES_DIR / "rl_grpo.yaml").read_text(encoding="utf-8")
    assert main(["recipes", "show", "nope"]) == 2
    assert "no packaged recipe 'nope'" in capsys.readouterr().err
    from sumrl.recipes import recipe_about, recipe_text

    assert recipe_text("rl_grpo.yaml") == recipe_text("rl_grpo")
    # the first comment that is not the command line; no comment at all: empty
    assert recipe_about("judge_factuality") == "Sized for the shared 2-core development CPU (see docs/rewards.md for the time it took)."
    assert recipe_about("judge_coherence") == ""
