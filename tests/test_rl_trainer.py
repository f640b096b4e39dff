"""`sumrl rl` end to end on tiny random models: every algorithm runs 1-2 steps through the CLI and
writes a loadable output folder; the reference policy equals the starting policy (also from an SFT
adapter); resume continues the exact trajectory; divergence stops with one line and keeps the last
good checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from sumrl.cli import main

CHEAP = "length,eos,repetition"  # metric rewards that need no extra model


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory):
    from conftest import CORPUS

    p = tmp_path_factory.mktemp("rl-data") / "docs.jsonl"
    rows = [{"id": f"d{i}", "document": " ".join(CORPUS[i:i + 3]), "summary": CORPUS[i].split(".")[0] + ".",
             "split": "train" if i < 6 else "val"} for i in range(8)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _args(policy, data, out, *extra):
    return ["rl", "--policy", str(policy), "--data", str(data), "--out", str(out), "--reward", CHEAP,
            "--batch-size", "2", "--max-new-tokens", "6", "--max-prompt-tokens", "96", "--no-progress",
            "--no-tensorboard", "--steps", "1", "--eval-every", "0", "--no-bf16", *extra]


def _metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _loads(out):
    from sumrl.models.loading import load_model

    model, tok = load_model(str(out))
    assert tok.pad_token_id != tok.eos_token_id
    return model


@pytest.mark.parametrize("algo, extra", [
    ("ppo", ["--steps", "2", "--sample-every", "1", "--ppo-epochs", "2", "--mini-batch-size", "1",
             "--micro-batch-size", "1"]),
    ("grpo", ["--samples-per-prompt", "2"]),
    ("rloo", ["--samples-per-prompt", "2", "--entropy-coef", "0.01"]),
])
def test_unguided_algorithms_run_and_save(algo, extra, tiny_model_dir, rl_data, tmp_path, capsys):
    out = tmp_path / algo
    assert main(_args(tiny_model_dir, rl_data, out, "--algo", algo, *extra)) == 0
    rows = _metrics(out)
    steps = 2 if algo == "ppo" else 1
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for key in ("objective/reward", "objective/kl", "objective/entropy", "policy/clipfrac", "policy/approx_kl",
                "rewards/length", "rewards/eos", "completions/mean_length", "completions/no_eos_rate",
                "time/generate", "time/score", "time/train"):
        assert key in rows[-1], key
    assert ("value/loss" in rows[-1]) == (algo == "ppo")
    if algo == "ppo":
        # 2 epochs x 2 mini-batches of 1 sequence = 4 optimizer steps per outer step
        assert rows[-1]["train/optimizer_steps"] == 4
        samples = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
        assert {"document", "summary", "reward", "components"} <= set(samples[0])
    assert "rl done" in capsys.readouterr().out
    _loads(out)


@pytest.mark.parametrize("algo, extra", [
    ("ppo++", ["--guide-rollin-prob", "1.0"]),
    ("aggrevated", []),
    ("d2lols", ["--steps", "2", "--d2lols-tau", "1"]),
])
def test_guided_algorithms_run_with_a_guide_of_another_prompt_format(algo, extra, tiny_model_dir,
                                                                     tiny_base_model_dir, rl_data, tmp_path):
    out = tmp_path / algo.replace("+", "p")
    # the guide has no chat template (plain-text prompt) and other weights: only text is exchanged
    assert main(_args(tiny_model_dir, rl_data, out, "--algo", algo, "--guide", str(tiny_base_model_dir),
                      "--max-new-tokens", "8", *extra)) == 0
    rows = _metrics(out)
    # the random models almost never end a summary early, so the switch point always exists
    if algo == "ppo++":
        assert rows[-1]["guide/rollin_fraction"] == 1.0 and rows[-1]["guide/rollout_fraction"] == 0.0
    elif algo == "aggrevated":
        assert rows[-1]["guide/rollin_fraction"] == 0.0 and rows[-1]["guide/rollout_fraction"] == 1.0
        assert "value/loss" in rows[-1]  # the critic learns on the guide's tokens
    else:  # TRIL's D2LOLS: AggreVaTeD with the guide critic before tau, then PPO++ -- the whole batch switches
        assert [r["guide/critic"] for r in rows] == [1.0, 0.0]
        assert rows[0]["guide/rollout_fraction"] == 1.0 and rows[0]["guide/rollin_fraction"] == 0.0
        assert rows[1]["guide/rollout_fraction"] == 0.0 and rows[1]["guide/rollin_fraction"] > 0.5
    assert "time/generate_guide" in rows[-1]
    _loads(out)


def test_reference_trajectories(tiny_model_dir, rl_data, tmp_path):
    out = tmp_path / "ref"
    # the references (~21 tokens) do not fit the tests' 6-token cap: derive the cap from the data
    assert main(_args(tiny_model_dir, rl_data, out, "--reference-trajectory-ratio", "1.0",
                      "--summary-cap-quantile", "1.0")) == 0
    row = _metrics(out)[-1]
    assert row["completions/reference_fraction"] == 1.0 and row["completions/no_eos_rate"] == 0.0
    # old log-probs are the current policy's: the first PPO update starts at ratio 1
    assert row["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    out2 = tmp_path / "ref-grpo"
    assert main(_args(tiny_model_dir, rl_data, out2, "--algo", "grpo", "--samples-per-prompt", "2",
                      "--reference-trajectory-ratio", "1.0", "--summary-cap-quantile", "1.0")) == 0
    assert _metrics(out2)[-1]["completions/reference_fraction"] == 0.5  # one reference per group


def test_value_adapter_and_full_fine_tuning(tiny_model_dir, rl_data, tmp_path):
    out = tmp_path / "vadapter"
    assert main(_args(tiny_model_dir, rl_data, out, "--value-model", "adapter")) == 0
    assert "value/loss" in _metrics(out)[-1]
    _loads(out)
    full = tmp_path / "full"
    assert main(_args(tiny_model_dir, rl_data, full, "--no-lora", "--lr", "1e-5")) == 0
    assert (full / "config.json").exists() and not (full / "adapter_config.json").exists()
    _loads(full)


def test_eval_loads_the_rl_output(tiny_model_dir, rl_data, tmp_path):
    out = tmp_path / "rl"
    assert main(_args(tiny_model_dir, rl_data, out)) == 0
    ev = tmp_path / "eval"
    assert main(["eval", "--model", str(out), "--data", str(rl_data), "--split", "all", "--limit", "2",
                 "--out", str(ev), "--max-new-tokens", "6", "--n-bootstrap", "20", "--no-semantic"]) == 0
    assert json.loads((ev / "metrics.json").read_text())["n"] == 2


# ------------------------------------------------------------------------- reference = start
def _sft_adapter(tiny_model_dir, out):
    from sumrl.models.loading import load_model, save_model
    from sumrl.models.lora import add_lora

    model, tok = load_model(str(tiny_model_dir))
    model = add_lora(model, r=4, alpha=8)
    torch.manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)  # a non-trivial "SFT" adapter
    save_model(model, tok, out, base_spec=str(tiny_model_dir))
    return out


def _cfg(policy, data, out, **kw):
    from sumrl.config import build_config
    from sumrl.rl.config import RLConfig

    base = dict(policy=str(policy), data=str(data), out=str(out), reward=CHEAP, batch_size=2, max_new_tokens=6,
                max_prompt_tokens=96, progress=False, tensorboard=False, bf16=False)
    return build_config(RLConfig, None, {**base, **kw})


def test_reference_logprobs_equal_the_starting_policy_from_an_sft_adapter(tiny_model_dir, rl_data, tmp_path):
    from sumrl.models.loading import load_model
    from sumrl.models.logprobs import model_token_logprobs, next_token_targets
    from sumrl.rl.trainer import RLTrainer

    sft = _sft_adapter(tiny_model_dir, tmp_path / "sft")
    tr = RLTrainer(_cfg(sft, rl_data, tmp_path / "o"))
    q = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    qm = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    r = torch.tensor([[20, 21, 22], [23, 24, 0]])
    rm = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        with tr.reference() as ref:
            ref_lp = ref(q, qm, r, rm)["logprobs"]
        pol_lp = tr.raw(q, qm, r, rm)["logprobs"]
        sft_model, _ = load_model(str(sft))
        ids, mask = torch.cat([q, r], 1), torch.cat([qm, rm], 1)
        resp = torch.cat([torch.zeros_like(qm), rm], 1)
        expect = model_token_logprobs(sft_model, ids, mask, next_token_targets(ids, resp))[:, 5:8]
        base_model, _ = load_model(str(tiny_model_dir))
        bare = model_token_logprobs(base_model, ids, mask, next_token_targets(ids, resp))[:, 5:8]
    valid = rm.bool()
    assert torch.allclose(ref_lp[valid], expect[valid], atol=1e-4)  # reference = SFT policy, not the bare base
    assert torch.allclose(pol_lp[valid], expect[valid], atol=1e-4)  # fresh RL LoRA starts at the SFT policy
    assert not torch.allclose(bare[valid], expect[valid], atol=1e-2)  # (the adapter does change the model)


def test_rl_from_an_sft_adapter_saves_an_adapter_stacked_on_it(tiny_model_dir, rl_data, tmp_path):
    """The RL run from an SFT adapter publishes only its own adapter (base = "../sft", relative), and
    ``--model OUT`` -- even after both folders are moved -- is the policy the run trained: the same
    log-probs as a trainer rebuilt from the run's last checkpoint."""
    import shutil

    from sumrl.models.logprobs import model_token_logprobs, next_token_targets
    from sumrl.rl.trainer import RLTrainer
    from sumrl.training.checkpoint import last_checkpoint, load_checkpoint

    sft = _sft_adapter(tiny_model_dir, tmp_path / "runs" / "sft")
    out = tmp_path / "runs" / "rl"
    assert main(_args(sft, rl_data, out, "--lr", "0.05", "--steps", "2")) == 0
    assert _metrics(out)[0]["objective/kl"] == 0.0  # step 1: policy == reference exactly
    meta = json.loads((out / "sumrl_model.json").read_text())
    assert meta["base"] == "../sft" and meta["stacked_on"] == str(sft) and meta["lora"] is True
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()

    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "runs", moved)
    loaded = _loads(moved / "rl")
    tr = RLTrainer(_cfg(sft, rl_data, tmp_path / "o"))
    load_checkpoint(last_checkpoint(out / "checkpoints"), model=tr.raw, restore_rng=False)
    q = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    qm = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    r = torch.tensor([[20, 21, 22], [23, 24, 0]])
    rm = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ids, mask = torch.cat([q, r], 1), torch.cat([qm, rm], 1)
    with torch.no_grad():
        trained = tr.raw(q, qm, r, rm)["logprobs"]
        got = model_token_logprobs(loaded, ids, mask, next_token_targets(ids, torch.cat([torch.zeros_like(qm), rm], 1)))
        sft_only = model_token_logprobs(_loads(sft), ids, mask,
                                        next_token_targets(ids, torch.cat([torch.zeros_like(qm), rm], 1)))
    valid = rm.bool()
    assert torch.allclose(got[:, 5:8][valid], trained[valid], atol=1e-4)
    assert not torch.allclose(sft_only[:, 5:8][valid], trained[valid], atol=1e-4)  # RL did change the policy


