"""Encoder-decoder summarizers (T5, BART, LED) through the common model interface, on tiny random
models built here: loading and prompts, log-probs equal to the model's own logits, the shared
encoder pass equal to the unshared one (values and gradients), generation strategies, and every
command end to end (summarize, eval, sft, rm with the policy backbone, rl)."""

from __future__ import annotations

import json
import random

import pytest

torch = pytest.importorskip("torch")

from conftest import CORPUS, build_tiny_tokenizer  # noqa: E402
from sumrl.cli import main  # noqa: E402

FAMILIES = ("t5", "bart", "led")  # every command runs on these
ALL_FAMILIES = FAMILIES + ("pegasus",)  # PEGASUS: loading, limits and log-probs (BART's code paths otherwise)
CHEAP = "length,eos,repetition"


def build_seq2seq(family: str, tok, seed: int = 0):
    from transformers import (BartConfig, BartForConditionalGeneration, LEDConfig, LEDForConditionalGeneration,
                              PegasusConfig, PegasusForConditionalGeneration, T5Config, T5ForConditionalGeneration)

    # dropout 0: the full fine-tuning equivalence tests compare runs with different micro-batching
    # (dropout masks would consume the random stream differently); LoRA dropout is still tested
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  decoder_start_token_id=tok.pad_token_id)
    if family == "t5":  # tied embeddings: the decoder output is rescaled before the head
        cfg = T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, n_positions=512, dropout_rate=0.0,
                       task_specific_params={"summarization": {"prefix": "summarize: "}}, **common)
        model = T5ForConditionalGeneration(cfg)
    elif family == "bart":
        cfg = BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                         decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id, forced_bos_token_id=None,
                         dropout=0.0, **common)
        model = BartForConditionalGeneration(cfg)
    elif family == "pegasus":  # sinusoidal positions, 1,024 by default
        cfg = PegasusConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                            max_position_embeddings=256, dropout=0.0, **common)
        model = PegasusForConditionalGeneration(cfg)
    else:
        cfg = LEDConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_encoder_position_embeddings=1024, max_decoder_position_embeddings=256,
                        attention_window=[8, 8], bos_token_id=tok.bos_token_id, dropout=0.0, **common)
        model = LEDForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


@pytest.fixture(scope="session")
def seq2seq_dirs(tmp_path_factory):
    dirs = {}
    for fam in ALL_FAMILIES:
        d = tmp_path_factory.mktemp(f"tiny-{fam}")
        tok = build_tiny_tokenizer(chat=False)
        build_seq2seq(fam, tok).save_pretrained(d)
        tok.save_pretrained(d)
        dirs[fam] = d
    return dirs


@pytest.fixture(scope="module")
def s2s_data(tmp_path_factory):
    """16 rows (10 train / 3 val / 3 test); summaries are document prefixes."""
    rng = random.Random(0)
    p = tmp_path_factory.mktemp("s2s-data") / "docs.jsonl"
    rows = []
    for i in range(16):
        doc = " ".join(rng.choice(CORPUS) for _ in range(rng.randint(2, 8)))
        rows.append({"id": f"d{i}", "document": doc, "summary": " ".join(doc.split()[:rng.randint(3, 8)]),
                     "split": "train" if i < 10 else "val" if i < 13 else "test"})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _left_padded(rows, pad):
    from sumrl.generation.sampler import left_pad

    return left_pad(rows, pad)


# ------------------------------------------------------------------------------ loading, prompts
@pytest.mark.parametrize("fam", ALL_FAMILIES)
def test_loading_prompt_convention_and_limits(fam, seq2seq_dirs):
    from sumrl.models.loading import context_length, load_model, load_tokenizer
    from sumrl.models.lora import default_target_modules
    from sumrl.models.prompts import build_prompt, has_chat_template, seq2seq_prefix
    from sumrl.models.seq2seq import is_encoder_decoder

    model, tok = load_model(str(seq2seq_dirs[fam]))
    assert is_encoder_decoder(model) and type(model).__name__.endswith("ForConditionalGeneration")
    prefix = "summarize: " if fam == "t5" else ""
    assert seq2seq_prefix(tok) == prefix and seq2seq_prefix(load_tokenizer(str(seq2seq_dirs[fam]))) == prefix
    assert not has_chat_template(tok)
    assert build_prompt(tok, "A document.") == prefix + "A document."
    assert build_prompt(tok, "Doc.", query="Who?") == prefix + "question: Who? context: Doc."
    assert build_prompt(tok, "Doc.", instruction="Summarize briefly:") == "Summarize briefly: Doc."
    assert context_length(model) == {"t5": 512, "bart": 256, "led": 1024, "pegasus": 256}[fam]
    targets = default_target_modules(model)
    assert {"t5": {"q", "v", "wi"}, "bart": {"q_proj", "fc1"}, "led": {"query", "q_proj", "fc2"},
            "pegasus": {"q_proj", "fc1"}}[fam] <= set(targets)
    assert "lm_head" not in targets


