import dataclasses

import pytest

from sumrl.cli import main
from sumrl.config import build_config, load_recipe, opt
from sumrl.errors import ConfigError


@dataclasses.dataclass
class Cfg:
    lr: float = opt(1e-4, "learning rate")
    steps: int = opt(10, "steps")
    name: str | None = opt(None, "name")
    lora: bool = opt(True, "use LoRA")
    targets: list[str] = opt(default_factory=lambda: ["q_proj"], help="modules")


def test_precedence_default_recipe_flags():
    cfg = build_config(Cfg, {"lr": 0.5, "steps": 3}, {"steps": 7})
    assert cfg.lr == 0.5 and cfg.steps == 7 and cfg.name is None and cfg.lora


def test_unknown_recipe_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown option 'stepz'"):
        build_config(Cfg, {"stepz": 3})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="steps"):
        build_config(Cfg, {"steps": "many"})
    with pytest.raises(ConfigError):
        build_config(Cfg, {"steps": 2.5})


def test_list_and_bool_coercion():
    cfg = build_config(Cfg, {"targets": "q_proj,v_proj", "lora": "false"})
    assert cfg.targets == ["q_proj", "v_proj"] and cfg.lora is False


def test_bad_yaml_names_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("lr: 1\nsteps: [1,\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: line \d+"):
        load_recipe(p)


def test_cli_recipe_unknown_key_one_line(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("max_new_tokens: 8\nbogus_key: 1\n")
    rc = main(["eval", "--config", str(p), "--model", "x", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "bogus_key" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_every_subcommand_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ["data", "summarize", "eval", "demo"]:
        assert cmd in out


@pytest.mark.parametrize("cls_path", ["sumrl.training.config:SFTConfig", "sumrl.rl.config:RLConfig"])
def test_run_options_are_one_contract_for_every_trainer(cls_path):
    """The logging/checkpoint flags (training.checkpoint.RunOptions) are declared and checked once:
    both trainers refuse the same bad values with the same line (RL did not check
    --keep-checkpoints before), and a trainer may keep its own default."""
    import importlib

    from sumrl.errors import ConfigError
    from sumrl.training.checkpoint import RUN_OPTIONS_RESUME_MUTABLE, RunOptions

    mod, name = cls_path.split(":")
    cls = getattr(importlib.import_module(mod), name)
    assert issubclass(cls, RunOptions)
    assert RUN_OPTIONS_RESUME_MUTABLE <= importlib.import_module(mod).RESUME_MUTABLE
    for bad, line in [({"keep_checkpoints": 0}, "--keep-checkpoints must be at least 1, got 0"),
                      ({"save_every": 0}, "--save-every must be at least 1, got 0"),
                      ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other")]:
        with pytest.raises(ConfigError, match=line):
            build_config(cls, bad).validate()
    assert build_config(cls, {}).save_every == (10 if name == "RLConfig" else 50)
