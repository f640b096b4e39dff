"""Shared parts of the learned judges (factual consistency, coherence).

* **Human-labelled items** (:func:`frank_items`, :func:`summeval_items`): one row per system
  summary with its human score, split by document with exactly the rule of ``sumrl data pairs``
  (:func:`sumrl.data.splits.hash_split` of ``"<source>:<doc id>"``, seed 0, test fraction 0.2),
  so a judge trained on the ``train`` items never sees a document whose pairs ``sumrl rm
  eval-rewards`` holds out.
* **Source windows and alignment** (:class:`SourceWindows`): the source is cut at sentence
  boundaries into chunks of at most ``chunk_words`` words; window j is chunk j followed by chunk
  j+1 (so evidence that straddles a chunk boundary is whole in one window). Each summary sentence
  is aligned to its ``top_k`` windows by BM25 (``bm25s``) -- lexical retrieval, because the
  errors a consistency judge must catch are mostly in names, numbers and words, and BM25 costs
  microseconds per query for any document length. Only the retrieved windows are encoded.
* **Late-interaction cross-encoder** (:class:`PairEncoder`): MiniLM's bottom layers encode the
  claim and the evidence window *separately* (so a window's bottom states are computed once and
  cached however many summaries of the document are scored -- the PreTTR idea, MacAvaney et al.
  2020); the top ``train_layers`` layers run on the concatenation and attend across both, then a
  linear head gives one logit per (claim, evidence) pair.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from sumrl.config import opt
from sumrl.errors import ConfigError, DataError, SumrlError


@dataclass
class JudgeTrainOptions:
    """What both judge trainers' configs share: where the judge goes and where the human data is."""

    out: str = opt("", "output folder (config.json, model.safetensors, metrics.json)")
    shared_dir: str | None = opt(None, "folder with FRANK and SummEval (default: $SUMRL_SHARED_DATA, else "
                                       "../shared/data or shared/data from the current directory)")

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("missing --out (the judge folder to write)")


# --------------------------------------------------------------------------- human-labelled items


@dataclass
class JudgedSummary:
    source: str  # frank | summeval
    doc_id: str  # the pair id used by `sumrl data pairs` ("frank:<id>")
    document: str
    summary: str
    system: str
    scores: dict  # frank: {"factuality": 0..1}; summeval: {coherence, consistency, fluency, relevance} 1..5
    split: str
    dataset: str | None = None
    reference: list[str] | None = None


def _split(doc_id: str, seed: int = 0, test_fraction: float = 0.2) -> str:
    from sumrl.data.splits import hash_split

    return hash_split(doc_id, seed, test_fraction, val_fraction=0.0)


def frank_items(root: str | Path, seed: int = 0, test_fraction: float = 0.2) -> list[JudgedSummary]:
    """Every FRANK system summary with its human factuality (0..1 = share of sentences without error)."""
    from sumrl.data.pairs import FOLDERS, iter_shared_jsonl, literal_mapping, need_field

    path = Path(root) / FOLDERS["frank"] / "frank_docs_with_summaries.jsonl"
    out = []
    for ln, r in iter_shared_jsonl(path):
        summaries = literal_mapping(need_field(r, "summaries", path, ln), path, ln, "summaries")
        fact = literal_mapping(need_field(r, "human_factuality", path, ln), path, ln, "human_factuality")
        doc_id = f"frank:{need_field(r, 'id', path, ln)}"
        for m, v in fact.items():
            if m not in summaries:
                continue
            try:
                score = float(v)
            except (TypeError, ValueError):
                raise DataError(f"factuality of {m} is not a number: {v!r}", file=str(path), line=ln,
                                field="human_factuality") from None
            out.append(JudgedSummary("frank", doc_id, need_field(r, "article", path, ln), summaries[m], m,
                                     {"factuality": score}, _split(doc_id, seed, test_fraction), r.get("dataset"),
                                     [r["reference"]] if r.get("reference") else []))
    return out