def test_decoder_prompts_are_unchanged(tiny_model_dir):
    from sumrl.models.loading import load_tokenizer
    from sumrl.models.prompts import build_prompt, seq2seq_prefix

    tok = load_tokenizer(str(tiny_model_dir))
    assert seq2seq_prefix(tok) is None
    assert build_prompt(tok, "Doc.").startswith("<|im_start|>user\n")


# --------------------------------------------------------------------- log-probs and the encoder
def _rows(tok, fam):
    """4 rows, two prompts of different lengths (left-padded), two responses each (right-padded)."""
    g = torch.Generator().manual_seed({"t5": 0, "bart": 1, "led": 2, "pegasus": 3}[fam])
    V = len(tok)
    p1 = torch.randint(5, V, (13,), generator=g).tolist()
    p2 = torch.randint(5, V, (7,), generator=g).tolist()
    q, qm = _left_padded([p1, p1, p2, p2], tok.pad_token_id)
    r = torch.randint(5, V, (4, 6), generator=g)
    rm = torch.ones_like(r)
    rm[1, 3:] = 0
    rm[3, 5:] = 0
    r = r.masked_fill(rm == 0, tok.pad_token_id)
    return [p1, p1, p2, p2], q, qm, r, rm


@pytest.mark.parametrize("fam", ALL_FAMILIES)
def test_policy_logprobs_equal_the_models_own_logits(fam, seq2seq_dirs):
    """chunked log-probs from the policy/value module == log_softmax(model(...).logits) of each row
    run alone (no padding), with a T5 head rescale, BART/LED absolute positions and LED's global
    attention; entropy too."""
    from sumrl.models.loading import load_model
    from sumrl.models.seq2seq import encoder_kwargs
    from sumrl.rl.value import PolicyValueModule, ValueHead

    model, tok = load_model(str(seq2seq_dirs[fam]))
    prompts, q, qm, r, rm = _rows(tok, fam)
    mod = PolicyValueModule(model, ValueHead(32), chunk_size=3)
    with torch.no_grad():
        out = mod(q, qm, r, rm, with_values=True, with_entropy=True)
    for b, p in enumerate(prompts):
        n = int(rm[b].sum())
        ids = torch.tensor([p])
        dec = torch.cat([torch.tensor([[tok.pad_token_id]]), r[b:b + 1, :n - 1]], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=dec, **encoder_kwargs(model, torch.ones_like(ids))).logits
        ref = torch.log_softmax(logits.float(), -1)[0]
        want = ref.gather(1, r[b, :n, None]).squeeze(1)
        torch.testing.assert_close(out["logprobs"][b, :n], want, atol=1e-5, rtol=0)
        ent = -(ref.exp() * ref).sum(-1)
        torch.testing.assert_close(out["entropy"][b, :n], ent, atol=1e-5, rtol=0)
        assert torch.all(out["logprobs"][b, n:] == 0)
    assert out["values"].shape == r.shape