# ----------------------------------------------------------------------- resume / divergence
class _Kill(Exception):
    pass


def test_resume_continues_the_same_trajectory(tiny_model_dir, rl_data, tmp_path):
    from sumrl.rl.trainer import train

    kw = dict(steps=3, save_every=1, temperature=1.0)
    train(_cfg(tiny_model_dir, rl_data, tmp_path / "full", **kw))

    def kill_at_2(step, _m):
        if step == 2:  # step 2 logged; its checkpoint waits for step 3's KL check -> resume from step 1
            raise _Kill

    out = tmp_path / "killed"
    with pytest.raises(_Kill):
        train(_cfg(tiny_model_dir, rl_data, out, **kw), callbacks=[kill_at_2])
    summary = train(_cfg(tiny_model_dir, rl_data, out, resume=True, **kw))
    assert summary["start_step"] == 1
    a, b = _metrics(out), _metrics(tmp_path / "full")
    # step 0: the held-out evaluation before training (on by default); step 2 not logged twice
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a[1:], b[1:]):
        for k in ("objective/reward", "objective/kl", "policy/loss", "value/loss", "completions/mean_length"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (ra["step"], k)
    assert a[-1]["eval/reward"] == pytest.approx(b[-1]["eval/reward"], rel=1e-5, abs=1e-6)
    from sumrl.errors import ConfigError

    with pytest.raises(ConfigError, match="lr"):
        train(_cfg(tiny_model_dir, rl_data, out, resume=True, **{**kw, "lr": 0.5}))


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny_model_dir, rl_data, tmp_path,
                                                                         monkeypatch, capsys):
    from sumrl.rl import functional

    real = functional.ppo_policy_loss
    calls = {"n": 0}

    def poisoned(*a, **kw):
        calls["n"] += 1
        loss, st = real(*a, **kw)
        return (loss * float("nan") if calls["n"] >= 2 else loss), st

    monkeypatch.setattr(functional, "ppo_policy_loss", poisoned)
    out = tmp_path / "nan"
    assert main(_args(tiny_model_dir, rl_data, out, "--steps", "3", "--save-every", "1")) == 2
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "diverged at step 2" in errors[0] and "step-00000001" in errors[0]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000001"]
    assert not (out / "adapter_config.json").exists()  # no model published from a diverged run