def summeval_items(root: str | Path, seed: int = 0, test_fraction: float = 0.2) -> list[JudgedSummary]:
    """Every SummEval system summary with its mean expert scores (1..5)."""
    from sumrl.data.pairs import FOLDERS, read_shared_json

    path = Path(root) / FOLDERS["summeval"] / "summeval_100docs_16systems_expert_scores.json"
    data = read_shared_json(path)
    out = []
    for doc, d in data.items():
        doc_id = f"summeval:{doc}"
        refs = [r for r in (d.get("ref_summs") or [d.get("ref_summ")]) if r]
        for name, s in (d.get("sys_summs") or {}).items():
            sc = s.get("scores") or {}
            keep = {k: float(sc[k]) for k in ("coherence", "consistency", "fluency", "relevance") if k in sc}
            if len(keep) < 4:
                raise DataError(f"system {name} of document {doc} lacks expert scores", file=str(path),
                                field=f"sys_summs.{name}.scores")
            out.append(JudgedSummary("summeval", doc_id, d["src"], s["sys_summ"], name, keep,
                                     _split(doc_id, seed, test_fraction), "cnndm", refs))
    return out


def judged_splits(shared_dir: str | None, doc_limit: int | None,
                  sources: Sequence[str] = ("summeval", "frank")) -> tuple[list[JudgedSummary], list[JudgedSummary]]:
    """(train, test) human-judged summaries of ``sources`` (in that order) from the shared data, each
    cut to ``doc_limit`` documents; no document is in both (the split is by document id)."""
    from sumrl.data.pairs import shared_data_dir

    root = shared_data_dir(shared_dir)
    read = {"summeval": summeval_items, "frank": frank_items}
    items = [it for s in sources for it in read[s](root)]
    train = limit_documents([it for it in items if it.split == "train"], doc_limit)
    test = limit_documents([it for it in items if it.split == "test"], doc_limit)
    assert not {it.doc_id for it in train} & {it.doc_id for it in test}
    return train, test


def limit_documents(items: Sequence[JudgedSummary], n: int | None) -> list[JudgedSummary]:
    """Items of the first ``n`` distinct documents of each source (file order); all when ``n`` is None."""
    if not n:
        return list(items)
    keep: dict[str, list[str]] = {}
    out = []
    for it in items:
        docs = keep.setdefault(it.source, [])
        if it.doc_id not in docs and len(docs) < n:
            docs.append(it.doc_id)
        if it.doc_id in docs:
            out.append(it)
    return out


# --------------------------------------------------------------------------- sentences and windows


def sentence_spans(text: str) -> list[tuple[int, int]]:
    from sumrl.evaluation.text import sentence_spans as spans

    return spans(text or "")


_WORD_RE = re.compile(r"\w+", re.UNICODE)


def _stopwords() -> frozenset:
    import bm25s.stopwords as sw

    return frozenset(sw.STOPWORDS_EN)


def content_words(text: str) -> list[str]:
    """Lower-cased word tokens that are not English stop words (the lexical-support features)."""
    stop = _stopwords()
    return [w for w in _WORD_RE.findall(text.lower()) if w not in stop]


def chunk_sentences(document: str, chunk_words: int) -> list[str]:
    """Consecutive source sentences packed into chunks of at most ``chunk_words`` words (a longer
    sentence is cut into pieces of ``chunk_words`` words)."""
    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    for s, e in sentence_spans(document):
        ws = document[s:e].split()
        while len(ws) > chunk_words:
            if cur:
                chunks.append(" ".join(cur))
                cur, n = [], 0
            chunks.append(" ".join(ws[:chunk_words]))
            ws = ws[chunk_words:]
        if not ws:
            continue
        if n + len(ws) > chunk_words and cur:
            chunks.append(" ".join(cur))
            cur, n = [], 0
        cur.extend(ws)
        n += len(ws)
    if cur:
        chunks.append(" ".join(cur))
    return chunks


