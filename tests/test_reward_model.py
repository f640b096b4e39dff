"""Reward models: training (synthetic and preference), saving/loading, per-token mapping, CLI, eval-rewards."""

from __future__ import annotations

import json

import pytest
import torch

from sumrl.cli import main
from sumrl.errors import DataError
from sumrl.rewards.base import RewardInput
from sumrl.rewards.registry import build_reward
from sumrl.rewards.reward_model import RewardModel, load_reward_model, read_pairs


def _docs():
    topics = [("Alice Smith", "robots", 12), ("Bob Jones", "rivers", 30), ("Carol King", "bread", 7),
              ("Dan Brown", "stars", 45), ("Eve Adams", "music", 3), ("Frank Moore", "trains", 18)]
    rows = []
    for k, (name, topic, n) in enumerate(topics):
        doc = (f"{name} studied {topic} for {n} years. The study of {topic} is not easy and it shows many "
               f"results. {name} wrote a report on {topic}. ") * 3
        ref = f"{name} studied {topic} for {n} years. The report is about {topic}."
        rows.append({"id": f"e{k}", "document": doc, "summary": ref, "split": "test" if k >= 4 else "train"})
    return rows


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "data.jsonl"
    rows = _docs()
    rows.append({**rows[0], "id": "v0", "split": "val"})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = []
    for k, r in enumerate(_docs()):
        rows.append({"id": r["id"], "document": r["document"], "query": None, "chosen": r["summary"],
                     "rejected": "the the the the", "margin": 1.0, "source": "toy",
                     "meta": {"split": "test" if k >= 4 else "train", "references": [r["summary"]]}})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_synthetic_policy_backbone_trains_saves_and_loads(tiny_model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "rm"
    rc = main(["rm", "train", "--kind", "synthetic", "--data", str(data_file), "--out", str(out),
               "--backbone", "policy", "--model", str(tiny_model_dir), "--steps", "3", "--batch-size", "2",
               "--max-length", "96", "--max-summary-tokens", "48", "--lr", "1e-3"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    per = m["heldout_accuracy_per_class"]
    assert set(per) >= {"random", "repair", "shuffle", "repeat_end", "copy_input", "truncate"}
    assert per["random"]["n"] == 2 and 0.0 <= per["random"]["accuracy"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["normalization"]["n"] == 1 and cfg["arch"]["backbone"] == "policy"
    rm = load_reward_model(out)
    rows = _docs()
    s1 = rm.score([rows[0]["document"]], [rows[0]["summary"]])
    s2 = rm.score([rows[0]["document"]], [rows[0]["summary"]])
    assert s1 == pytest.approx(s2) and len(s1) == 1  # deterministic after loading
    assert "held-out accuracy per negative class" in capsys.readouterr().out


def test_token_scores_map_onto_policy_tokens_and_sum_to_score(tiny_model_dir, tiny_tokenizer, tmp_path):
    model = RewardModel({"backbone": "policy", "model": str(tiny_model_dir), "max_length": 96,
                         "max_summary_tokens": 48})
    torch.nn.init.normal_(model.head.weight, std=0.5)
    doc = _docs()[0]["document"]
    summary = "Alice Smith studied robots – for 12 years (café)."
    ids = tiny_tokenizer(summary, add_special_tokens=False)["input_ids"]
    res = model.token_scores([doc], [summary], None, tokenizer=tiny_tokenizer, token_ids=[ids])[0]
    assert len(res["policy_values"]) == len(ids)
    assert res["policy_values"].sum().item() + res["leftover"] == pytest.approx(res["score"], abs=1e-5)
    assert res["score"] == pytest.approx(model.score([doc], [summary])[0], abs=1e-5)


def test_preference_cli_legacy_form_and_rm_reward(pairs_file, tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "prm"
    rc = main(["rm", "--kind", "preference", "--pairs", str(pairs_file), "--out", str(out), "--backbone", "policy",
               "--model", str(tiny_model_dir), "--steps", "4", "--batch-size", "2", "--max-length", "96",
               "--max-summary-tokens", "32", "--lr", "1e-2", "--margin"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train_pairs"] == 4 and m["n_test_pairs"] == 2
    assert 0.0 <= m["heldout_pairwise_accuracy"] <= 1.0
    # the rm:<path> registry entry, sequence-level and per-token give the same totals
    summaries = ["Alice Smith studied robots.", "the the the the"]
    ids = [tiny_tokenizer(s, add_special_tokens=False)["input_ids"] for s in summaries]
    doc = _docs()[0]["document"]
    base = dict(documents=[doc] * 2, summaries=summaries, references=[[]] * 2, queries=[None] * 2)
    seq = build_reward(f"rm:{out}")(RewardInput(**base))
    tok = build_reward([{"name": "rm", "path": str(out), "per_token": True}])(
        RewardInput(**base, token_ids=ids, tokenizer=tiny_tokenizer))
    assert tok.token_rewards is not None and len(tok.token_rewards[1]) == len(ids[1])
    assert tok.totals().tolist() == pytest.approx(seq.totals().tolist(), abs=1e-4)
    assert "rewards/rm" in seq.components and "rewards/rm/raw" in seq.components


def test_minilm_backbone_trains_a_step_and_loads(data_file, tmp_path):
    out = tmp_path / "mrm"
    assert main(["rm", "--kind", "synthetic", "--data", str(data_file), "--out", str(out), "--steps", "1",
                 "--batch-size", "1", "--max-length", "64", "--max-summary-tokens", "32", "--classes", "shuffle",
                 "truncate", "--eval-limit", "1"]) == 0
    rm = load_reward_model(out)
    assert rm.config["arch"]["backbone"] == "minilm"
    saved = set(json.loads((out / "config.json").read_text())["arch"])
    assert {"max_length", "max_summary_tokens", "train_layers"} <= saved
    assert len(rm.score(["a document about robots"], ["robots"])) == 1


def test_read_pairs_errors_name_file_line_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "document": "d", "chosen": "c", "rejected": "r"}\n{"id": "b", "document": "d", '
                 '"chosen": "c", "rejected": "r", "margin": "big"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'margin'"):
        read_pairs(p)
    p.write_text('{"id": "a", "document": "d", "chosen": "c", "rejected": "r"}\nnot json\n')
    with pytest.raises(DataError, match="line 2"):
        read_pairs(p)


def test_load_reward_model_rejects_other_folders(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="format"):
        load_reward_model(tmp_path)
    assert main(["rm", "eval-rewards", "--pairs", str(tmp_path / "none.jsonl")]) == 2
    assert "pairs file not found" in capsys.readouterr().err


def test_eval_rewards_table(pairs_file, tmp_path, capsys):
    out = tmp_path / "table.json"
    assert main(["rm", "eval-rewards", "--pairs", str(pairs_file), "--rewards", "rouge,repetition,eos",
                 "--out", str(out)]) == 0
    table = {t["reward"]: t for t in json.loads(out.read_text())["table"]}
    # held-out (test) pairs only: chosen = the reference itself, rejected = "the the the the"
    assert table["rouge"]["n"] == 2 and table["rouge"]["accuracy"] == 1.0
    assert table["repetition"]["accuracy"] == 1.0
    assert table["eos"]["ties"] == 2 and table["eos"]["accuracy"] == 0.5  # no EOS info: every pair a tie
    assert "| rouge |" in capsys.readouterr().out