@pytest.mark.parametrize("fam", FAMILIES)
def test_shared_encoder_equals_the_unshared_computation(fam, seq2seq_dirs):
    """One encoder pass per group (expanded to its rows) == one pass per row: hidden states to
    1e-5 and the gradients of LoRA adapters on the encoder and decoder (the training pass)."""
    from sumrl.models.loading import load_model
    from sumrl.models.lora import add_lora
    from sumrl.models.seq2seq import response_hidden

    model, tok = load_model(str(seq2seq_dirs[fam]))
    model = add_lora(model, r=4, alpha=8)
    with torch.no_grad():  # non-zero B so that the adapters change the outputs
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    enc_lora = [n for n, p in model.named_parameters() if "lora_" in n and "encoder" in n]
    assert enc_lora, "the default targets adapt the encoder too"
    _, q, qm, r, rm = _rows(tok, fam)
    grads = {}
    for share in (True, False):
        model.zero_grad()
        h = response_hidden(model, q, qm, r, rm, share_encoder=share)
        (h * torch.linspace(-1, 1, h.shape[-1])).sum().backward()
        grads[share] = (h.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=1e-5, rtol=0)
    assert set(grads[True][1]) == set(grads[False][1]) and set(enc_lora) <= set(grads[True][1])
    for n in grads[True][1]:
        torch.testing.assert_close(grads[True][1][n], grads[False][1][n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fam", FAMILIES)
def test_grouped_sampling_equals_one_row_at_a_time(fam, seq2seq_dirs):
    """rollout.sample shares the encoder within a group; greedy tokens equal generate() per row."""
    from sumrl.models.loading import load_model
    from sumrl.models.seq2seq import encoder_kwargs
    from sumrl.generation.engine import sample

    model, tok = load_model(str(seq2seq_dirs[fam]))
    prompts = _rows(tok, fam)[0]
    got = sample(model, prompts, max_new_tokens=5, temperature=0.0, top_p=1.0, stop_ids=[tok.eos_token_id],
                 pad_id=tok.pad_token_id)
    for p, row in zip(prompts, got):
        ids = torch.tensor([p])
        want = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              **encoder_kwargs(model, torch.ones_like(ids)))[0, 1:].tolist()
        assert row == want


def test_final_logits_bias_must_be_zero(seq2seq_dirs):
    from sumrl.models.loading import load_model
    from sumrl.models.logprobs import output_head

    model, _ = load_model(str(seq2seq_dirs["bart"]))
    output_head(model)
    model.final_logits_bias[0, 3] = 1.0
    with pytest.raises(ValueError, match="final_logits_bias"):
        output_head(model)


# ------------------------------------------------------------------------------ summarize / eval
@pytest.mark.parametrize("fam", FAMILIES)
def test_summarize_truncate_and_chunk(fam, seq2seq_dirs):
    from sumrl.data.schema import Example
    from sumrl.generation.summarize import GenerationSettings, summarize
    from sumrl.models.loading import load_model

    model, tok = load_model(str(seq2seq_dirs[fam]))
    long_doc = " ".join(CORPUS * 3)
    exs = [Example(id="short", document=CORPUS[0], references=[]), Example(id="long", document=long_doc, references=[])]
    for strategy, want in (("truncate", ["none", "truncate"]), ("chunk", ["none", "chunk"])):
        outs = summarize(model, tok, exs, GenerationSettings(max_new_tokens=4, strategy=strategy, max_input_tokens=80,
                                                             progress=False))
        assert [o.strategy for o in outs] == want
        assert outs[0].n_input_tokens <= 80 and outs[1].n_input_tokens <= 80
        assert all(o.n_output_tokens <= 4 for o in outs)  # a random model may write only pad tokens
    assert outs[1].n_chunks > 1 and len(outs[1].chunk_summaries) == outs[1].n_chunks


def test_encoder_limit_is_the_budget_not_context_minus_output(seq2seq_dirs):
    from sumrl.generation.summarize import GenerationSettings, input_budget
    from sumrl.models.loading import load_model

    bart, _ = load_model(str(seq2seq_dirs["bart"]))
    assert input_budget(bart, GenerationSettings(max_new_tokens=200)) == 256  # BART: hard limit, output separate
    assert input_budget(bart, GenerationSettings(max_new_tokens=8, max_input_tokens=999)) == 256
    t5, _ = load_model(str(seq2seq_dirs["t5"]))
    assert input_budget(t5, GenerationSettings(max_new_tokens=8)) == 512  # trained length by default
    assert input_budget(t5, GenerationSettings(max_new_tokens=8, max_input_tokens=2048)) == 2048  # relative positions


def test_prompt_that_cannot_be_truncated_to_fit_is_one_line(seq2seq_dirs, tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "q1", "document": "Short doc.", "summary": "s", "query": "why " * 200}) + "\n")
    rc = main(["summarize", "--model", str(seq2seq_dirs["bart"]), "--data", str(data), "--out",
               str(tmp_path / "o.jsonl"), "--split", "all", "--strategy", "truncate", "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if l.startswith("error")]
    assert rc == 2 and "Traceback" not in err and len(errors) == 1 and "'q1'" in errors[0]


@pytest.mark.parametrize("fam", FAMILIES)
def test_eval_and_summarize_cli(fam, seq2seq_dirs, s2s_data, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(seq2seq_dirs[fam]), "--data", str(s2s_data), "--split", "test",
                 "--out", str(out), "--max-new-tokens", "6", "--no-semantic", "--n-bootstrap", "20",
                 "--strategy", "chunk", "--max-input-tokens", "64"]) == 0
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["n_input_tokens"] <= 64 for r in rows)
    assert "rouge1_f" in json.loads((out / "metrics.json").read_text())["metrics"]
    summ = tmp_path / "s.jsonl"
    assert main(["summarize", "--model", str(seq2seq_dirs[fam]), "--data", str(s2s_data), "--split", "test",
                 "--limit", "2", "--out", str(summ), "--strategy", "chunk", "--max-input-tokens", "64",
                 "--max-new-tokens", "4"]) == 0
    assert len(summ.read_text().splitlines()) == 2


