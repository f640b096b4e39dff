"""The helper scripts of the RL-vs-SFT experiment (scripts/rl_vs_sft.sh): the composite reward's
weight rule, the Cohan-format converter and the last-mile recipe writer."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pooled_within_group_std_by_hand():
    f = _script("composite_weights").pooled_within_group_std
    # groups [1, 3] (variance 1) and [2, 2, 2, 8] (mean 3.5, variance (3*2.25 + 20.25)/4 = 6.75)
    assert f([[1, 3], [2, 2, 2, 8]]) == pytest.approx(math.sqrt((1 + 6.75) / 2))
    assert f([[5, 5], [7, 7]]) == 0.0          # the across-paper spread does not count
    assert f([[1], []]) == 0.0                  # no group with two samples


def test_composite_weights_end_to_end(tiny_model_dir, tmp_path):
    """On a tiny model: every term is scored, weight = prior / within-paper std, the recipe is written
    (and loads as an RL recipe with the same reward list)."""
    import yaml

    from sumrl.config import build_config, load_recipe
    from sumrl.rl.config import RLConfig
    from conftest import CORPUS

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "document": " ".join(CORPUS[i:i + 4]),
                                        "summary": CORPUS[i].split(".")[0] + ".", "split": "val"}) + "\n"
                            for i in range(3)))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "algo": "grpo", "policy": str(tiny_model_dir), "data": str(data), "max_prompt_tokens": 96,
        "max_new_tokens": 12, "temperature": 1.0, "samples_per_prompt": 4,
        "reward": [{"name": "rouge", "weight": 1.0},
                   {"name": "length", "weight": 0.5, "mode": "reference", "per_token_penalty": -1.0,
                    "short_penalty": -1.0},
                   {"name": "copy", "weight": 0.25}]}))
    out = tmp_path / "chosen.yaml"
    cw = _script("composite_weights")
    assert cw.main(["--policy", str(tiny_model_dir), "--base-recipe", str(base), "--out", str(out),
                    "--limit", "3", "--samples", "3"]) == 0
    text = out.read_text()
    assert text.startswith("# Written by scripts/composite_weights.py")
    chosen = build_config(RLConfig, load_recipe(str(out)), source=str(out)).reward
    assert [e["name"] for e in chosen] == ["rouge", "length", "copy"]
    # the header's table holds each term's std; the weight is prior / std (or the prior when std is 0)
    rows = [l.split() for l in text.splitlines() if l.startswith("#   ") and l.split()[1] in ("rouge", "length", "copy")]
    for (_, name, prior, _mean, std, weight), entry in zip(rows, chosen):
        expect = float(prior) / float(std) if float(std) > 1e-9 else float(prior)
        assert entry["weight"] == pytest.approx(expect, rel=2e-3) and float(weight) == entry["weight"]


def test_cohan_to_jsonl(tmp_path):
    src = tmp_path / "test.txt"
    rows = [{"article_id": "PMC1", "article_text": ["first sentence .", "second one ."],
             "abstract_text": ["<S> the abstract . </S>", "<S> more . </S>"]},
            {"article_id": "PMC1", "article_text": ["dup"], "abstract_text": ["<S> dup </S>"]},
            {"article_id": "PMC2", "article_text": [""], "abstract_text": ["<S> x </S>"]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "cohan_to_jsonl.py"), str(src), "--out", str(out)],
                       capture_output=True, text=True, check=True)
    assert "1 articles" in r.stdout and "2 skipped" in r.stdout
    (row,) = [json.loads(l) for l in out.read_text().splitlines()]
    assert row == {"id": "PMC1", "document": "first sentence . second one .", "summary": "the abstract . more ."}
    bad = tmp_path / "bad.txt"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"article_id": "PMC3", "article_text": ["x"]}) + "\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "cohan_to_jsonl.py"), str(bad), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "line 2" in r.stderr and "abstract_text" in r.stderr


def test_composite_weights_bad_recipe_is_one_line(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("algo: grpo\nreward:\n  - {name: rouge, wieght: 1.0}\n")
    assert _script("composite_weights").main(["--policy", "default", "--base-recipe", str(base),
                                              "--out", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "wieght" in err


def _rm_folder(path: Path, token_normalization) -> Path:
    """A reward-model folder as far as the recipe writer reads it (config.json; the weights file exists)."""
    path.mkdir()
    cfg = {"format": "sumrl-reward-model", "version": 1, "arch": {"backbone": "policy"},
           "normalization": {"mean": 0.6, "std": 0.1}}
    if token_normalization is not None:
        cfg["token_normalization"] = token_normalization
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").write_bytes(b"")
    return path


def _write_lastmile(mod, rm: Path, out: Path) -> int:
    return mod.main(["--rm", str(rm), "--base-recipe", str(ROOT / "recipes" / "rl_lastmile.yaml"), "--out", str(out)])


def test_lastmile_recipe_by_hand(tmp_path):
    import yaml

    # the shared runs/rm_lastmile's token statistics, behind recipes/rl_lastmile.yaml's -8.67 / -3.08:
    # per_token_penalty = (-2.5 + mean) / std, short_penalty = -mean / std
    rm = _rm_folder(tmp_path / "rm", {"mean": 0.6561067606872131, "std": 0.21267649909043929})
    assert _write_lastmile(_script("lastmile_recipe"), rm, tmp_path / "r.yaml") == 0
    length = yaml.safe_load((tmp_path / "r.yaml").read_text())["reward"][1]
    assert length["per_token_penalty"] == pytest.approx(-8.6699, abs=1e-4)  # that RM's paper_equivalent_length_penalty
    assert length["short_penalty"] == pytest.approx(-3.0850, abs=1e-4)


def test_lastmile_recipe_end_to_end(tmp_path, capsys):
    import yaml

    rm = _rm_folder(tmp_path / "rm", {"mean": 0.5, "std": 0.25, "n": 10})
    out = tmp_path / "rl_lastmile.yaml"
    mod = _script("lastmile_recipe")
    assert _write_lastmile(mod, rm, out) == 0
    got = yaml.safe_load(out.read_text())
    base = yaml.safe_load((ROOT / "recipes" / "rl_lastmile.yaml").read_text())
    assert {k: v for k, v in got.items() if k != "reward"} == {k: v for k, v in base.items() if k != "reward"}
    rm_entry, length = got["reward"]
    assert rm_entry == {**base["reward"][0], "path": str(rm)}
    assert length["per_token_penalty"] == -8.0 and length["short_penalty"] == -2.0  # (-2.5+.5)/.25, -.5/.25
    # the written recipe is a valid RL recipe
    from sumrl.config import build_config, load_recipe
    from sumrl.rl.config import RLConfig

    build_config(RLConfig, load_recipe(str(out)), source=str(out))
    capsys.readouterr()
    # an RM without token statistics, a torn config.json, a folder that is no RM: one line each
    bad = [_rm_folder(tmp_path / "no_tok", None), _rm_folder(tmp_path / "torn", None), tmp_path / "empty"]
    (tmp_path / "torn" / "config.json").write_text('{"token_normalization": ')
    bad[2].mkdir()
    for folder, word in zip(bad, ("token_normalization", "config.json", "not a reward model folder")):
        assert _write_lastmile(mod, folder, out) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and word in err, err