def test_kl_explosion_stops_the_run(tiny_model_dir, rl_data, tmp_path, capsys):
    out = tmp_path / "kl"
    # k3 (>= 0 per token) as the measured KL: a k1 sample mean can be negative after a change
    assert main(_args(tiny_model_dir, rl_data, out, "--steps", "3", "--lr", "0.05", "--max-kl", "1e-6",
                      "--kl-coef", "0", "--kl-estimator", "k3")) == 2
    err = capsys.readouterr().err
    assert "exceeds --max-kl" in err and "no checkpoint" in err
    assert [r["step"] for r in _metrics(out)] == [1]  # step 1 (KL exactly 0) ran; step 2 stopped before updating


def test_held_out_evaluation_curve_without_touching_the_samples(tiny_model_dir, rl_data, tmp_path):
    """--eval-every logs eval/* on the fixed val documents before training, every N steps and after
    the last step; greedy evaluation draws no random numbers, so training is unchanged by it."""
    # PPO: the critic's baseline makes advantages non-zero even where the cheap rewards tie
    common = ["--algo", "ppo", "--steps", "3", "--lr", "5e-2", "--temperature", "1.0", "--sample-every", "5"]
    a, b = tmp_path / "eval", tmp_path / "noeval"
    assert main(_args(tiny_model_dir, rl_data, a, *common, "--eval-every", "2", "--val-examples", "2",
                      "--val-batch-size", "1")) == 0
    assert main(_args(tiny_model_dir, rl_data, b, *common)) == 0
    ra, rb = _metrics(a), _metrics(b)
    evals = {r["step"]: r for r in ra if "eval/reward" in r}
    assert sorted(evals) == [0, 2, 3]
    for r in evals.values():
        for key in ("eval/reward", "eval/rewards/length", "eval/rewards/eos", "eval/mean_length", "eval/no_eos_rate", "time/eval"):
            assert key in r, key
        assert 1 <= r["eval/mean_length"] <= 6 and 0 <= r["eval/no_eos_rate"] <= 1
    # the same training trajectory with and without evaluation
    train_a = [r for r in ra if r["step"] > 0]
    assert [r["step"] for r in train_a] == [r["step"] for r in rb] == [1, 2, 3]
    for x, y in zip(train_a, rb):
        assert x["objective/reward"] == y["objective/reward"]
        assert x["completions/mean_length"] == y["completions/mean_length"]
    # the held-out summaries are in samples.jsonl; the policy moved (lr 5e-2), so its greedy
    # summaries of the same documents changed
    rows = [json.loads(l) for l in (a / "samples.jsonl").read_text().splitlines()]
    held = {(r["step"], r["id"]): r["summary"] for r in rows if r["source"] == "eval (greedy)"}
    assert sorted({s for s, _ in held}) == [0, 2, 3] and len(held) == 6
    assert ra[-1]["objective/kl"] != 0  # k1 per-sample estimate: either sign
    assert any(held[(0, i)] != held[(3, i)] for _, i in held)