# ------------------------------------------------------------------------------------------- sft
def _sft_cfg(model_dir, data, out, **kw):
    from sumrl.config import build_config
    from sumrl.training.config import SFTConfig

    base = dict(model=str(model_dir), data=str(data), out=str(out), max_seq_len=96, max_target_tokens=24,
                batch_size=4, steps=1, eval_every=0, progress=False, tensorboard=False, lr=1e-4, warmup_steps=1,
                save_every=1000, bf16=False)
    base.update(kw)
    return build_config(SFTConfig, overrides=base)


def _sft_metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _trainable(out):
    from sumrl.training.checkpoint import last_checkpoint

    return torch.load(last_checkpoint(out / "checkpoints") / "trainable.pt", weights_only=True)


@pytest.mark.parametrize("fam", FAMILIES)
def test_sft_loss_is_the_models_own_cross_entropy(fam, seq2seq_dirs, s2s_data):
    """chunked seq2seq loss (sum / tokens) == the model's own ``labels=`` loss (full logits)."""
    from sumrl.data import load_data
    from sumrl.models.loading import load_model
    from sumrl.training.data import encode_examples
    from sumrl.training.loss import make_loss_module

    model, tok = load_model(str(seq2seq_dirs[fam]))
    exs = load_data(str(s2s_data), "train", limit=4)
    seqs = encode_examples(tok, exs, max_seq_len=40, max_target_tokens=8)
    assert any(s.kind == "truncate" for s in seqs) and all(s.n_prompt <= 40 for s in seqs)
    loss = make_loss_module(model, chunk_size=5)
    assert not loss.supports_packing
    batch = loss.collate(seqs, packing=True, pad_id=tok.pad_token_id)
    with torch.no_grad():
        s, n = loss(**batch)
        from sumrl.models.seq2seq import encoder_kwargs

        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                    **encoder_kwargs(model, batch["attention_mask"])).loss
    assert int(n) == sum(len(x.input_ids) - x.n_prompt for x in seqs)
    torch.testing.assert_close(s / n, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fam", ["t5", "led"])
def test_sft_gradient_accumulation_equals_full_batch(fam, seq2seq_dirs, s2s_data, tmp_path, capsys):
    from sumrl.training.sft import train

    params, rows = {}, {}
    for name, kw in {"one": dict(micro_batch_tokens=4096), "accum": dict(micro_batch_size=1)}.items():
        out = tmp_path / name
        train(_sft_cfg(seq2seq_dirs[fam], s2s_data, out, lora=False, **kw))
        params[name], rows[name] = _trainable(out), _sft_metrics(out)[-1]
    assert "packing does not apply to encoder-decoder models" in capsys.readouterr().out
    assert rows["one"]["train/micro_batches"] == 1 and rows["accum"]["train/micro_batches"] == 4
    assert rows["accum"]["train/loss"] == pytest.approx(rows["one"]["train/loss"], rel=1e-6)
    assert rows["accum"]["train/grad_norm"] == pytest.approx(rows["one"]["train/grad_norm"], rel=1e-5)
    for k, v in params["one"].items():
        assert torch.allclose(params["accum"][k], v, atol=1e-6, rtol=0), k


class _Kill(Exception):
    pass


def test_sft_resume_reproduces_the_uninterrupted_run(seq2seq_dirs, s2s_data, tmp_path):
    from sumrl.training.sft import train

    kw = dict(steps=4, save_every=2, lora_dropout=0.1, micro_batch_tokens=1024, lr=1e-2)
    train(_sft_cfg(seq2seq_dirs["bart"], s2s_data, tmp_path / "full", **kw))

    def kill_at_3(step, _):
        if step == 3:
            raise _Kill

    out = tmp_path / "killed"
    with pytest.raises(_Kill):
        train(_sft_cfg(seq2seq_dirs["bart"], s2s_data, out, **kw), callbacks=[kill_at_3])
    assert train(_sft_cfg(seq2seq_dirs["bart"], s2s_data, out, resume=True, **kw))["start_step"] == 2

    def traj(o):
        return [(r["step"], r["train/loss"]) for r in _sft_metrics(o) if "train/loss" in r]

    assert traj(out) == traj(tmp_path / "full") and len(traj(out)) == 4
    a, b = _trainable(out), _trainable(tmp_path / "full")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fam", FAMILIES)
def test_sft_cli_lora_adapter_then_eval(fam, seq2seq_dirs, s2s_data, tmp_path):
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(seq2seq_dirs[fam]), "--data", str(s2s_data), "--out", str(out),
                 "--max-seq-len", "96", "--max-target-tokens", "24", "--batch-size", "4", "--steps", "2",
                 "--eval-every", "0", "--no-progress", "--no-tensorboard", "--lora-r", "4", "--no-bf16",
                 "--strategy", "chunk"]) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_2_SEQ_LM"
    from sumrl.models.loading import load_model
    from sumrl.models.prompts import seq2seq_prefix

    model, tok = load_model(str(out))
    assert type(model).__name__ == "PeftModelForSeq2SeqLM" and seq2seq_prefix(tok) is not None
    ev = tmp_path / "eval"
    assert main(["eval", "--model", str(out), "--data", str(s2s_data), "--split", "test", "--limit", "2",
                 "--out", str(ev), "--max-new-tokens", "4", "--no-semantic", "--n-bootstrap", "10"]) == 0