def make_windows(document: str, chunk_words: int = 40) -> list[str]:
    """Window j = chunk j + chunk j+1 (the last chunk alone when the document has one chunk)."""
    chunks = chunk_sentences(document, chunk_words)
    if len(chunks) <= 1:
        return chunks
    return [chunks[j] + " " + chunks[j + 1] for j in range(len(chunks) - 1)]


class SourceWindows:
    """One document's windows and their BM25 index (built once per document, see module doc)."""

    def __init__(self, document: str, chunk_words: int = 40):
        import bm25s

        self.windows = make_windows(document, chunk_words)
        self.doc_words = set(content_words(document))
        toks = [content_words(w) for w in self.windows]
        self.doc_bigrams = set()
        for t in [content_words(document)]:
            self.doc_bigrams.update(zip(t, t[1:]))
        self._bm25 = None
        if self.windows and any(toks):
            self._bm25 = bm25s.BM25()
            # bm25s wants (ids, vocab); build them from our own tokenisation so queries match
            vocab: dict[str, int] = {}
            ids = [[vocab.setdefault(w, len(vocab)) for w in t] for t in toks]
            self._vocab = vocab
            self._bm25.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)

    def top(self, claim: str, k: int) -> list[int]:
        """Indices of the ``k`` windows most related to ``claim`` (BM25; ties and no-overlap claims
        fall back to document order, i.e. the lead)."""
        n = len(self.windows)
        if n == 0:
            return []
        k = min(k, n)
        if self._bm25 is None:
            return list(range(k))
        q = [self._vocab[w] for w in content_words(claim) if w in self._vocab]
        if not q:
            return list(range(k))
        scores = self._bm25.get_scores([w for w in q])
        order = sorted(range(n), key=lambda j: (-float(scores[j]), j))
        return order[:k]


class WindowCache:
    """LRU of :class:`SourceWindows` by (document hash, chunk size)."""

    def __init__(self, max_docs: int = 64):
        self._d: OrderedDict[tuple, SourceWindows] = OrderedDict()
        self.max_docs = max_docs

    def get(self, document: str, chunk_words: int) -> SourceWindows:
        key = (hashlib.sha1(document.encode("utf-8", "surrogatepass")).hexdigest(), chunk_words)
        hit = self._d.get(key)
        if hit is None:
            hit = SourceWindows(document, chunk_words)
            self._d[key] = hit
            while len(self._d) > self.max_docs:
                self._d.popitem(last=False)
        else:
            self._d.move_to_end(key)
        return hit


WINDOWS = WindowCache()


def lexical_features(claim: str, sw: SourceWindows) -> list[float]:
    """[content-word precision vs the document, content-bigram precision vs the document,
    0 (placeholder for :func:`with_fact_feature`), log(1 + claim words)]."""
    cw = content_words(claim)
    p1 = sum(w in sw.doc_words for w in cw) / len(cw) if cw else 1.0
    bg = list(zip(cw, cw[1:]))
    p2 = sum(b in sw.doc_bigrams for b in bg) / len(bg) if bg else p1
    return [p1, p2, 0.0, math.log1p(len(claim.split()))]


def with_fact_feature(feats: list[float], claim: str, document: str) -> list[float]:
    from sumrl.evaluation.facts import extract_facts
    from sumrl.evaluation.overlap import get_source_index

    index = get_source_index(document).facts
    bad = sum(1 for f in extract_facts(claim) if not index.supports(f))
    out = list(feats)
    out[2] = float(bad)
    return out


# --------------------------------------------------------------------------- late-interaction encoder