def test_empty_val_split_trains_with_a_one_line_notice(tiny_model_dir, rl_data, tmp_path, capsys):
    code = main(_args(tiny_model_dir, rl_data, tmp_path / "x", "--eval-every", "5", "--val-split", "test"))
    assert code == 0
    err = capsys.readouterr().err
    assert "split 'test'" in err and "held-out evaluation (--eval-every) is skipped" in err
    assert not any("eval/reward" in r for r in _metrics(tmp_path / "x"))


# ------------------------------------------------------------------------- exactness details
def test_sampling_ignores_a_checkpoints_generation_config(tiny_tokenizer):
    """A checkpoint's generation_config (repetition_penalty, top_k, ...) must not reshape the
    distribution the trainer samples from: greedy decoding equals a hand-written argmax loop."""
    from conftest import build_tiny_model
    from sumrl.generation.engine import sample

    model = build_tiny_model(tiny_tokenizer, seed=3)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.no_repeat_ngram_size = 1
    prompt = [5, 6, 7, 8]
    got = sample(model, [prompt], max_new_tokens=12, temperature=0.0, top_p=1.0, stop_ids=[-1], pad_id=0)[0]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert got == ids[len(prompt):]
    assert len(set(got)) < len(got)  # the argmax repeats tokens: the penalties really would have changed it


