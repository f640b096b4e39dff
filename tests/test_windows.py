"""One source-window rule: the sim_src metric (SentenceEncoder.encode_long) and the relevance /
coverage rewards (EmbeddingCache.source_windows) embed the same windows of a document."""

from __future__ import annotations

import torch

from sumrl.models.encoder import EMBEDDING_DIM, SentenceEncoder, sample_windows, split_windows


def _doc(n_windows: int, window_words: int = 3) -> str:
    return " ".join(f"w{k}" for k in range(n_windows * window_words))


def test_sample_windows_evenly_spaced_first_and_last_included():
    doc = _doc(45)
    wins = sample_windows(doc, 3, 16)
    all_wins = split_windows(doc, 3)
    # round(k * 44 / 15), k = 0..15, computed by hand: 0 3 6 9 12 15 18 21 23 26 29 32 35 38 41 44
    assert wins == [all_wins[i] for i in (0, 3, 6, 9, 12, 15, 18, 21, 23, 26, 29, 32, 35, 38, 41, 44)]
    assert sample_windows(doc, 3, 0) == all_wins == sample_windows(doc, 3, 45)
    assert sample_windows(doc, 3, 1) == all_wins[:1]
    assert sample_windows("", 3, 4) == []


class _Recorder:
    """Stands in for MiniLM: records the texts it embeds."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen.extend(texts)
        return torch.nn.functional.normalize(torch.ones(len(texts), EMBEDDING_DIM), dim=-1)


def test_metric_and_reward_read_the_same_windows(monkeypatch):
    from sumrl.rewards import metric

    doc = _doc(40, 180)
    rec_metric, rec_reward = _Recorder(), _Recorder()
    enc = SentenceEncoder.__new__(SentenceEncoder)  # no model: only the windowing is under test
    enc._torch = torch
    enc.model = type("M", (), {"config": type("C", (), {"hidden_size": EMBEDDING_DIM})()})()
    monkeypatch.setattr(enc, "encode", rec_metric.encode)
    enc.encode_long([doc], max_windows=16)
    cache = metric.EmbeddingCache()
    monkeypatch.setattr(cache, "_encoder", lambda: rec_reward)
    cache.source_windows(doc, window_words=180, max_windows=16)
    assert rec_metric.seen == rec_reward.seen == sample_windows(doc, 180, 16)
    assert rec_metric.seen[0].startswith("w0 ") and rec_metric.seen[-1].endswith(f"w{40 * 180 - 1}")


def test_encode_long_remembers_a_call_exactly():
    """`sumrl demo` scores six systems on the same papers: the sources' and references'
    embeddings come from the remembered call, bit for bit what recomputing gives."""
    from sumrl.models.encoder import LONG_MEMO_SIZE, get_encoder

    enc = get_encoder()
    enc.__dict__.pop("_long_memo", None)
    texts = [_doc(5, 180), "a short summary of the paper", ""]
    calls = []
    real = enc.encode
    enc.encode = lambda t: calls.append(len(t)) or real(t)
    try:
        first = enc.encode_long(texts, max_windows=3)
        again = enc.encode_long(texts, max_windows=3)
        assert len(calls) == 1  # the second call ran no encoder pass
        assert torch.equal(first, again)
        assert torch.equal(again, enc._encode_long(texts, 180, 3))  # = recomputing (one more pass)
        again.zero_()  # a caller changing its tensor does not change the remembered one
        assert torch.equal(enc.encode_long(texts, max_windows=3), first)
        other = enc.encode_long(texts, max_windows=2)  # other settings: computed, not remembered
        assert len(calls) == 3 and not torch.equal(other, first)
        for k in range(LONG_MEMO_SIZE + 1):  # bounded: the oldest call is forgotten
            enc.encode_long([f"text {k}"])
        assert len(enc._long_memo) == LONG_MEMO_SIZE
        enc.encode_long(texts, max_windows=3)
        assert len(calls) == 3 + (LONG_MEMO_SIZE + 1) + 1
    finally:
        del enc.encode