class PairEncoder(nn.Module):
    """MiniLM with its top ``train_layers`` layers run on [claim states ; evidence states]."""

    def __init__(self, train_layers: int = 2, max_claim_tokens: int = 64, max_evidence_tokens: int = 112,
                 encoder_path: str | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from sumrl.models.encoder import encoder_path as default_path

        path = str(encoder_path or default_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModel.from_pretrained(path, attn_implementation="eager")
        n = len(base.encoder.layer)
        if not 1 <= train_layers <= n:
            raise SumrlError(f"train_layers must be between 1 and {n}, got {train_layers}")
        self.config = base.config
        self.embeddings = base.embeddings
        self.bottom = nn.ModuleList(base.encoder.layer[: n - train_layers])
        self.top = nn.ModuleList(base.encoder.layer[n - train_layers:])
        h = base.config.hidden_size
        self.head = nn.Linear(2 * h, 1)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.02)
        self.train_layers = train_layers
        self.max_claim_tokens, self.max_evidence_tokens = max_claim_tokens, max_evidence_tokens
        for p in [*self.embeddings.parameters(), *self.bottom.parameters()]:
            p.requires_grad_(False)

    @staticmethod
    def _ext_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # additive mask (B, 1, 1, T): 0 for tokens, a large negative for padding
        return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    @torch.no_grad()
    def encode_bottom(self, texts: Sequence[str], evidence: bool) -> list[torch.Tensor]:
        """Bottom-layer states of each text (its own [CLS] ... [SEP]), unpadded, float32."""
        if not texts:
            return []
        max_len = self.max_evidence_tokens if evidence else self.max_claim_tokens
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        tt = torch.full_like(enc["input_ids"], 1 if evidence else 0)
        self.embeddings.eval()  # frozen: never dropout, whatever mode the top is in
        self.bottom.eval()
        h = self.embeddings(input_ids=enc["input_ids"], token_type_ids=tt)
        m = self._ext_mask(enc["attention_mask"], h.dtype)
        for layer in self.bottom:
            h = layer(h, attention_mask=m)
            h = h[0] if isinstance(h, tuple) else h
        lens = enc["attention_mask"].sum(1).tolist()
        return [h[i, :lens[i]].clone() for i in range(len(texts))]

    def forward_pairs(self, claims: Sequence[torch.Tensor], evidence: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B,) logits for pairs of bottom states (claim i with evidence i)."""
        b = len(claims)
        lc = max(c.shape[0] for c in claims)
        le = max(e.shape[0] for e in evidence)
        hdim = claims[0].shape[1]
        h = claims[0].new_zeros(b, lc + le, hdim)
        mask = torch.zeros(b, lc + le)
        cmask = torch.zeros(b, lc + le)
        for i, (c, e) in enumerate(zip(claims, evidence)):
            h[i, :c.shape[0]] = c
            h[i, lc:lc + e.shape[0]] = e
            mask[i, :c.shape[0]] = 1
            mask[i, lc:lc + e.shape[0]] = 1
            cmask[i, :c.shape[0]] = 1
        m = self._ext_mask(mask, h.dtype)
        for layer in self.top:
            h = layer(h, attention_mask=m)
            h = h[0] if isinstance(h, tuple) else h
        cls = h[:, 0]
        mean = (h * cmask[..., None]).sum(1) / cmask.sum(1, keepdim=True).clamp(min=1)
        return self.head(torch.cat([cls, mean], -1)).squeeze(-1)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes (top layers + head): the frozen bottom is reloaded from the package."""
        sd = self.state_dict()
        return {k: v for k, v in sd.items() if k.startswith("top.") or k.startswith("head.")}


class StateCache:
    """LRU of bottom-layer states by text (evidence windows are re-used across summaries of a document)."""

    def __init__(self, max_items: int = 8192):
        self._d: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.max_items = max_items

    def get_many(self, enc: PairEncoder, texts: Sequence[str], evidence: bool, batch_size: int = 32) -> list[torch.Tensor]:
        missing = list(dict.fromkeys(t for t in texts if (evidence, t) not in self._d))
        missing.sort(key=len)  # little padding per batch
        for s in range(0, len(missing), batch_size):
            chunk = missing[s:s + batch_size]
            for t, h in zip(chunk, enc.encode_bottom(chunk, evidence)):
                self._d[(evidence, t)] = h
        out = []
        for t in texts:
            self._d.move_to_end((evidence, t))
            out.append(self._d[(evidence, t)])
        while len(self._d) > self.max_items:
            self._d.popitem(last=False)
        return out


# --------------------------------------------------------------------------- saving / loading


def save_judge(out: str | Path, config: dict, tensors: dict[str, torch.Tensor], metrics: dict | None = None) -> None:
    """Atomic folder: config.json, model.safetensors (bf16: the shipped weights stay a few MB), metrics.json."""
    from safetensors.torch import save_file

    from sumrl.utils.io import atomic_dir, write_json

    with atomic_dir(out) as tmp:
        save_file({k: v.detach().to(torch.bfloat16).contiguous() for k, v in tensors.items()},
                  str(Path(tmp) / "model.safetensors"))
        write_json(Path(tmp) / "config.json", config)
        if metrics is not None:
            write_json(Path(tmp) / "metrics.json", metrics)


def load_judge_files(path: str | Path, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    p = Path(path)
    cfg_path = p / "config.json"
    if not cfg_path.exists() or not (p / "model.safetensors").exists():
        raise SumrlError(f"{p}: not a {kind} judge folder (needs config.json and model.safetensors; train one with "
                         f"`sumrl rm train-{kind} --out DIR`)")
    from sumrl.utils.io import read_json_file

    cfg = read_json_file(cfg_path)
    if not isinstance(cfg, dict) or cfg.get("kind") != kind:
        raise DataError(f"expected kind {kind!r}, found {cfg.get('kind') if isinstance(cfg, dict) else cfg!r}",
                        file=str(cfg_path), field="kind")
    return cfg, {k: v.float() for k, v in load_file(str(p / "model.safetensors")).items()}


def builtin_judge_dir(kind: str) -> Path:
    """Where the shipped weights of a judge live inside the package."""
    return Path(__file__).resolve().parents[1] / "builtin_judges" / kind


def resolve_judge_path(path: str | None, kind: str) -> Path:
    p = Path(path).expanduser() if path else builtin_judge_dir(kind)
    if not p.exists():
        raise SumrlError(f"judge folder {p} not found" + ("" if path else
                         f" (the package ships none; train one with `sumrl rm train-{kind} --out DIR` and pass "
                         f"path: DIR)"))
    return p


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit_logistic(x: torch.Tensor, groups: list[list[int]], targets: torch.Tensor, l2: float = 1e-3,
                 steps: int = 300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multiple-instance logistic calibration: p_i = sigmoid(w . z_i + b) for each sentence row of
    ``x`` (standardised), a summary's prediction is the mean p of its sentences (``groups``), loss =
    BCE(mean p, soft target) + l2 |w|^2. Returns (w, b, feature mean, feature std). Full-batch LBFGS:
    deterministic, a few seconds."""
    mu = x.mean(0)
    sd = x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")
    owner = torch.tensor([g for g, rows in enumerate(groups) for _ in rows])
    order = torch.tensor([r for rows in groups for r in rows])
    counts = torch.tensor([len(rows) for rows in groups], dtype=torch.float32)

    def closure():
        opt.zero_grad()
        p = torch.sigmoid(z[order] @ w + b)
        mean = torch.zeros(len(groups)).index_add(0, owner, p) / counts
        mean = mean.clamp(1e-6, 1 - 1e-6)
        loss = nn.functional.binary_cross_entropy(mean, targets) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), mu, sd


def summary_targets_from(items: Sequence[JudgedSummary]) -> list[float]:
    """FRANK factuality as is (0..1); SummEval consistency mapped from 1..5 to 0..1."""
    out = []
    for it in items:
        if it.source == "frank":
            out.append(it.scores["factuality"])
        else:
            out.append((it.scores["consistency"] - 1.0) / 4.0)
    return out