def test_disable_dropout_reaches_the_attention_modules(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from sumrl.models.lora import disable_dropout

    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5)
    model = LlamaForCausalLM(cfg)
    attn = [m for m in model.modules() if hasattr(m, "attention_dropout")]
    assert attn and all(m.attention_dropout == 0.5 for m in attn)  # copied from the config when built
    model.train()
    x = torch.tensor([[5, 6, 7, 8, 9, 10]])
    torch.manual_seed(0)
    a = model(x).logits
    b = model(x).logits
    assert not torch.allclose(a, b)  # attention dropout is active in train mode
    disable_dropout(model)
    assert all(m.attention_dropout == 0.0 for m in attn) and model.config.attention_dropout == 0.0
    assert torch.equal(model(x).logits, model(x).logits)


def test_skipping_the_old_logprob_pass_changes_nothing(tiny_model_dir, rl_data, tmp_path, monkeypatch):
    """GRPO with one epoch of one mini-batch: the update's own forward gives the "old" log-probs
    (ratio 1); the run is identical to the one with the separate no-grad pass."""
    from safetensors.torch import load_file

    from sumrl.rl.trainer import RLTrainer, train

    def run(out, defer):
        if not defer:
            monkeypatch.setattr(RLTrainer, "can_defer_policy_pass", lambda self: False)
        cfg = _cfg(tiny_model_dir, rl_data, out, algo="grpo", samples_per_prompt=2, steps=2, lr=0.01, eval_every=0,
                   kl_coef=0.1, reward="relevance")  # a reward that differs between random samples
        assert RLTrainer.can_defer_policy_pass(type("T", (), {"cfg": cfg})()) == defer
        res = train(cfg)
        monkeypatch.undo()
        return res["last"], load_file(str(out / "adapter_model.safetensors"))

    m1, w1 = run(tmp_path / "deferred", True)
    m2, w2 = run(tmp_path / "separate", False)
    assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    assert any(float(w1[k].abs().max()) > 0 for k in w1 if "lora_B" in k)  # the policy did move
    for k in ("objective/kl", "objective/entropy", "policy/loss", "policy/kl_loss"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-4, abs=1e-6), k


