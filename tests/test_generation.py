import pytest

from sumrl.data.schema import Example
from sumrl.errors import SumrlError
from sumrl.generation.summarize import GenerationSettings, generate_texts, summarize
from sumrl.models.loading import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _docs():
    short = Example("s", "The meeting discussed the budget.", ["budget"])
    long = Example("l", " ".join(f"Sentence {i} says the plan changed in 2021." for i in range(120)), ["plan"],
                   query="What changed?")
    return [short, long]


def test_strategies_recorded(tiny):
    model, tok = tiny
    st = GenerationSettings(max_new_tokens=8, max_input_tokens=160, progress=False, strategy="truncate")
    outs = summarize(model, tok, _docs(), st)
    assert [o.strategy for o in outs] == ["none", "truncate"]
    assert outs[1].n_input_tokens <= 160 < outs[1].n_document_tokens
    st.strategy = "chunk"
    outs = summarize(model, tok, _docs(), st)
    assert outs[0].strategy == "none"
    assert outs[1].strategy == "chunk" and outs[1].n_chunks >= 2 and outs[1].depth >= 1
    assert len(outs[1].chunk_summaries) == outs[1].n_chunks
    assert outs[1].n_input_tokens <= 160


def test_unknown_strategy_and_tiny_budget(tiny):
    model, tok = tiny
    with pytest.raises(SumrlError, match="unknown strategy"):
        summarize(model, tok, _docs(), GenerationSettings(strategy="magic", progress=False))
    with pytest.raises(SumrlError, match="too small"):
        summarize(model, tok, _docs(), GenerationSettings(max_input_tokens=10, progress=False))


def test_batched_greedy_equals_one_by_one(tiny):
    """Left padding must not change greedy outputs."""
    model, tok = tiny
    prompts = ["short prompt", "a much longer prompt with many more words in it than the first one"]
    st = GenerationSettings(max_new_tokens=6, batch_size=2, progress=False)
    batched = generate_texts(model, tok, prompts, st)
    st.batch_size = 1
    single = generate_texts(model, tok, prompts, st)
    assert [b[0] for b in batched] == [s[0] for s in single]


def test_finished_flag_and_token_count(tiny):
    """Force EOS to be the most likely token: generation must stop and report finished."""
    import torch

    model, tok = tiny
    with torch.no_grad():
        model.lm_head.weight.data = model.lm_head.weight.data.clone()
        model.lm_head.weight.data[tok.eos_token_id] *= 0
        model.lm_head.bias = None
    orig = model.lm_head.forward

    def fwd(x):
        out = orig(x)
        out[..., tok.eos_token_id] = 1e4
        return out

    model.lm_head.forward = fwd
    try:
        (text, n, finished, _), = generate_texts(model, tok, ["hello"], GenerationSettings(max_new_tokens=5, progress=False))
    finally:
        model.lm_head.forward = orig
    assert finished and n == 1 and text == ""


def test_no_repeat_guard_counts_only_generated_tokens():
    """The decoding guard bans a repeated n-gram of the summary, never an n-gram of the prompt
    (transformers' own no_repeat_ngram_size would forbid copying any phrase of the document)."""
    import torch
    from transformers import NoRepeatNGramLogitsProcessor

    from sumrl.generation.summarize import no_repeat_processor

    ids = torch.tensor([[5, 6, 5, 5]])  # prompt [5, 6, 5] (width 3), generated so far [5]
    scores = torch.zeros(1, 10)
    assert torch.isinf(NoRepeatNGramLogitsProcessor(2)(ids, scores.clone())[0, 6])  # "5 6" is in the prompt
    assert not torch.isinf(no_repeat_processor(2, 3)(ids, scores.clone())).any()  # ... but not in the summary
    ids = torch.tensor([[5, 6, 5, 8, 9, 8]])  # generated [8, 9, 8]: "8 9" would repeat
    out = no_repeat_processor(2, 3)(ids, scores.clone())
    assert torch.isinf(out[0, 9]) and torch.isinf(out).sum() == 1


def test_no_repeat_guard_in_generation(tiny, monkeypatch):
    import sumrl.generation.summarize as summ

    model, tok = tiny
    prompts = ["short prompt", "a much longer prompt with many more words in it than the first one"]
    captured = []
    real = summ.generate_new_tokens

    def spy(*a, **kw):  # the generated token ids, before decoding
        new = real(*a, **kw)
        captured.extend(row.tolist() for row in new)
        return new

    monkeypatch.setattr(summ, "generate_new_tokens", spy)

    def repeats(t: list[int]) -> int:
        grams = [tuple(t[i:i + 3]) for i in range(len(t) - 2)]
        return len(grams) - len(set(grams))

    generate_texts(model, tok, prompts, GenerationSettings(max_new_tokens=40, batch_size=2, progress=False))
    before, captured[:] = list(captured), []
    generate_texts(model, tok, prompts, GenerationSettings(max_new_tokens=40, batch_size=2, progress=False,
                                                           no_repeat_ngram=3))
    assert sum(map(repeats, before)) > 0  # the tiny random model loops without the guard ...
    assert [repeats(t) for t in captured] == [0, 0] and all(len(t) == 40 for t in captured)  # ... not with it
