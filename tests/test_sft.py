"""`sumrl sft`: prompts/targets, exact gradient accumulation, resume, outputs usable by eval."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import CORPUS  # noqa: E402
from sumrl.config import build_config, load_recipe  # noqa: E402
from sumrl.data.schema import Example  # noqa: E402
from sumrl.training.config import SFTConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    """24 rows with explicit splits (16 train / 4 val / 4 test); summaries are document prefixes."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("sftdata") / "data.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(24):
            doc = " ".join(rng.choice(CORPUS) for _ in range(rng.randint(2, 10)))
            summ = " ".join(doc.split()[: rng.randint(4, 12)])
            split = "train" if i < 16 else "val" if i < 20 else "test"
            f.write(json.dumps({"id": f"d{i}", "document": doc, "summary": summ, "split": split}) + "\n")
    return path


def _cfg(model_dir, data, out, **kw) -> SFTConfig:
    base = dict(model=str(model_dir), data=str(data), out=str(out), max_seq_len=128, max_target_tokens=32,
                batch_size=4, steps=2, eval_every=0, progress=False, tensorboard=False, lr=1e-2, warmup_steps=1,
                save_every=1000, bf16=False)  # float32: these tests compare runs to 1e-6; auto may pick bf16
    base.update(kw)
    return build_config(SFTConfig, overrides=base)


def _metrics(out) -> list[dict]:
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _last_trainable(out) -> dict:
    from sumrl.training.checkpoint import last_checkpoint

    return torch.load(last_checkpoint(Path(out) / "checkpoints") / "trainable.pt", weights_only=True)