def test_target_regularisation_is_the_reference_nll(tiny_model_dir, rl_data, tmp_path):
    """TRIL's target loss (ppo.py: -sum(target log-probs * target_masks) / n_target): the token-mean
    NLL of the rows' reference summaries (+ end token) under the policy."""
    from sumrl.data import load_data
    from sumrl.models.logprobs import model_token_logprobs, next_token_targets
    from sumrl.rl.trainer import RLTrainer

    tr = RLTrainer(_cfg(tiny_model_dir, rl_data, tmp_path / "o", max_new_tokens=40, target_coef=0.1))
    exs = load_data(str(rl_data), "train")
    rows = [0, 2, 2]
    n = tr._target_tokens(rows, exs)
    with torch.no_grad():
        got = float(tr._target_loss(rows, exs, n))
        total, count = 0.0, 0
        for i in rows:
            p = tr.prompt_ids(i, exs[i])
            ref = tr.tok(exs[i].reference.strip(), add_special_tokens=False)["input_ids"] + [tr.eos_id]
            ids = torch.tensor([p + ref])
            resp = torch.tensor([[0] * len(p) + [1] * len(ref)])
            lp = model_token_logprobs(tr.raw.model, ids, torch.ones_like(ids), next_token_targets(ids, resp))
            total -= float(lp.sum())
            count += len(ref)
    assert n == count and got == pytest.approx(total / count, rel=1e-4)


def test_reference_steps_neither_stop_the_run_nor_confirm_a_checkpoint(tiny_model_dir, rl_data, tmp_path, capsys):
    out = tmp_path / "refkl"
    # step 1 sampled (KL 0), step 2 a reference batch (its log-ratio is not checked), step 3 sampled: stops
    assert main(_args(tiny_model_dir, rl_data, out, "--steps", "3", "--lr", "0.05", "--max-kl", "1e-6",
                      "--kl-coef", "0", "--kl-estimator", "k3", "--reference-trajectory-ratio", "0.5",
                      "--summary-cap-quantile", "1.0", "--save-every", "1")) == 2
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert "objective/kl" in rows[0] and "objective/kl" not in rows[1] and "reference/logratio" in rows[1]
    assert rows[1]["completions/reference_fraction"] == 1.0 and rows[0]["completions/reference_fraction"] == 0.0
    err = capsys.readouterr().err
    # step 1's checkpoint was confirmed by... nothing sampled after it but step 3, which failed: none kept
    assert "diverged at step 3" in err and "no checkpoint was written yet" in err


def test_shared_prompt_forward_equals_the_plain_one_in_the_policy_value_module(tiny_model_dir):
    """The trainer's module with share_prompt computes each group's prompt once: log-probs, entropy,
    values (head and value adapter) and every trainable gradient equal the plain pass."""
    from sumrl.models.loading import load_model
    from sumrl.models.lora import add_lora
    from sumrl.rl.value import VALUE_ADAPTER, PolicyValueModule, ValueHead

    model, _ = load_model(str(tiny_model_dir))
    model = add_lora(model, r=4, alpha=8)
    model.add_adapter(VALUE_ADAPTER, model.peft_config["default"])
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
            with torch.no_grad():
                p.normal_(std=0.05)
    head = ValueHead(64)
    # two groups of 3 and 2 completions; the first prompt left-padded
    q = torch.tensor([[0, 0, 5, 6, 7]] * 3 + [[9, 10, 11, 12, 13]] * 2)
    qm = torch.tensor([[0, 0, 1, 1, 1]] * 3 + [[1, 1, 1, 1, 1]] * 2)
    r = torch.tensor([[20, 21, 22, 23], [24, 25, 0, 0], [26, 27, 28, 0], [29, 30, 31, 32], [33, 0, 0, 0]])
    rm = (r != 0).long()
    outs, grads = [], []
    for share in (False, True):
        for adapter in (False, True):
            m = PolicyValueModule(model, head, value_adapter=adapter, share_prompt=share)
            o = m(q, qm, r, rm, temperature=0.7, with_values=True, with_entropy=True)
            loss = (o["logprobs"] * rm).sum() + (o["values"] * rm).sum()
            model.zero_grad(set_to_none=True)
            head.zero_grad(set_to_none=True)
            loss.backward()
            outs.append({k: v.detach() for k, v in o.items()})
            grads.append({n: p.grad.clone() for n, p in [*model.named_parameters(), *head.named_parameters()]
                          if p.grad is not None})
    for plain, shared, g0, g1 in ((outs[0], outs[2], grads[0], grads[2]), (outs[1], outs[3], grads[1], grads[3])):
        m = rm.bool()
        for k in ("logprobs", "entropy", "values"):
            assert torch.allclose(plain[k][m], shared[k][m], atol=1e-5), k
        assert g0.keys() == g1.keys() and len(g0) > 0
        for n in g0:
            assert torch.allclose(g0[n], g1[n], atol=1e-5), n