def test_sft_max_seq_len_beyond_the_encoder_limit_is_one_line(seq2seq_dirs, s2s_data, tmp_path, capsys):
    rc = main(["sft", "--model", str(seq2seq_dirs["bart"]), "--data", str(s2s_data), "--out", str(tmp_path / "x"),
               "--max-seq-len", "2048", "--steps", "1", "--no-progress", "--no-tensorboard"])
    err = capsys.readouterr().err
    assert rc == 2 and "exceeds the 256 input tokens" in err and "Traceback" not in err
    rc = main(["rl", "--policy", str(seq2seq_dirs["led"]), "--data", str(s2s_data), "--out", str(tmp_path / "y"),
               "--max-new-tokens", "300", "--reward", CHEAP, "--no-progress", "--no-tensorboard"])
    err = capsys.readouterr().err
    assert rc == 2 and "--max-new-tokens 300 exceeds the 256 output tokens" in err and "Traceback" not in err


# -------------------------------------------------------------------------------------------- rl
def _rl_args(policy, data, out, *extra):
    return ["rl", "--policy", str(policy), "--data", str(data), "--out", str(out), "--reward", CHEAP,
            "--batch-size", "2", "--max-new-tokens", "6", "--max-prompt-tokens", "64", "--no-progress",
            "--no-tensorboard", "--steps", "1", "--eval-every", "0", "--no-bf16", *extra]