# ------------------------------------------------------------------------------ prompts/targets
def test_sequence_uses_the_eval_prompt_and_ends_with_eos(tiny_tokenizer):
    from sumrl.generation.summarize import encode_prompt
    from sumrl.models.prompts import build_prompt
    from sumrl.training.data import encode_example

    ex = Example("a", "We propose a new method.", ["A new method."])
    (seq,) = encode_example(tiny_tokenizer, ex, max_seq_len=256, max_target_tokens=32)
    prompt = encode_prompt(tiny_tokenizer, build_prompt(tiny_tokenizer, ex.document))
    assert seq.input_ids[: seq.n_prompt] == prompt and seq.kind == "none"
    target = seq.input_ids[seq.n_prompt:]
    assert target[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(target[:-1]) == "A new method."


def test_long_document_is_truncated_like_generation(tiny_tokenizer):
    from sumrl.generation.summarize import encode_prompt
    from sumrl.models.prompts import build_prompt
    from sumrl.training.data import encode_example

    doc = " ".join(CORPUS) * 3
    ex = Example("a", doc, ["A long summary of many words " * 20])
    (seq,) = encode_example(tiny_tokenizer, ex, max_seq_len=120, max_target_tokens=24)
    assert seq.kind == "truncate" and len(seq) <= 120
    assert seq.n_target == 24  # the cut reference ...
    assert tiny_tokenizer.eos_token_id not in seq.input_ids[seq.n_prompt:]  # ... gets no EOS
    prompt_text = tiny_tokenizer.decode(seq.input_ids[: seq.n_prompt])
    doc_part = prompt_text.split("Document:\n", 1)[1].rsplit("<|im_end|>", 1)[0]
    assert doc.startswith(doc_part) and len(doc_part) > 50
    assert seq.input_ids[: seq.n_prompt] == encode_prompt(tiny_tokenizer, build_prompt(tiny_tokenizer, doc_part))


def test_max_prompt_tokens_gives_the_prompt_of_rl_and_eval(tiny_tokenizer):
    """With --max-prompt-tokens the prompt no longer depends on the summary's length: it is the one
    `sumrl rl` (and `sumrl eval --max-input-tokens`) build from the same budget."""
    from sumrl.rl.rollout import encode_prompt_ids
    from sumrl.training.data import encode_example

    doc = " ".join(CORPUS) * 3
    expect = encode_prompt_ids(tiny_tokenizer, doc, None, max_prompt_tokens=60)
    for summary in ("short one", "A longer summary of many words " * 3):
        (seq,) = encode_example(tiny_tokenizer, Example("a", doc, [summary]), max_seq_len=200,
                                max_target_tokens=24, max_prompt_tokens=60)
        assert seq.input_ids[: seq.n_prompt] == expect
    (free,) = encode_example(tiny_tokenizer, Example("a", doc, ["short one"]), max_seq_len=200, max_target_tokens=24)
    assert free.n_prompt > len(expect)  # without it, a short summary leaves room for more document


def test_chunk_strategy_builds_map_and_reduce_sequences(tiny_tokenizer):
    from sumrl.models.prompts import CHUNK_INSTRUCTION, REDUCE_INSTRUCTION
    from sumrl.training.data import encode_example

    parts = ["The meeting discussed the budget and the remote control design.",
             "Results show a 12.5% improvement in ROUGE over the baseline.",
             "We propose a new method for long document summarization."]
    filler = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    doc = " ".join(f"{filler} {p}" for p in parts)
    ref = "We propose a new method. The meeting discussed the budget. Results show an improvement."
    seqs = encode_example(tiny_tokenizer, Example("a", doc, [ref]), max_seq_len=160, max_target_tokens=48,
                          strategy="chunk", chunk_overlap=8)
    kinds = [s.kind for s in seqs]
    assert kinds[-1] == "reduce" and kinds.count("reduce") == 1 and kinds.count("map") >= 2
    assert all(len(s) <= 160 for s in seqs)
    sentences = ["We propose a new method.", "The meeting discussed the budget.", "Results show an improvement."]
    covered = []
    for s in seqs[:-1]:
        assert CHUNK_INSTRUCTION in tiny_tokenizer.decode(s.input_ids[: s.n_prompt])
        target = tiny_tokenizer.decode(s.input_ids[s.n_prompt:], skip_special_tokens=True)
        covered += [x for x in sentences if x in target]
    assert sorted(covered) == sorted(sentences)  # each reference sentence goes to exactly one window
    red = seqs[-1]
    assert REDUCE_INSTRUCTION in tiny_tokenizer.decode(red.input_ids[: red.n_prompt])
    assert tiny_tokenizer.decode(red.input_ids[red.n_prompt:], skip_special_tokens=True) == ref
    # the window holding the "meeting" paragraph gets the "meeting" sentence (alignment, not order)
    meeting = [s for s in seqs[:-1] if "The meeting discussed" in tiny_tokenizer.decode(s.input_ids[s.n_prompt:])]
    assert meeting and "remote control" in tiny_tokenizer.decode(meeting[0].input_ids[: meeting[0].n_prompt])


def test_schedule_warmup_then_cosine():
    from sumrl.training.optim import WarmupCosine

    f = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    assert [round(f(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)


# ------------------------------------------------------------------------------ training engine
def test_gradient_accumulation_equals_full_batch(tiny_model_dir, sft_data, tmp_path):
    """One step over 4 sequences: one packed micro-batch == 4 accumulated micro-batches == padded ==
    one micro-batch without activation checkpointing (as `sumrl demo` trains)."""
    from sumrl.training.sft import train

    runs = {
        "one": dict(micro_batch_tokens=4096),
        "accum": dict(micro_batch_size=1),
        "padded": dict(packing=False, micro_batch_size=2, micro_batch_tokens=4096),
        "no-checkpointing": dict(micro_batch_tokens=4096, gradient_checkpointing=False),
    }
    params, rows = {}, {}
    for name, kw in runs.items():
        out = tmp_path / name
        # Adam's first update is ~lr * sign(g): an element whose gradient is ~0 can flip sign under
        # float round-off and move by ~lr, so lr is kept small enough that such an element stays
        # within the 1e-6 tolerance while every other element moves by ~lr/2 = 5e-5 (20x more).
        train(_cfg(tiny_model_dir, sft_data, out, lora=False, steps=1, lr=1e-4, **kw))
        params[name], rows[name] = _last_trainable(out), _metrics(out)[-1]
    assert rows["one"]["train/micro_batches"] == 1 and rows["accum"]["train/micro_batches"] == 4
    assert rows["padded"]["train/micro_batches"] == 2
    for name in ("accum", "padded", "no-checkpointing"):
        assert rows[name]["train/loss"] == pytest.approx(rows["one"]["train/loss"], rel=1e-6)
        assert rows[name]["train/grad_norm"] == pytest.approx(rows["one"]["train/grad_norm"], rel=1e-5)
        for k, v in params["one"].items():
            assert torch.allclose(params[name][k], v, atol=1e-6, rtol=0), (name, k)
    init = {k: v for k, v in build_tiny_params(tiny_model_dir).items()}
    moved = max(float((params["one"][k] - init[k]).abs().max()) for k in init)
    assert moved > 2e-5  # the step did move the weights, by far more than the tolerance


def build_tiny_params(model_dir) -> dict:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model_dir))
    return {n: p.detach() for n, p in m.named_parameters()}


class _Kill(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_trajectory(tiny_model_dir, sft_data, tmp_path):
    from sumrl.training.sft import train

    # dropout makes the run consume random numbers, so RNG state must be restored too;
    # 6 steps of 4 over 16 sequences crosses an epoch boundary (data order must be restored)
    kw = dict(steps=6, save_every=2, lora_dropout=0.1, eval_every=3, val_examples=3, val_generate=0,
              micro_batch_tokens=1024)
    train(_cfg(tiny_model_dir, sft_data, tmp_path / "full", **kw))

    def kill_at_5(step, _metrics):
        if step == 5:  # after step 5 was logged, before its checkpoint: last checkpoint is step 4
            raise _Kill

    out = tmp_path / "killed"
    with pytest.raises(_Kill):
        train(_cfg(tiny_model_dir, sft_data, out, **kw), callbacks=[kill_at_5])
    assert [r["step"] for r in _metrics(out) if "train/loss" in r] == [1, 2, 3, 4, 5]
    summary = train(_cfg(tiny_model_dir, sft_data, out, resume=True, **kw))
    assert summary["start_step"] == 4

    def traj(o, key):
        return [(r["step"], r[key]) for r in _metrics(o) if key in r]

    assert traj(out, "train/loss") == traj(tmp_path / "full", "train/loss")
    assert [s for s, _ in traj(out, "train/loss")] == [1, 2, 3, 4, 5, 6]  # step 5 not logged twice
    assert traj(out, "val/loss") == traj(tmp_path / "full", "val/loss")
    a, b = _last_trainable(out), _last_trainable(tmp_path / "full")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # different settings cannot be resumed silently
    from sumrl.errors import ConfigError

    with pytest.raises(ConfigError, match="lr"):
        train(_cfg(tiny_model_dir, sft_data, out, resume=True, **{**kw, "lr": 0.5}))


# ------------------------------------------------------------------------------------- the CLI
def test_cli_recipe_sft_then_eval_and_summarize(tiny_model_dir, sft_data, tmp_path, capsys):
    from sumrl.cli import main
    from sumrl.models.loading import load_model
    from sumrl.utils.io import read_json_file

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ndata: {sft_data}\nmax_seq_len: 128\nmax_target_tokens: 32\n"
                      "batch_size: 4\nsteps: 3\nlr: 0.01\nwarmup_steps: 0\neval_every: 2\nval_examples: 2\n"
                      "val_generate: 2\nval_max_new_tokens: 8\nlora_r: 4\ntensorboard: true\n")
    out = tmp_path / "run"
    assert main(["sft", "--config", str(recipe), "--out", str(out), "--lora-r", "8", "--no-progress"]) == 0
    done_line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("sft done:")]
    assert len(done_line) == 1 and "steps 3" in done_line[0]
    assert re.search(r"\d+ tokens/s \(training steps of this run\)", done_line[0]), done_line
    saved = read_json_file(out / "sft_config.json")
    assert saved["lora_r"] == 8 and saved["steps"] == 3 and saved["lora"] is True  # flag beats recipe
    names = {r.get("step"): r for r in _metrics(out) if "val/loss" in r}
    assert sorted(names) == [0, 2, 3]  # before training, every 2 steps, after the last
    for k in ("val/loss", "val/rougeL", "val/pred_words", "val/ref_words"):
        assert k in names[3]
    assert (out / "metrics.csv").exists() and any((out / "tensorboard").iterdir())
    assert (out / "checkpoints" / "last").read_text().strip() == "step-00000003"
    model, _ = load_model(str(out))
    assert type(model).__name__.startswith("PeftModel")
    # LoRA B starts at zero: non-zero B means the trained adapter (not a fresh one) was loaded
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)

    assert main(["eval", "--model", str(out), "--data", str(sft_data), "--split", "test", "--limit", "2",
                 "--max-new-tokens", "8", "--no-semantic", "--n-bootstrap", "10", "--out", str(tmp_path / "ev")]) == 0
    assert read_json_file(tmp_path / "ev" / "metrics.json")["n"] == 2
    assert main(["summarize", "--model", str(out), "--data", str(sft_data), "--split", "test", "--limit", "1",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "s.jsonl")]) == 0

    # an existing run is not clobbered without --resume/--overwrite; --resume needs a checkpoint
    capsys.readouterr()
    assert main(["sft", "--config", str(recipe), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["sft", "--config", str(recipe), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_full_fine_tune_output_loads_as_a_model(tiny_model_dir, sft_data, tmp_path):
    from sumrl.cli import main
    from sumrl.models.loading import load_model, resolve

    out = tmp_path / "full"
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(sft_data), "--out", str(out), "--full",
                 "--steps", "1", "--batch-size", "2", "--max-seq-len", "128", "--max-target-tokens", "32",
                 "--eval-every", "0", "--no-progress", "--no-tensorboard", "--bf16"]) == 0
    assert resolve(str(out)).kind == "hf_dir"
    model, _ = load_model(str(out))
    trained = dict(model.named_parameters())
    assert any(not torch.equal(trained[k], v) for k, v in build_tiny_params(tiny_model_dir).items())


def test_recipes_in_the_repo_are_valid(tmp_path, capsys):
    from sumrl.cli import main

    recipes = sorted((REPO / "recipes").glob("sft*.yaml"))
    assert {p.name for p in recipes} >= {"sft_lora.yaml", "sft_full.yaml", "sft_gpu.yaml"}
    for p in recipes:
        build_config(SFTConfig, load_recipe(p), source=str(p))
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_rank: 8\n")
    assert main(["sft", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown option 'lora_rank'" in err


@pytest.mark.parametrize("flags, msg", [
    (["--max-seq-len", "32"], "at least 64"),
    (["--max-target-tokens", "300", "--max-seq-len", "256"], "smaller than --max-seq-len"),
    (["--micro-batch-tokens", "100", "--max-seq-len", "256", "--max-target-tokens", "64"], "micro-batch-tokens"),
    (["--lora-target-modules", "q_proj", "lm_head"], "lm_head"),
])
def test_bad_options_are_one_line_errors(flags, msg, tiny_model_dir, sft_data, tmp_path, capsys):
    from sumrl.cli import main

    rc = main(["sft", "--model", str(tiny_model_dir), "--data", str(sft_data), "--out", str(tmp_path / "x"),
               "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and err.count("\n") == 0


# ------------------------------------------------------------------------------ early stopping
def test_early_stopping_rule_by_hand():
    from sumrl.training.sft import early_stopping_update as upd

    assert upd(None, 0, 3.0) == (3.0, 0, True)           # the first validation is the first best
    assert upd(3.0, 0, 2.0) == (2.0, 0, True)
    assert upd(2.0, 0, 2.0) == (2.0, 1, False)           # equal is not better
    assert upd(2.0, 1, 1.95, min_delta=0.1) == (2.0, 2, False)  # better, but not by more than min_delta
    assert upd(2.0, 2, 1.8, min_delta=0.1) == (1.8, 0, True)
    assert upd(2.0, 0, float("nan")) == (2.0, 1, False)
    assert upd(None, 0, float("nan")) == (float("inf"), 1, False)  # a NaN is never the best ...
    assert upd(float("inf"), 1, 9.0) == (9.0, 0, True)            # ... so the next finite loss is


def test_early_stopping_stops_and_publishes_the_best_weights(tiny_model_dir, sft_data, tmp_path, monkeypatch):
    """Scripted validation losses 3.0, 2.0, 2.5, 2.1, ... at steps 0, 1, 2, 3: with patience 2 the run
    stops after step 3 and publishes step 1's weights -- the same weights an uninterrupted run has at
    step 1 (its checkpoint)."""
    from safetensors.torch import load_file

    from sumrl.training import sft

    kw = dict(steps=6, eval_every=1, val_examples=2, val_generate=0)
    ref = tmp_path / "ref"
    sft.train(_cfg(tiny_model_dir, sft_data, ref, save_every=1, keep_checkpoints=10, **kw))
    step1 = torch.load(ref / "checkpoints" / "step-00000001" / "trainable.pt", weights_only=True)

    losses = iter([3.0, 2.0, 2.5, 2.1, 1.0, 1.0, 1.0])
    monkeypatch.setattr(sft.Validator, "loss", lambda self, module, device: (next(losses), 10))
    out = tmp_path / "es"
    summary = sft.train(_cfg(tiny_model_dir, sft_data, out, early_stopping_patience=2, **kw))
    assert summary["stopped_at"] == 3 and summary["best_step"] == 1
    assert [r["step"] for r in _metrics(out) if "train/loss" in r] == [1, 2, 3]
    meta = json.loads((out / "sumrl_model.json").read_text())
    assert meta["best_step"] == 1 and meta["best_val_loss"] == 2.0 and meta["stopped_at"] == 3
    published = load_file(out / "adapter_model.safetensors")
    assert len(published) == len(step1) > 0
    for name, w in step1.items():
        assert torch.equal(published[name.replace(".default", "")], w), name
    # resuming a run that early stopping ended trains no further and publishes the same weights
    again = sft.train(_cfg(tiny_model_dir, sft_data, out, early_stopping_patience=2, resume=True, **kw))
    assert again["start_step"] == 3 and again["best_step"] == 1
    assert [r["step"] for r in _metrics(out) if "train/loss" in r] == [1, 2, 3]
    assert all(torch.equal(load_file(out / "adapter_model.safetensors")[k], v) for k, v in published.items())


def test_early_stopping_needs_validation(tiny_model_dir, sft_data, tmp_path):
    from sumrl.errors import ConfigError

    with pytest.raises(ConfigError, match="early-stopping-patience"):
        _cfg(tiny_model_dir, sft_data, tmp_path, early_stopping_patience=2, eval_every=0)


def test_summary_line_is_pure():
    from sumrl.training.sft import summary_line

    assert summary_line({"steps": 3, "train": {"train/loss": 1.23456}, "val": {"val/loss": 2.5, "val/x": 1},
                         "tokens_per_s": 99.6}) == \
        "sft done: steps 3, train/loss 1.2346, val/loss 2.5, 100 tokens/s (training steps of this run)"
    assert summary_line({"steps": 0}) == "sft done: steps 0"