@pytest.mark.parametrize("value_rank", [4, 2])
def test_value_adapter_under_activation_checkpointing_equals_no_checkpointing(tiny_model_dir, value_rank):
    """Backward replays each checkpointed layer after both passes, when the policy adapter is active
    again: the critic's layers must replay under the value adapter. Found by the RL-vs-SFT experiment
    (an RM-initialised rank-8 critic adapter under a rank-16 policy: "Recomputed values ... different
    metadata"); with equal ranks the same fault trains silently wrong. Outputs and every gradient with
    checkpointing equal the pass without it."""
    import dataclasses

    from sumrl.models.loading import load_model
    from sumrl.models.lora import add_lora
    from sumrl.rl.value import VALUE_ADAPTER, PolicyValueModule, ValueHead

    model, _ = load_model(str(tiny_model_dir))
    model = add_lora(model, r=4, alpha=8)
    model.add_adapter(VALUE_ADAPTER, dataclasses.replace(model.peft_config["default"], r=value_rank,
                                                         lora_alpha=2 * value_rank))
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
            with torch.no_grad():
                p.normal_(std=0.05)
    head = ValueHead(64)
    model.train()  # checkpointing acts in training mode only (the tiny model has no dropout)
    q = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]])
    qm = (q != 0).long()
    r = torch.tensor([[20, 21, 22, 23], [24, 25, 26, 0]])
    rm = (r != 0).long()
    outs, grads = [], []
    for ckpt in (False, True):
        m = PolicyValueModule(model, head, value_adapter=True, checkpointing=ckpt)
        o = m(q, qm, r, rm, with_values=True)
        loss = (o["logprobs"] * rm).sum() + (o["values"] * rm).sum()
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        loss.backward()
        outs.append({k: v.detach() for k, v in o.items()})
        grads.append({n: p.grad.clone() for n, p in [*model.named_parameters(), *head.named_parameters()]
                      if p.grad is not None})
    assert model.active_adapter == "default"
    for k in ("logprobs", "values"):
        assert torch.allclose(outs[0][k], outs[1][k], atol=1e-6), k
    assert grads[0].keys() == grads[1].keys()
    assert any(f".{VALUE_ADAPTER}." in n for n in grads[0]) and any(".default." in n for n in grads[0])
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n


def test_policy_and_critic_gradients_are_clipped_separately(tiny_model_dir, rl_data, tmp_path):
    from sumrl.rl.trainer import RLTrainer, critic_split
    from sumrl.training.optim import trainable

    tr = RLTrainer(_cfg(tiny_model_dir, rl_data, tmp_path / "o", value_model="adapter"))
    split = critic_split(trainable(tr.raw))
    names = {id(p): n for n, p in tr.raw.named_parameters()}
    critic = [names[id(p)] for p in split["critic"]]
    policy = [names[id(p)] for p in split["policy"]]
    assert any(n.startswith("value_head.") for n in critic) and all(".default." in n for n in policy if "lora_" in n)
    assert any(".value." in n for n in critic) and len(policy) > 0
    assert len(critic) + len(policy) == len(trainable(tr.raw))
    out = tmp_path / "run"
    assert main(_args(tiny_model_dir, rl_data, out, "--value-model", "adapter", "--max-grad-norm", "0.5")) == 0
    row = _metrics(out)[-1]
    assert "train/grad_norm" in row and "value/grad_norm" in row  # each measured (before clipping) on its own