def _rl_metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.mark.parametrize("fam, algo, extra", [
    ("t5", "ppo", ["--steps", "2", "--ppo-epochs", "2", "--mini-batch-size", "1", "--micro-batch-size", "1",
                   "--eval-every", "1"]),
    ("bart", "grpo", ["--samples-per-prompt", "2", "--value-model", "adapter"]),
    ("led", "rloo", ["--samples-per-prompt", "2", "--entropy-coef", "0.01"]),
    ("bart", "ppo", ["--value-model", "adapter", "--reference-trajectory-ratio", "1.0",
                     "--summary-cap-quantile", "1.0"]),
])
def test_rl_runs_and_saves(fam, algo, extra, seq2seq_dirs, s2s_data, tmp_path):
    out = tmp_path / algo
    assert main(_rl_args(seq2seq_dirs[fam], s2s_data, out, "--algo", algo, *extra)) == 0
    rows = [r for r in _rl_metrics(out) if "policy/loss" in r]
    if "objective/kl" in rows[0]:  # (a reference-trajectory step logs reference/* instead)
        assert rows[0]["objective/kl"] == 0.0  # step 1: adapters-off reference == policy exactly
    assert ("value/loss" in rows[-1]) == (algo == "ppo")
    if "--reference-trajectory-ratio" in extra:
        assert rows[-1]["completions/reference_fraction"] == 1.0
        assert rows[-1]["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    if "--eval-every" in extra:
        assert any("eval/reward" in r for r in _rl_metrics(out))
    from sumrl.models.loading import load_model

    model, tok = load_model(str(out))
    assert type(model).__name__ == "PeftModelForSeq2SeqLM"


@pytest.mark.parametrize("fam, guide, algo", [("t5", "decoder", "ppo++"), ("led", "bart", "ppo++"),
                                             ("bart", "decoder", "aggrevated"), ("t5", "led", "d2lols")])
def test_rl_guided_algorithms(fam, guide, algo, seq2seq_dirs, tiny_base_model_dir, s2s_data, tmp_path):
    """The guided algorithms with a decoder guide (other prompt format) and with an encoder-decoder
    guide: a PPO++ roll-in prefix is decoder input for both the encoder-decoder guide and policy."""
    g = tiny_base_model_dir if guide == "decoder" else seq2seq_dirs[guide]
    out = tmp_path / "g"
    extra = ["--guide-rollin-prob", "1.0"] if algo == "ppo++" else ["--steps", "2", "--d2lols-tau", "1", "--guide-rollin-prob", "1.0"] if algo == "d2lols" else []
    assert main(_rl_args(seq2seq_dirs[fam], s2s_data, out, "--algo", algo, "--guide", str(g), "--ppo-epochs", "1",
                         *extra)) == 0
    row = _rl_metrics(out)[-1]
    assert row["guide/rollin_fraction" if algo != "aggrevated" else "guide/rollout_fraction"] > 0
    assert row["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # old pass == training pass (with prefixes)


@pytest.mark.parametrize("fam", FAMILIES)
def test_rollin_prefix_logprobs_equal_the_models_own(fam, seq2seq_dirs):
    """With a roll-in prefix at the end of the prompt the module scores the response after
    ``[start] + prefix`` on the decoder: equal to the model's own logits, row by row; and sampling
    continues after the prefix like generate() with that decoder input."""
    from sumrl.models.loading import load_model
    from sumrl.models.seq2seq import encoder_kwargs
    from sumrl.generation.engine import sample
    from sumrl.rl.value import PolicyValueModule

    model, tok = load_model(str(seq2seq_dirs[fam]))
    prompts, q, qm, r, rm = _rows(tok, fam)
    pre = [[11, 12, 13], [], [14], [15, 16]]
    full = [p + k for p, k in zip(prompts, pre)]
    fq, fqm = _left_padded(full, tok.pad_token_id)
    mod = PolicyValueModule(model)
    with torch.no_grad():
        lp = mod(fq, fqm, r, rm, prefix_len=torch.tensor([len(k) for k in pre]))["logprobs"]
    start = tok.pad_token_id
    for b, (p, k) in enumerate(zip(prompts, pre)):
        n = int(rm[b].sum())
        ids = torch.tensor([p])
        dec = torch.tensor([[start, *k, *r[b, :n - 1].tolist()]])
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=dec, **encoder_kwargs(model, torch.ones_like(ids))).logits
        want = torch.log_softmax(logits.float(), -1)[0, len(k):].gather(1, r[b, :n, None]).squeeze(1)
        torch.testing.assert_close(lp[b, :n], want, atol=1e-5, rtol=0)
    got = sample(model, full, max_new_tokens=4, temperature=0.0, top_p=1.0, stop_ids=[tok.eos_token_id],
                 pad_id=tok.pad_token_id, prefix_lens=[len(k) for k in pre])
    for p, k, row in zip(prompts, pre, got):
        ids = torch.tensor([p])
        want = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              decoder_input_ids=torch.tensor([[start, *k]]), max_new_tokens=4, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              **encoder_kwargs(model, torch.ones_like(ids)))[0, 1 + len(k):].tolist()
        assert row == want


