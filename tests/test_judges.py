"""Learned judges (factual consistency, coherence): alignment, per-token placement, corruptions,
validation statistics and reproducible training, on hand-made cases."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from sumrl.errors import ConfigError, SumrlError
from sumrl.rewards import judges as J
from sumrl.rewards.base import RewardInput

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
needs_shared = pytest.mark.skipif(not (SHARED / "frank_cnndm_xsum_factuality").is_dir(),
                                  reason="needs ../shared/data (FRANK, SummEval)")

DOC = ("The company reported revenue of 12.5 million dollars in 2019. Alice Smith leads the research team in Paris. "
       "The new model reduces errors on long documents by a wide margin according to the authors. "
       "The team plans to release the code next year.")


# --------------------------------------------------------------------------- windows and alignment


def test_windows_are_sentence_chunks_and_overlap_by_one_chunk():
    doc = " ".join(f"Sentence number {i} talks about topic{i} here." for i in range(10))  # 7 words each
    chunks = J.chunk_sentences(doc, 14)
    assert chunks[0] == "Sentence number 0 talks about topic0 here. Sentence number 1 talks about topic1 here."
    assert all(len(c.split()) <= 14 for c in chunks) and len(chunks) == 5
    wins = J.make_windows(doc, 14)
    assert len(wins) == 4 and wins[1] == chunks[1] + " " + chunks[2]
    # a sentence longer than a chunk is cut, never dropped
    long = " ".join(f"w{i}" for i in range(30)) + "."
    assert [len(c.split()) for c in J.chunk_sentences(long, 12)] == [12, 12, 6]
    assert J.make_windows("", 12) == [] and J.make_windows("One short sentence.", 12) == ["One short sentence."]


def test_alignment_finds_the_window_holding_the_evidence_in_a_long_document():
    rng = random.Random(0)
    filler = ["The committee met again to discuss routine matters of the budget."] * 1200  # ~13k words
    filler[1100] = "Quentin Zarkov discovered the vaccine for yellow fever in Lagos during 1937."
    doc = " ".join(filler)
    sw = J.SourceWindows(doc, chunk_words=40)
    assert len(sw.windows) > 300
    top = sw.top("Zarkov found a yellow fever vaccine in 1937.", 2)
    assert all("Zarkov" in sw.windows[j] for j in top)
    # a claim sharing no word with the source falls back to the lead, deterministically
    assert sw.top("qwerty asdfgh", 2) == [0, 1]
    assert rng  # seeded, unused: alignment itself is deterministic


def test_lexical_features_precision_against_whole_document():
    sw = J.SourceWindows(DOC, 40)
    p1, p2, facts, loglen = J.with_fact_feature(J.lexical_features("Alice Smith leads the research team.", sw),
                                                "Alice Smith leads the research team.", DOC)
    assert p1 == 1.0 and p2 == 1.0 and facts == 0.0 and loglen == pytest.approx(math.log1p(6))
    f = J.with_fact_feature(J.lexical_features("Bob Jones reported revenue of 99 million.", sw),
                            "Bob Jones reported revenue of 99 million.", DOC)
    # content words: bob jones reported revenue 99 million -> 3 of 6 in the document
    assert f[0] == pytest.approx(3 / 6) and f[2] >= 2  # "Bob Jones" and "99 million" unsupported


# --------------------------------------------------------------------------- factuality: per-token placement


def _lexical_judge(tmp_path: Path) -> Path:
    """A judge folder whose calibration relies on document word precision only (the cross-encoder's
    weights are the untrained ones): deterministic and interpretable, to test the plumbing."""
    torch.manual_seed(0)
    enc = J.PairEncoder(train_layers=1, max_claim_tokens=32, max_evidence_tokens=64)
    tensors = dict(enc.trained_state())
    tensors.update({"calib.w": torch.tensor([0.0, 12.0, 0.0, 0.0, 0.0]), "calib.b": torch.tensor(0.0),
                    "calib.mu": torch.tensor([0.0, 0.75, 0.0, 0.0, 0.0]), "calib.sd": torch.ones(5)})
    cfg = {"kind": "factuality", "version": 1,
           "arch": {"train_layers": 1, "max_claim_tokens": 32, "max_evidence_tokens": 64, "top_k": 2, "chunk_words": 20}}
    J.save_judge(tmp_path / "fj", cfg, tensors)
    return tmp_path / "fj"


def test_factuality_penalty_lands_on_the_unsupported_sentence_tokens(tmp_path, tiny_tokenizer):
    from sumrl.rewards.align import token_char_spans
    from sumrl.rewards.factuality import FactualityReward

    tok = tiny_tokenizer
    path = _lexical_judge(tmp_path)
    good = "Alice Smith leads the research team in Paris."
    bad = "Bob Jones invented a quantum toaster in Berlin."
    summary = f"{good} {bad}"
    ids = [tok(summary, add_special_tokens=False)["input_ids"]]
    inp = RewardInput(documents=[DOC], summaries=[summary], references=[[]], queries=[None], token_ids=ids, tokenizer=tok)
    r = FactualityReward(path=str(path), penalty=1.0)
    out = r(inp)
    spans = token_char_spans(tok, ids[0])
    vals = out.token_rewards[0].tolist()
    cut = len(good)
    on_good = sum(v for v, (s, e) in zip(vals, spans) if e <= cut)
    on_bad = sum(v for v, (s, e) in zip(vals, spans) if s > cut)
    # calibration z = 12 * (precision - 0.75): good sentence precision 1 -> p = sigmoid(3); bad 0/6 -> sigmoid(-9);
    # each sentence carries -(1 - p) / 2 on its own tokens (the space between them carries nothing)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert on_good == pytest.approx(-(1 - sig(3)) / 2, abs=1e-4)
    assert on_bad == pytest.approx(-(1 - sig(-9)) / 2, abs=1e-4)
    assert out.components["factuality/unsupported_rate"].tolist() == [0.5]
    # totals identical without token ids (penalty moves into the score)
    inp2 = RewardInput(documents=[DOC], summaries=[summary], references=[[]], queries=[None])
    assert r(inp2).totals().item() == pytest.approx(out.totals().item(), abs=1e-5)
    assert out.totals().item() == pytest.approx(-(1 - out.components["factuality/support"].item()), abs=1e-5)
    # an empty summary claims nothing: no penalty
    empty = r(RewardInput(documents=[DOC], summaries=[""], references=[[]], queries=[None]))
    assert empty.totals().tolist() == [0.0]


def test_factuality_registry_options_and_missing_folder(tmp_path):
    from sumrl.rewards.registry import build_reward

    path = _lexical_judge(tmp_path)
    comp = build_reward([{"name": "factuality", "path": str(path), "penalty": 2.0, "weight": 0.5}])
    assert comp.names == ["factuality"] and comp.weights == [0.5]
    with pytest.raises(ConfigError, match="unknown option"):
        build_reward([{"name": "factuality", "path": str(path), "windows": 3}])
    with pytest.raises(SumrlError, match="not found"):
        build_reward([{"name": "factuality", "path": str(tmp_path / "nope")}])
    with pytest.raises(SumrlError, match="kind"):
        cfgp = path / "config.json"
        cfgp.write_text(cfgp.read_text().replace('"factuality"', '"coherence_model"'))
        build_reward([{"name": "factuality", "path": str(path) + "/"}])


def test_knowledge_corpus_check_is_reported_separately(tmp_path):
    from sumrl.rewards.factuality import FactualityReward

    path = _lexical_judge(tmp_path)
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "facts.txt").write_text("Bob Jones invented a quantum toaster in Berlin in 1999. Toasters are kitchen tools.")
    summary = "Alice Smith leads the research team in Paris. Bob Jones invented a quantum toaster in Berlin."
    inp = RewardInput(documents=[DOC], summaries=[summary], references=[[]], queries=[None])
    with_kb = FactualityReward(path=str(path), knowledge=str(kb))(inp)
    without = FactualityReward(path=str(path))(inp)
    assert with_kb.components["factuality/knowledge_supported"].tolist() == [1.0]
    assert with_kb.totals().tolist() == without.totals().tolist()  # never changes the reward
    (kb / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    from sumrl.rewards.factuality import KnowledgeIndex

    with pytest.raises(SumrlError, match=r"bad.jsonl, line 2, field 'text'"):
        KnowledgeIndex(kb)


def test_pronoun_swap_keeps_case_and_changes_one_pronoun():
    from sumrl.rewards.factuality import pronoun_swap

    out = pronoun_swap("She said his plan works.", random.Random(0))
    assert out in ("He said his plan works.", "She said her plan works.")
    assert pronoun_swap("No pronouns in this line.", random.Random(0)) is None


# --------------------------------------------------------------------------- coherence


def test_corruptions_are_pure_and_do_what_they_say():
    from sumrl.rewards.coherence_model import corrupt

    s = ["A one.", "B two.", "C three.", "D four."]
    o = ["X one.", "Y two.", "Z three."]
    sh = corrupt(s, "shuffle", random.Random(1))
    assert sorted(sh) == sorted(s) and sh != s
    assert corrupt(s, "shuffle", random.Random(1)) == sh  # seeded: same output
    d = corrupt(s, "drop", random.Random(0))
    assert len(d) == 3 and d[-1] == "D four." and set(d) < set(s)
    r = corrupt(s, "repeat", random.Random(0))
    assert len(r) == 5 and len(set(r)) == 4
    assert all(r[i] != r[i + 1] for i in range(4))  # the copy is not adjacent to its original
    assert corrupt(s, "splice", random.Random(0), o) == ["A one.", "B two.", "Y two.", "Z three."]
    assert corrupt(["Only."], "shuffle", random.Random(0)) is None and corrupt(s[:2], "drop", random.Random(0)) is None
    with pytest.raises(SumrlError):
        corrupt(s, "rotate", random.Random(0))


def test_coherence_net_handles_any_number_of_sentences():
    from sumrl.rewards.coherence_model import CoherenceNet

    torch.manual_seed(0)
    net = CoherenceNet(8, 4)
    e = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    out = net([e, e[:1], e[:2], torch.zeros(0, 8)])
    assert out.shape == (4,) and torch.isfinite(out).all()
    # order matters (a - b feature), repeated far sentence raises the redundancy input
    assert not torch.allclose(net([e])[0], net([e.flip(0)])[0])


# --------------------------------------------------------------------------- validation statistics


def test_balanced_accuracy_threshold_and_kendall_by_hand():
    from sumrl.rewards.validation import balanced_accuracy, best_threshold, kendall, summary_level_tau

    scores = [0.1, 0.4, 0.35, 0.8, 0.9]
    labels = [False, False, True, True, True]
    # threshold 0.375: predicts [F, T, F, T, T]: recall(True) = 2/3, recall(False) = 1/2
    assert balanced_accuracy(scores, labels, 0.375) == pytest.approx(0.5 * (2 / 3 + 1 / 2))
    t = best_threshold(scores, labels)
    assert balanced_accuracy(scores, labels, t) == pytest.approx(0.5 * (2 / 3 + 1))  # 0.6 -> [F,F,F,T,T]... or 0.325
    assert math.isnan(balanced_accuracy([1, 2], [True, True], 1.5))
    # tau-b by hand: x = 1,2,3,4; y = 1,3,2,4 -> 5 concordant, 1 discordant -> 4/6
    assert kendall([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert math.isnan(kendall([1, 1, 1], [1, 2, 3]))
    # summary level: mean of per-document taus
    s = [1, 2, 3, 4, 1, 2, 3]
    h = [1, 3, 2, 4, 3, 2, 1]
    d = ["a"] * 4 + ["b"] * 3
    assert summary_level_tau(s, h, d) == pytest.approx((4 / 6 + -1.0) / 2)
    # a reward constant on one document counts 0 there, not skipped
    assert summary_level_tau([1, 2, 3, 4, 5, 5, 5], h, d) == pytest.approx((4 / 6 + 0.0) / 2)


def test_cluster_bootstrap_is_seeded_and_brackets_the_estimate():
    from sumrl.rewards.validation import agreement_ci

    outcomes = [1, 1, 0, 1, 0.5, 1, 0, 1, 1, 1] * 5
    docs = [i // 3 for i in range(50)]
    lo, hi = agreement_ci(outcomes, docs, n=500, seed=0)
    assert (lo, hi) == agreement_ci(outcomes, docs, n=500, seed=0)
    mean = sum(outcomes) / len(outcomes)
    assert lo < mean < hi and 0 <= lo and hi <= 1


@needs_shared
def test_human_items_use_the_pairs_split_rule():
    from sumrl.data.splits import hash_split

    fr = J.frank_items(SHARED)
    se = J.summeval_items(SHARED)
    assert len(fr) == 2246 and len(se) == 1600
    for it in fr[:50] + se[:50]:
        assert it.split == hash_split(it.doc_id, 0, 0.2, 0.0)
    # no document in two splits
    by = {}
    for it in fr + se:
        by.setdefault(it.doc_id, set()).add(it.split)
    assert all(len(v) == 1 for v in by.values())


# --------------------------------------------------------------------------- reproducible training


@needs_shared
def test_coherence_training_is_reproducible(tmp_path):
    from safetensors.torch import load_file

    from sumrl.rewards.coherence_model import CoherenceJudge, CoherenceTrainConfig, train_coherence

    outs = []
    for k in range(2):
        cfg = CoherenceTrainConfig(out=str(tmp_path / f"c{k}"), shared_dir=str(SHARED), extra_data="", steps=20,
                                   batch_size=16, doc_limit=12, seed=3)
        m = train_coherence(cfg)
        outs.append(load_file(str(tmp_path / f"c{k}" / "model.safetensors")))
        assert 0 <= m["synthetic_heldout_accuracy"] <= 1
    assert outs[0].keys() == outs[1].keys()
    assert all(torch.equal(outs[0][key], outs[1][key]) for key in outs[0])
    judge = CoherenceJudge(str(tmp_path / "c0"))
    vals = judge.expert_scale(["One sentence. Another one follows it.", ""])
    assert len(vals) == 2 and vals[1] == 1.0


@needs_shared
def test_factuality_training_is_reproducible(tmp_path):
    from safetensors.torch import load_file

    from sumrl.rewards.factuality import FactualityTrainConfig, train_factuality

    outs = []
    for k in range(2):
        cfg = FactualityTrainConfig(out=str(tmp_path / f"f{k}"), shared_dir=str(SHARED), extra_data="", steps=2,
                                    batch_size=4, train_layers=1, calib_limit=8, doc_limit=10, seed=5)
        train_factuality(cfg)
        outs.append(load_file(str(tmp_path / f"f{k}" / "model.safetensors")))
    assert all(torch.equal(outs[0][key], outs[1][key]) for key in outs[0])


def test_agreement_table_ci_and_dimension_groups():
    from sumrl.rewards.agreement import agreement_table, format_table
    from sumrl.rewards.registry import build_reward

    doc = "Alpha beta gamma delta epsilon zeta eta theta iota kappa."
    rows = []
    for i in range(6):
        dim = "coherence" if i % 2 else "consistency"
        # chosen = the longer one for even rows, the shorter one for odd rows
        long_, short = "Alpha beta gamma delta epsilon zeta eta.", "Alpha."
        chosen, rejected = (long_, short) if i % 2 == 0 else (short, long_)
        rows.append({"id": f"summeval:d{i // 2}", "document": doc, "query": None, "chosen": chosen,
                     "rejected": rejected, "source": "summeval", "meta": {"dimension": dim}})
    rw = [("len", build_reward([{"name": "length", "mode": "ratio", "compression": 1.5}]))]
    table = agreement_table(rows, rw, n_bootstrap=200, seed=0)
    by = {t["source"]: t for t in table}
    assert set(by) == {"summeval/coherence", "summeval/consistency"}
    assert by["summeval/consistency"]["accuracy"] == 1.0 and by["summeval/coherence"]["accuracy"] == 0.0
    assert by["summeval/consistency"]["ci"] == [1.0, 1.0]
    assert "[1.000, 1.000]" in format_table(table)


def test_sentence_spans_long_lines_are_linear_and_unchanged():
    from sumrl.evaluation.text import sentence_spans

    # an abbreviation right after a 300-character token, and a dotted abbreviation far into a long line
    long_word = "x" * 300
    text = f"{long_word} Dr. Smith came. " + "Filler words here. " * 2000 + "See e.g. Paris. U.S. Army left. J. Doe won."
    spans = sentence_spans(text)
    sents = [text[s:e] for s, e in spans]
    assert sents[0] == f"{long_word} Dr. Smith came."
    assert sents[-3:] == ["See e.g. Paris.", "U.S. Army left.", "J. Doe won."]
    assert len(sents) == 2004
    # a token longer than the 256-character look-back window still decides the boundary from the whole word
    tricky = "a" * 10 + " " + "B" * 300 + "e.g. Next one."
    assert [tricky[s:e] for s, e in sentence_spans(tricky)] == ["a" * 10 + " " + "B" * 300 + "e.g.", "Next one."]


def test_eval_judges_metrics_with_shipped_weights(tmp_path, capsys):
    import json

    from sumrl.cli import main

    doc = DOC
    rows = [{"id": "a", "document": doc, "references": ["Alice Smith leads the research team."],
             "prediction": "Alice Smith leads the research team in Paris. The company reported revenue in 2019."},
            {"id": "b", "document": doc, "references": ["Alice Smith leads the research team."],
             "prediction": "Bob Jones invented a quantum toaster in Berlin. Bob Jones invented a quantum toaster in Berlin."}]
    p = tmp_path / "preds.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    assert main(["eval", "--predictions", str(p), "--judges", "--no-semantic", "--n-bootstrap", "20",
                 "--out", str(out)]) == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    m0, m1 = preds[0]["metrics"], preds[1]["metrics"]
    assert m0["factual_support"] > m1["factual_support"]  # the shipped judge on an easy case
    assert m1["unsupported_sent_rate"] == 1.0 and m0["unsupported_sent_rate"] == 0.0
    assert m0["coherence_score"] > m1["coherence_score"]  # a repeated sentence is incoherent
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert {"factual_support", "unsupported_sent_rate", "coherence_score"} <= set(metrics)
    assert main(["eval", "--predictions", str(p), "--knowledge", str(tmp_path), "--out", str(out)]) == 2
    assert "--knowledge needs --judges" in capsys.readouterr().err