def test_ppo_value_head_micro_batches_without_checkpointing_change_nothing(tiny_model_dir, rl_data, tmp_path):
    """`sumrl demo`'s PPO: 4 rows per step in micro-batches of 2 without activation checkpointing
    train the same policy and shared-trunk value head as one checkpointed pass of 4 (its old path)."""
    from safetensors.torch import load_file

    from sumrl.rl.trainer import train

    def run(name, **kw):
        cfg = _cfg(tiny_model_dir, rl_data, tmp_path / name, algo="ppo", batch_size=4, steps=2, lr=0.01,
                   eval_every=0, value_model="head", reference_kl=True, sample_every=1, **kw)
        last = train(cfg)["last"]
        return last, load_file(str(tmp_path / name / "adapter_model.safetensors"))

    m1, w1 = run("one-pass", micro_batch_size=4, gradient_checkpointing=True)
    m2, w2 = run("micro", micro_batch_size=2, gradient_checkpointing="auto")
    assert any(float(w1[k].abs().max()) > 0 for k in w1 if "lora_B" in k)
    for k in ("policy/loss", "value/loss", "train/grad_norm", "value/grad_norm", "objective/kl", "value/mean"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-7), k
    assert w2.keys() == w1.keys() and all(torch.allclose(w2[k], w1[k], atol=1e-5) for k in w1)


def test_token_budget_micro_batches_and_checkpointing_change_nothing(tiny_model_dir, rl_data, tmp_path):
    """Micro-batches cut by --micro-batch-tokens (each group alone) and activation checkpointing
    (on for every pass, or chosen by size) train the same weights as one pass without either."""
    from safetensors.torch import load_file

    from sumrl.rl.trainer import RLTrainer, train

    seen: list[list[list[int]]] = []
    orig = RLTrainer.micro_batches

    def record(self, batch):
        out = orig(self, batch)
        seen.append(out)
        return out

    def run(name, **kw):
        cfg = _cfg(tiny_model_dir, rl_data, tmp_path / name, algo="grpo", samples_per_prompt=2, steps=2, lr=0.01,
                   eval_every=0, kl_coef=0.1, reward="relevance", micro_batch_size=4, **kw)
        seen.clear()
        RLTrainer.micro_batches = record
        try:
            last = train(cfg)["last"]
        finally:
            RLTrainer.micro_batches = orig
        return ([list(map(len, s)) for s in seen], last,
                load_file(str(tmp_path / name / "adapter_model.safetensors")))

    s1, m1, w1 = run("one-pass", micro_batch_tokens=None, gradient_checkpointing=False)
    s2, m2, w2 = run("budget", micro_batch_tokens=1, gradient_checkpointing=True)
    s3, m3, w3 = run("auto", micro_batch_tokens=None, gradient_checkpointing="auto", checkpoint_tokens=1)
    assert all(s == [4] for s in s1) and all(s == [2, 2] for s in s2) and s3 == s1  # groups of 2 kept whole
    assert any(float(w1[k].abs().max()) > 0 for k in w1 if "lora_B" in k)
    for (m, w) in ((m2, w2), (m3, w3)):
        for k in ("policy/loss", "train/grad_norm", "objective/kl"):
            assert m[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-7), k
        # 1e-5, not exact: Adam divides each gradient by its own magnitude, so reassociation noise
        # in near-zero gradient entries reaches the weights as up to ~4e-6 after two steps at lr 0.01
        assert w.keys() == w1.keys() and all(torch.allclose(w[k], w1[k], atol=1e-5) for k in w1)


def test_summary_line_is_pure():
    from sumrl.rl.trainer import summary_line

    s = {"steps": 4, "start_step": 0, "first": {"objective/reward": 0.1}, "last": {"objective/reward": 0.25,
                                                                              "objective/kl": 0.01}}
    assert summary_line(s) == "rl done: steps 4, objective/reward 0.1 -> 0.25, objective/kl 0.01"
    assert summary_line({**s, "start_step": 2}) == "rl done: steps 4, objective/reward 0.25, objective/kl 0.01"