def _rl_cfg(policy, data, out, **kw):
    from sumrl.config import build_config
    from sumrl.rl.config import RLConfig

    base = dict(policy=str(policy), data=str(data), out=str(out), reward=CHEAP, batch_size=2, max_new_tokens=6,
                max_prompt_tokens=64, progress=False, tensorboard=False, bf16=False)
    return build_config(RLConfig, None, {**base, **kw})


def test_rl_micro_batches_equal_the_full_batch(seq2seq_dirs, s2s_data, tmp_path):
    """GRPO step with 4 rows: micro-batches of 1 (encoder per row) == one micro-batch of 4 (encoder
    shared per group): same metrics and the same LoRA weights after the update."""
    from sumrl.rl.trainer import train
    from sumrl.training.checkpoint import last_checkpoint

    res = {}
    for mb in (1, 4):
        out = tmp_path / f"mb{mb}"
        train(_rl_cfg(seq2seq_dirs["t5"], s2s_data, out, algo="grpo", samples_per_prompt=2, micro_batch_size=mb, steps=1,
                      eval_every=0, kl_coef=0.05, lr=1e-3))
        res[mb] = (_rl_metrics(out)[-1], torch.load(last_checkpoint(out / "checkpoints") / "trainable.pt",
                                                    weights_only=True))
    (m1, w1), (m4, w4) = res[1], res[4]
    for k in ("objective/reward", "objective/kl", "policy/loss", "train/grad_norm"):
        assert m1[k] == pytest.approx(m4[k], rel=1e-4, abs=1e-6), k
    for k in w1:
        torch.testing.assert_close(w1[k], w4[k], atol=1e-6, rtol=0)


