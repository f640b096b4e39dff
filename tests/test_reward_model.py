"""Reward models: training (synthetic and preference), saving/loading, per-token mapping, CLI, eval-rewards."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from sumrl.cli import main
from sumrl.errors import ConfigError, DataError
from sumrl.rewards.base import RewardInput
from sumrl.rewards.registry import build_reward
from sumrl.data.pairs import read_pairs
from sumrl.rewards.reward_model import RewardModel, load_reward_model, map_token_values
from sumrl.training.rm import balanced_negative_slots, drop_unseen_negatives


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


def test_synthetic_policy_backbone_trains_saves_and_loads(tiny_model_dir, tiny_tokenizer, data_file, tmp_path, capsys):
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
    printed = capsys.readouterr().out
    assert "held-out accuracy per negative class" in printed
    # references longer than the 48-token summary window are counted (the tiny BPE makes some long)
    cut = sum(len(tiny_tokenizer(r["summary"], add_special_tokens=False)["input_ids"]) > 48 for r in _docs()[:4])
    assert cut >= 1 and m["train_references_cut"] == cut
    assert f"{cut} ({100 * cut / 4:.1f}%) are longer than max_summary_tokens=48" in printed
    assert m["negatives_train"]["random"] == {"kept": 4, "dropped_same_as_positive": 0, "not_applicable": 0}
    assert cfg["token_normalization"]["n"] > cfg["normalization"]["n"]  # every token of the val reference
    tn = cfg["token_normalization"]
    assert m["paper_equivalent_length"] == pytest.approx(
        {"per_token_penalty": (-2.5 + tn["mean"]) / tn["std"], "short_penalty": -tn["mean"] / tn["std"]})


def test_balanced_negative_slots_give_each_class_exactly_its_share():
    import random

    pools = {"a": [0], "b": [1, 2], "c": []}  # c applies to no example: left out
    slots = balanced_negative_slots(["a", "b", "c"], pools, 5, 1, random.Random(0))
    assert [c for c, _ in slots] == ["b", "a", "b", "a", "b"]
    assert all(i in pools[c] for c, i in slots)
    # over consecutive steps (start = step * n) the classes stay in turn: 12 negatives, 4 classes -> 3 each
    pools = {k: [0, 1] for k in "wxyz"}
    rng = random.Random(1)
    run = [c for step in range(4) for c, _ in balanced_negative_slots(list("wxyz"), pools, 3, step * 3, rng)]
    assert {k: run.count(k) for k in "wxyz"} == {"w": 3, "x": 3, "y": 3, "z": 3}


def test_negatives_identical_to_the_positive_after_the_cut_are_dropped(tiny_model_dir):
    from sumrl.data.schema import Example

    model = RewardModel({"backbone": "policy", "model": str(tiny_model_dir), "max_length": 64, "max_summary_tokens": 6})
    ref = "Alice Smith studied robots for twelve long years in Paris."
    assert model.n_summary_tokens(ref) > 6
    ex = [Example(id="a", document="doc", references=[ref])]
    same_window = ref.split(" in ")[0] + " in Rome."           # differs only after the 6-token window
    early = "Bob " + ref                                         # differs at the first token
    negs = {"truncate": [same_window], "repair": [early], "shuffle": [None]}
    counts = drop_unseen_negatives(model, ex, negs)
    assert model.summary_ids(same_window) == model.summary_ids(ref)
    assert negs == {"truncate": [None], "repair": [early], "shuffle": [None]}
    assert counts["truncate"] == {"kept": 0, "dropped_same_as_positive": 1, "not_applicable": 0}
    assert counts["repair"] == {"kept": 1, "dropped_same_as_positive": 0, "not_applicable": 0}
    assert counts["shuffle"] == {"kept": 0, "dropped_same_as_positive": 0, "not_applicable": 1}


def test_map_token_values_by_character_overlap():
    # policy tokens: "abc" | (special, empty) | "defgh" | "ijkl" (past the RM window)
    # RM tokens:     "abc" = 1.0, "de" = 0.2, "fgh" = 0.6
    got = map_token_values([(0, 3), (3, 3), (3, 8), (8, 12)], [(0, 3), (3, 5), (5, 8)], [1.0, 0.2, 0.6])
    assert got[0] == 1.0 and got[1] is None and got[3] is None
    assert got[2] == pytest.approx(0.4)  # mean of the two RM tokens inside it: (0.2 + 0.6) / 2
    # an RM token spanning two policy tokens gives both its value (not half each)
    assert map_token_values([(0, 2), (2, 4)], [(0, 4)], [0.8]) == [0.8, 0.8]


def test_token_scores_give_each_policy_token_its_own_rm_value(tiny_model_dir, tiny_tokenizer):
    model = RewardModel({"backbone": "policy", "model": str(tiny_model_dir), "max_length": 96,
                         "max_summary_tokens": 48})
    torch.nn.init.normal_(model.head.weight, std=0.5)
    doc = _docs()[0]["document"]
    summary = "Alice Smith studied robots – for 12 years (café)."
    ids = tiny_tokenizer(summary, add_special_tokens=False)["input_ids"]
    res = model.token_scores([doc], [summary], None, tokenizer=tiny_tokenizer, token_ids=[ids])[0]
    # same tokenizer: policy token k gets RM value k, also for the byte-level pieces of "–" and "é"
    pv = res["policy_values"]
    assert len(pv) == len(ids) == len(res["values"])
    assert pv == pytest.approx(res["values"].tolist(), abs=1e-6)
    assert res["score"] == pytest.approx(model.score([doc], [summary])[0], abs=1e-5)
    # a special token (EOS) in the middle of the ids has no value; the others keep theirs
    with_eos = ids + [tiny_tokenizer.eos_token_id]
    res2 = model.token_scores([doc], [summary], None, tokenizer=tiny_tokenizer, token_ids=[with_eos])[0]
    assert res2["policy_values"][-1] is None and res2["policy_values"][:-1] == pytest.approx(pv, abs=1e-6)


def _save_rm(model, out, token_norm=True):
    norm = {"normalization": {"mean": 0.7, "std": 0.5, "n": 3}}
    if token_norm:
        norm["token_normalization"] = {"mean": 0.5, "std": 0.25, "n": 40}
    model.save(out, {"kind": "synthetic", **norm}, {})
    return out


def test_rm_reward_per_token_is_normalised_token_values_with_no_lump(tiny_model_dir, tiny_tokenizer, tmp_path):
    model = RewardModel({"backbone": "policy", "model": str(tiny_model_dir), "max_length": 96,
                         "max_summary_tokens": 48})
    with torch.no_grad():  # every token value 0.9 whatever the input
        model.head.weight.zero_()
        model.head.bias.fill_(0.9)
    out = _save_rm(model, tmp_path / "rm")
    summaries = ["Alice Smith studied robots.", "the the the the"]
    ids = [tiny_tokenizer(s, add_special_tokens=False)["input_ids"] for s in summaries]
    base = dict(documents=[_docs()[0]["document"]] * 2, summaries=summaries, references=[[]] * 2, queries=[None] * 2)
    tok = build_reward([{"name": "rm", "path": str(out), "per_token": True}])(
        RewardInput(**base, token_ids=ids, tokenizer=tiny_tokenizer))
    # token statistics mean 0.5, std 0.25: every token (the last one too) gets (0.9 - 0.5) / 0.25 = 1.6
    assert tok.scores.tolist() == [0.0, 0.0]
    for t, i in zip(tok.token_rewards, ids):
        assert t.tolist() == pytest.approx([1.6] * len(i))
    assert tok.totals().tolist() == pytest.approx([1.6 * len(ids[0]), 1.6 * len(ids[1])])
    # without token ids: the same sum, as a sequence score (the RM reads the same tokens)
    no_ids = build_reward([{"name": "rm", "path": str(out), "per_token": True}])(RewardInput(**base))
    assert no_ids.token_rewards is None and no_ids.totals().tolist() == pytest.approx(tok.totals().tolist())
    # sequence level: (mean value - 0.7) / 0.5 = 0.4, the sequence statistics
    seq = build_reward(f"rm:{out}")(RewardInput(**base))
    assert seq.token_rewards is None and seq.totals().tolist() == pytest.approx([0.4, 0.4])
    # a special token (EOS, no characters) gets 0, not a value
    eos = build_reward([{"name": "rm", "path": str(out), "per_token": True}])(
        RewardInput(**base, token_ids=[i + [tiny_tokenizer.eos_token_id] for i in ids], tokenizer=tiny_tokenizer))
    assert eos.token_rewards[0][-1].item() == 0.0 and eos.token_rewards[0][-2].item() == pytest.approx(1.6)


def test_rm_reward_per_token_refuses_bidirectional_and_old_folders(tiny_model_dir, tmp_path):
    mini = _save_rm(RewardModel({"backbone": "minilm", "max_length": 64, "max_summary_tokens": 32}), tmp_path / "mini")
    with pytest.raises(ConfigError, match="per_token needs a causal reward model.*bidirectional minilm"):
        build_reward([{"name": "rm", "path": str(mini), "per_token": True}])
    build_reward([{"name": "rm", "path": str(mini)}])  # sequence level is fine
    old = _save_rm(RewardModel({"backbone": "policy", "model": str(tiny_model_dir), "max_length": 96,
                                "max_summary_tokens": 48}), tmp_path / "old", token_norm=False)
    with pytest.raises(ConfigError, match="token_normalization"):
        build_reward([{"name": "rm", "path": str(old), "per_token": True}])
    build_reward([{"name": "rm", "path": str(old), "per_token": True, "normalize": False}])


def _summary_values(model, doc, summary):
    v, m, _ = model.forward_values([doc], [summary], [None])
    return v[0][m[0]].detach()


def test_policy_rm_is_causal_and_minilm_is_not(tiny_model_dir, tiny_tokenizer):
    doc = _docs()[1]["document"]
    a = "Bob Jones studied rivers for 30 years."
    b = "Bob Jones studied rivers and wrote a very long report about many other things at length."
    k = len(tiny_tokenizer("Bob Jones studied rivers", add_special_tokens=False)["input_ids"])
    pol = RewardModel({"backbone": "policy", "model": str(tiny_model_dir), "max_length": 96, "max_summary_tokens": 48})
    torch.nn.init.normal_(pol.head.weight, std=0.5)
    ia, ib = pol.summary_ids(a), pol.summary_ids(b)
    assert ia[:k] == ib[:k] and ia[k] != ib[k] and len(ib) > len(ia)
    va, vb = _summary_values(pol, doc, a), _summary_values(pol, doc, b)
    assert torch.allclose(va[:k], vb[:k], atol=1e-5)  # tokens after k change nothing at <= k
    assert not torch.allclose(va[k], vb[k], atol=1e-5)
    assert pol.causal
    mini = RewardModel({"backbone": "minilm", "max_length": 64, "max_summary_tokens": 32})
    torch.nn.init.normal_(mini.head.weight, std=0.5)
    km = len(mini.tokenizer("Bob Jones studied rivers", add_special_tokens=False)["input_ids"])
    ma, mb = _summary_values(mini, doc, a), _summary_values(mini, doc, b)
    assert not torch.allclose(ma[:km], mb[:km], atol=1e-5)  # the test can tell: MiniLM looks ahead
    assert not mini.causal


def test_preference_cli_legacy_form_and_rm_reward(pairs_file, tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "prm"
    rc = main(["rm", "--kind", "preference", "--pairs", str(pairs_file), "--out", str(out), "--backbone", "policy",
               "--model", str(tiny_model_dir), "--steps", "4", "--batch-size", "2", "--max-length", "96",
               "--max-summary-tokens", "32", "--lr", "1e-2", "--margin"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train_pairs"] == 4 and m["n_test_pairs"] == 2
    assert 0.0 <= m["heldout_pairwise_accuracy"] <= 1.0
    # the rm:<path> registry entry: sequence level = (mean value - mu_seq) / sd_seq; per token =
    # (v_t - mu_tok) / sd_tok on each token, with both statistics stored by training
    summaries = ["Alice Smith studied robots.", "the the the the"]
    ids = [tiny_tokenizer(s, add_special_tokens=False)["input_ids"] for s in summaries]
    doc = _docs()[0]["document"]
    base = dict(documents=[doc] * 2, summaries=summaries, references=[[]] * 2, queries=[None] * 2)
    cfg = json.loads((out / "config.json").read_text())
    sn, tn = cfg["normalization"], cfg["token_normalization"]
    assert tn["n"] > sn["n"] == 8  # 4 training pairs x 2 summaries; every one of their tokens
    rm = load_reward_model(out)
    vals = rm.model.token_values([doc] * 2, summaries)
    seq = build_reward(f"rm:{out}")(RewardInput(**base))
    assert seq.totals().tolist() == pytest.approx([(float(v.mean()) - sn["mean"]) / sn["std"] for v in vals], abs=1e-5)
    tok = build_reward([{"name": "rm", "path": str(out), "per_token": True}])(
        RewardInput(**base, token_ids=ids, tokenizer=tiny_tokenizer))
    assert tok.scores.tolist() == [0.0, 0.0]
    for t, v in zip(tok.token_rewards, vals):
        assert t.tolist() == pytest.approx(((v - tn["mean"]) / tn["std"]).tolist(), abs=1e-5)
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


def test_eval_rewards_library_selects_limits_and_writes(pairs_file, tmp_path):
    """The job behind `sumrl rm eval-rewards`, called directly: split and per-source limit, the
    rewards built by name, the written file equal to the returned value."""
    from sumrl.rewards.agreement import EvalRewardsConfig, build_rewards, eval_rewards, first_per_source, select_pairs

    rows = [{"source": s, "k": k} for k, s in enumerate("aabab")]
    assert [r["k"] for r in first_per_source(rows, 2)] == [0, 1, 2, 4]
    assert first_per_source(rows, None) == rows and first_per_source(rows, 0) == rows
    assert [r["meta"]["split"] for r in select_pairs([str(pairs_file)])] == ["test", "test"]
    assert len(select_pairs([str(pairs_file)], split="all")) == 6
    assert len(select_pairs([str(pairs_file), str(pairs_file)], split="train", limit=3)) == 3  # per source "toy"
    with pytest.raises(ConfigError, match="no pairs in split 'val'"):
        select_pairs([str(pairs_file)], split="val")
    assert [n for n, _ in build_rewards(" rouge, ,eos")] == ["rouge", "eos"]
    out = tmp_path / "t.json"
    cfg = EvalRewardsConfig(pairs=[str(pairs_file)], rewards="rouge,repetition", limit=1, out=str(out), bootstrap=0)
    res = eval_rewards(cfg, progress=False)
    assert res["n_pairs"] == 1 and [t["reward"] for t in res["table"]] == ["rouge", "repetition"]
    assert all(t["accuracy"] == 1.0 and "ci" not in t for t in res["table"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert "human_scores" not in res


def test_format_rm_metrics_both_kinds():
    from sumrl.training.rm import format_rm_metrics

    assert format_rm_metrics({"kind": "preference", "heldout_pairwise_accuracy": 0.75, "n_test_pairs": 8}) == \
        "held-out pairwise accuracy: 0.750 (n=8)"
    assert "n/a (n=0)" in format_rm_metrics({"kind": "preference", "heldout_pairwise_accuracy": None,
                                              "n_test_pairs": 0})
    text = format_rm_metrics({"kind": "synthetic", "eval_split": "test",
                              "heldout_accuracy_per_class": {"random": {"accuracy": 1.0, "n": 2, "mean_margin": 0.5},
                                                             "shuffle": {"accuracy": None, "n": 0}},
                              "token_normalization": {"mean": 0.1, "std": 0.2, "n": 30},
                              "paper_equivalent_length": {"per_token_penalty": 12.5, "short_penalty": 3.0}})
    lines = text.splitlines()
    assert lines[1].split() == ["random", "1.000", "(n=2)", "mean", "margin", "+0.500"]
    assert lines[2].split() == ["shuffle", "n/a", "(n=0)"]
    assert "per_token_penalty 12.50, short_penalty 3.00" in lines[3]


def test_lastmile_recipes():
    from pathlib import Path

    from sumrl.config import build_config, load_recipe
    from sumrl.training.config import RMTrainConfig
    from sumrl.rewards.negatives import PAPER_CLASSES

    root = Path(__file__).resolve().parent.parent / "recipes"
    rm = build_config(RMTrainConfig, load_recipe(root / "rm_lastmile.yaml"), {"out": "x"})
    rm.validate()
    assert rm.backbone == "policy" and rm.model == "default" and rm.classes == PAPER_CLASSES
    # ScisummNet abstracts in SmolLM2 tokens: p95 245 on train (docs/rewards.md)
    assert rm.max_summary_tokens >= 245 and rm.eval_split == "test"
    rl = load_recipe(root / "rl_lastmile.yaml")
    entries = {r["name"]: r for r in rl["reward"]}
    assert entries["rm"]["path"] == "runs/rm_lastmile" and entries["rm"]["per_token"] is True
    assert entries["length"]["per_token_penalty"] < entries["length"]["short_penalty"] < 0


def test_rm_training_that_blows_up_stops_with_one_line(tiny_model_dir, data_file, tmp_path, capsys):
    """Issue #19: the reward-model trainers stop like SFT and RL do -- before the optimizer step -- on
    a loss or gradient that is not finite, or a loss that blows up; nothing is written."""
    out = tmp_path / "rm"
    rc = main(["rm", "train", "--kind", "synthetic", "--data", str(data_file), "--out", str(out), "--backbone",
               "policy", "--model", str(tiny_model_dir), "--steps", "6", "--batch-size", "2", "--max-length", "96",
               "--max-summary-tokens", "48", "--lr", "1e4", "--max-loss-ratio", "1.5"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: reward-model training") and "lower --lr" in err[0]
    assert not (out / "model.safetensors").exists()


def test_preference_rm_step_checks_before_the_optimizer_step():
    from sumrl.errors import TrainingDiverged
    from sumrl.training.rm import _optimizer_step
    from sumrl.training.optim import DivergenceGuard

    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.AdamW([w], lr=0.1)
    guard = DivergenceGuard(what="reward-model training", max_loss_ratio=2.0)
    _optimizer_step((w * 0.5).sum(), opt, [w], [], 1, 3, 0.0, guard)  # first loss 0.5: the reference
    before = w.detach().clone()
    with pytest.raises(TrainingDiverged, match="blew up at step 2"):
        _optimizer_step((w * 0 + 5.0 + w * 1e-3).sum(), opt, [w], [], 2, 3, 0.0, guard)
    assert torch.equal(w.detach(), before)  # stopped before the step
    with pytest.raises(TrainingDiverged, match="gradient norm is nan"):  # a finite loss, a NaN gradient
        _optimizer_step((w * 0.4).sum() + _nan_grad(w), opt, [w], [], 3, 3, 0.0, guard)
    assert torch.equal(w.detach(), before)


def _nan_grad(w):
    """0 in the forward pass, NaN in the gradient."""
    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.sum() * 0

        @staticmethod
        def backward(ctx, g):
            return torch.full((1,), float("nan"))

    return F.apply(w)


def test_rm_loss_functions_by_hand():
    from sumrl.training.rm import bradley_terry_losses, mean_std, token_mse_loss

    values = torch.tensor([[1.0, 0.0, 9.0], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # item 1: target 1, tokens 1 and 0 -> (0 + 1) / 2 = 0.5; item 2: target 0, token 0.5 -> 0.25
    assert float(token_mse_loss(values, mask, torch.tensor([1.0, 0.0]))) == pytest.approx((0.5 + 0.25) / 2)
    # -log sigmoid(2 - 1 - 0.5 * 2) = -log sigmoid(0) = log 2; -log sigmoid(0 - 1) = log(1 + e)
    got = bradley_terry_losses(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]), 0.5).mean()
    assert float(got) == pytest.approx((math.log(2) + math.log(1 + math.e)) / 2)
    assert mean_std([1.0, 2.0, 3.0, 6.0]) == {"mean": 3.0, "std": pytest.approx(math.sqrt(14 / 3)), "n": 4}
    assert mean_std([5.0]) == {"mean": 5.0, "std": 1.0, "n": 1} and mean_std([])["std"] == 1.0
    assert mean_std([2.0, 2.0])["std"] == 1.0  # zero spread: std 1 so (x - mean) / std stays defined


def test_preference_rm_beats_chance_on_held_out_documents(tiny_model_dir, tmp_path):
    """A learnable preference (a real summary over a repeated word) on 24 documents: pairs of the 8
    held-out documents are ranked right far above chance (0.5) after 40 steps of the tiny model."""
    rng = random.Random(0)
    words = ["robots", "rivers", "bread", "stars", "music", "trains", "maps", "birds", "clocks", "ships"]
    rows = []
    for k in range(24):
        topic = rng.choice(words)
        doc = f"Report {k} is about {topic}. " * 6
        rows.append({"id": f"d{k}", "document": doc, "chosen": f"The report {k} studies {topic} in detail.",
                     "rejected": "the the the the the", "margin": None,
                     "meta": {"split": "test" if k % 3 == 0 else "train"}})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prm"
    assert main(["rm", "train", "--kind", "preference", "--pairs", str(pairs), "--out", str(out), "--backbone",
                 "policy", "--model", str(tiny_model_dir), "--steps", "40", "--batch-size", "4", "--max-length",
                 "96", "--max-summary-tokens", "32", "--lr", "1e-2", "--eval-limit", "8"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    # untrained (1 step at lr 1e-12) this is 0.5: every pair a tie; trained, 1.0 (measured 2026-11-30)
    assert m["n_test_pairs"] == 8 and m["heldout_pairwise_accuracy"] >= 0.875  # 7 of 8 or better