def test_rl_resume_continues_the_same_trajectory(seq2seq_dirs, s2s_data, tmp_path):
    from sumrl.rl.trainer import train

    kw = dict(steps=3, save_every=1, temperature=1.0, eval_every=0)
    train(_rl_cfg(seq2seq_dirs["bart"], s2s_data, tmp_path / "full", **kw))

    def kill_at_2(step, _m):
        if step == 2:
            raise _Kill

    out = tmp_path / "killed"
    with pytest.raises(_Kill):
        train(_rl_cfg(seq2seq_dirs["bart"], s2s_data, out, **kw), callbacks=[kill_at_2])
    assert train(_rl_cfg(seq2seq_dirs["bart"], s2s_data, out, resume=True, **kw))["start_step"] == 1
    a, b = _rl_metrics(out), _rl_metrics(tmp_path / "full")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k in ("objective/reward", "objective/kl", "policy/loss", "value/loss", "completions/mean_length"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (ra["step"], k)


# -------------------------------------------------------------------------------------------- rm
DOC = "Alice Smith studied robots for 12 years. The study of robots is not easy. " * 3
SUMMARY = "Alice Smith studied robots for 12 years."


def _rm(model_dir, tmp_path):
    from conftest import trained_looking_policy_rm

    return trained_looking_policy_rm(model_dir, tmp_path / "rm", seed=0)


@pytest.mark.parametrize("fam", ["t5", "bart"])
def test_policy_backbone_rm_is_causal_and_initialises_the_critic(fam, seq2seq_dirs, tmp_path):
    """An encoder-decoder RM reads the document in the encoder and the summary in the decoder: a
    token's value does not change when tokens are appended; the RL critic initialised from it
    (value adapter + head) outputs its normalised token values one position later."""
    from sumrl.models.loading import load_model
    from sumrl.models.lora import add_lora
    from sumrl.rewards.registry import build_reward
    from sumrl.rl.value import VALUE_ADAPTER, PolicyValueModule, ValueHead, hidden_size, init_value_adapter_from_rm

    rm, path = _rm(seq2seq_dirs[fam], tmp_path)
    short, long = rm.token_values([DOC, DOC], [SUMMARY, SUMMARY + " The report is about robots."])
    assert len(long) > len(short)
    torch.testing.assert_close(long[:len(short)], short, atol=1e-5, rtol=0)

    reward = build_reward([{"name": "rm", "path": str(path), "per_token": True}])
    model, _ = load_model(str(seq2seq_dirs[fam]))
    model = add_lora(model, r=4, alpha=8)
    model.add_adapter(VALUE_ADAPTER, model.peft_config["default"])
    head = ValueHead(hidden_size(model))
    assert "same base weights" in init_value_adapter_from_rm(model, head, reward)
    module = PolicyValueModule(model, head, value_adapter=True)
    rm_model = reward.rewards[0].rm.model
    batch, mask, _ = rm_model._features([DOC], [SUMMARY], [None])
    q, n = batch["input_ids"], int(mask[0].sum())
    r = batch["response_ids"][:, :n]
    with torch.no_grad():
        values = module(q, batch["attention_mask"], r, torch.ones_like(r), with_values=True)["values"][0]
    expected = (rm_model.token_values([DOC], [SUMMARY])[0] - 0.5) / 0.25
    torch.testing.assert_close(values[1:], expected[:-1], atol=1e-4, rtol=0)
    assert not torch.allclose(expected[:-1], expected[1:], atol=1e-3)


def test_rm_cli_policy_backbone_then_rl_with_it(seq2seq_dirs, s2s_data, tmp_path):
    out = tmp_path / "rm"
    assert main(["rm", "train", "--kind", "synthetic", "--data", str(s2s_data), "--out", str(out),
                 "--backbone", "policy", "--model", str(seq2seq_dirs["led"]), "--steps", "2", "--batch-size", "2",
                 "--max-length", "96", "--max-summary-tokens", "24", "--lr", "1e-3"]) == 0
    from sumrl.rewards.reward_model import load_reward_model

    rm = load_reward_model(out)
    a, b = rm.score([DOC], [SUMMARY]), rm.score([DOC], [SUMMARY])
    assert a == pytest.approx(b) and len(a) == 1
    rl = tmp_path / "rl"
    assert main(["rl", "--policy", str(seq2seq_dirs["led"]), "--data", str(s2s_data), "--out", str(rl),
                 "--reward", f"rm:{out}", "--batch-size", "2", "--max-new-tokens", "6", "--max-prompt-tokens", "64",
                 "--no-progress", "--no-tensorboard", "--steps", "1", "--eval-every", "0", "--no-bf16",
                 "--value-model", "adapter"]) == 0


def test_leds_value_projection_is_not_mistaken_for_the_value_adapter(seq2seq_dirs):
    """LED's Longformer attention has a module named ``value``: its policy-LoRA weights belong to
    the policy, only the ``"value"`` adapter's weights to the critic."""
    from sumrl.models.loading import load_model
    from sumrl.models.lora import add_lora
    from sumrl.rl.trainer import critic_split
    from sumrl.rl.value import VALUE_ADAPTER

    model, _ = load_model(str(seq2seq_dirs["led"]))
    model = add_lora(model, r=4, alpha=8)
    model.add_adapter(VALUE_ADAPTER, model.peft_config["default"])
    params = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    split = critic_split(params)
    names = {id(p): n for n, p in params}
    assert any(".value.lora_A.default." in names[id(p)] for p in split["policy"])
    assert all(f".{VALUE_ADAPTER}.weight" in names[id(p)] for p in split["critic"]) and split["critic"]
    assert len(split["policy"]) == len(split["critic"])


def test_bench_seq2seq_smoke(capsys):
    """benchmarks/bench_seq2seq.py (shared vs per-row encoder) runs, and both paths agree."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_seq2seq.py"
    spec = importlib.util.spec_from_file_location("bench_seq2seq", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke"]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| 64 |")]
    assert len(rows) == 3 and "same tokens" in rows[0]
    assert all(float(r.split("|")[-2]) < 1e-5 for r in rows[1:])
