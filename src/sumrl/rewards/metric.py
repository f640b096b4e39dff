"""Metric rewards: ROUGE, length, EOS, repetition, copy, relevance/coverage, faithfulness, coherence.

Every reward follows :mod:`sumrl.rewards.base`. Conventions (also in docs/rewards.md):

* components are keyed ``<name>`` (the reward's own total, before its weight) and
  ``<name>/<part>`` (diagnostics); the composite prefixes them with ``rewards/``;
* *localising* rewards (repetition, copy, faithfulness, coherence's repetition part, length in
  reference mode) put their penalty on the generated tokens that carry the problem when
  ``RewardInput.token_ids`` (and ``tokenizer``) are given. Without token ids the same total is
  put into the sequence score, so ``RewardOutput.totals()`` is identical either way;
* per-document work (n-gram/fact indexes, source-window embeddings) is cached by document text:
  in GRPO the same document appears once per sampled summary.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections import OrderedDict
from typing import Any, Sequence

import torch

from sumrl.errors import ConfigError, SumrlError
from sumrl.models.encoder import EMBEDDING_DIM
from sumrl.rewards.align import spread_penalties, token_char_spans
from sumrl.rewards.base import RewardInput, RewardOutput

# =========================================================================== shared helpers


def token_spans(inp: RewardInput) -> list[list[tuple[int, int]]] | None:
    """Char spans of each generated token in its summary (None without token ids); cached on ``inp``.

    The summary must be the decode of its tokens; a decode that merely has extra leading/trailing
    whitespace (a trainer that strips) is accepted by shifting the spans.
    """
    if inp.token_ids is None:
        return None
    if inp.token_spans is not None:
        return inp.token_spans
    if inp.tokenizer is None:
        raise SumrlError("RewardInput.token_ids given without a tokenizer: cannot align rewards to tokens")
    if len(inp.token_ids) != len(inp.summaries):
        raise SumrlError(f"RewardInput has {len(inp.summaries)} summaries but {len(inp.token_ids)} token-id lists")
    out = []
    for i, (ids, summary) in enumerate(zip(inp.token_ids, inp.summaries)):
        decoded = inp.tokenizer.decode(list(ids), skip_special_tokens=True)
        spans = token_char_spans(inp.tokenizer, ids, text=decoded)
        if decoded != summary:
            off = decoded.find(summary) if summary else 0
            if off < 0 or decoded.strip() != summary.strip():
                raise SumrlError(f"summary {i} is not the decode of its token_ids "
                                 f"({summary[:40]!r} vs {decoded[:40]!r}); per-token rewards need them equal")
            spans = [(max(0, min(s - off, len(summary))), max(0, min(e - off, len(summary)))) for s, e in spans]
        out.append(spans)
    inp.token_spans = out
    return out


def localised_output(inp: RewardInput, name: str, base: Sequence[float],
                     penalties: Sequence[Sequence[tuple[tuple[int, int], float]]],
                     components: dict[str, Sequence[float]] | None = None,
                     per_token: bool = True) -> RewardOutput:
    """Build a RewardOutput from a sequence-level part and char-span penalties.

    With token ids (and ``per_token``) each penalty is spread evenly over the tokens carrying its
    span; otherwise it is added to the score. ``components[name]`` is the reward's total.
    """
    n = len(inp)
    spans = token_spans(inp) if per_token else None
    scores = [float(b) for b in base]
    token_rewards = None
    if spans is not None:
        token_rewards = []
        for i in range(n):
            vals, leftover = spread_penalties(len(spans[i]), spans[i], penalties[i])
            scores[i] += leftover
            token_rewards.append(torch.tensor(vals, dtype=torch.float32))
    else:
        for i in range(n):
            scores[i] += sum(v for _, v in penalties[i])
    totals = [float(base[i]) + sum(v for _, v in penalties[i]) for i in range(n)]
    comps = {name: torch.tensor(totals, dtype=torch.float32)}
    for k, v in (components or {}).items():
        comps[f"{name}/{k}"] = torch.tensor([float(x) for x in v], dtype=torch.float32)
    return RewardOutput(scores=torch.tensor(scores, dtype=torch.float32), token_rewards=token_rewards,
                        components=comps)


def sequence_output(name: str, scores: Sequence[float], components: dict[str, Sequence[float]] | None = None) -> RewardOutput:
    t = torch.tensor([float(s) for s in scores], dtype=torch.float32)
    comps = {name: t.clone()}
    for k, v in (components or {}).items():
        comps[f"{name}/{k}"] = torch.tensor([float(x) for x in v], dtype=torch.float32)
    return RewardOutput(scores=t, token_rewards=None, components=comps)


def _word_count_in(text: str, span: tuple[int, int]) -> int:
    return len(text[span[0]:span[1]].split())


class MetricReward:
    """Base class: options are the keyword arguments of ``__init__`` (used for recipe validation)."""

    name: str = "metric"
    per_token: bool = False  # whether the reward can return token_rewards
    needs_references: bool = False

    @classmethod
    def options(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p not in ("self", "name")]

    def __call__(self, inp: RewardInput) -> RewardOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, inp: RewardInput) -> None:
        n = len(inp.summaries)
        if len(inp.documents) != n or len(inp.references) != n or len(inp.queries) != n:
            raise SumrlError(f"reward '{self.name}': RewardInput fields have different lengths "
                             f"(documents {len(inp.documents)}, summaries {n}, references {len(inp.references)}, "
                             f"queries {len(inp.queries)})")
        if self.needs_references:
            for i, refs in enumerate(inp.references):
                if not refs:
                    raise SumrlError(f"reward '{self.name}' needs reference summaries; example {i} has none")


# =========================================================================== reference-based


class RougeReward(MetricReward):
    """Mean ROUGE F1 (or P/R) against the references (best reference per type)."""

    needs_references = True

    def __init__(self, name: str = "rouge", types: Sequence[str] = ("rouge1", "rouge2", "rougeL"), stat: str = "f"):
        from sumrl.evaluation.rouge import ROUGE_TYPES

        self.name = name
        self.types = list(types)
        bad = [t for t in self.types if t not in ROUGE_TYPES]
        if bad or not self.types:
            raise ConfigError(f"reward '{name}': option 'types' must be a non-empty subset of {list(ROUGE_TYPES)}, got {types!r}")
        if stat not in ("f", "p", "r"):
            raise ConfigError(f"reward '{name}': option 'stat' must be f, p or r, got {stat!r}")
        self.stat = stat

    def __call__(self, inp: RewardInput) -> RewardOutput:
        from sumrl.evaluation.rouge import rouge

        self._check(inp)
        parts: dict[str, list[float]] = {t: [] for t in self.types}
        scores = []
        for summary, refs in zip(inp.summaries, inp.references):
            r = rouge(summary, refs)
            vals = [r[f"{t}_{self.stat}"] for t in self.types]
            for t, v in zip(self.types, vals):
                parts[t].append(v)
            scores.append(sum(vals) / len(vals))
        return sequence_output(self.name, scores, parts if len(self.types) > 1 else None)


class LengthReward(MetricReward):
    """Length control. ``mode=reference``: ``per_token_penalty`` on every generated token beyond
    the first reference's length in the policy tokenizer's tokens (the last-mile paper's -2.5), and
    ``short_penalty`` (default 0: the paper's one-sided penalty) per reference token the summary
    falls short by, as a sequence-level score (no single token is to blame for stopping early);
    ``mode=ratio``: smooth ``-coef * ln(len/target)^2`` with target = source words / compression.

    Why ``short_penalty``: with the one-sided penalty, 20 GRPO steps on the default model learned to
    stop early -- no token beyond the reference, but summaries of 36 words for references of 116
    (docs/rl.md)."""

    per_token = True

    def __init__(self, name: str = "length", mode: str = "reference", per_token_penalty: float = -2.5,
                 compression: float = 10.0, coef: float = 1.0, min_words: int = 10, max_words: int = 400,
                 short_penalty: float = 0.0):
        self.name = name
        if short_penalty > 0:
            raise ConfigError(f"reward '{name}': option 'short_penalty' is a penalty per missing token and must "
                              f"be <= 0, got {short_penalty}")
        self.short_penalty = float(short_penalty)
        if mode not in ("reference", "ratio"):
            raise ConfigError(f"reward '{name}': option 'mode' must be reference or ratio, got {mode!r}")
        if compression <= 0 or min_words < 1 or max_words < min_words:
            raise ConfigError(f"reward '{name}': need compression > 0 and 1 <= min_words <= max_words")
        self.mode, self.per_token_penalty, self.compression = mode, float(per_token_penalty), float(compression)
        self.coef, self.min_words, self.max_words = float(coef), int(min_words), int(max_words)
        self.needs_references = mode == "reference"
        self._ref_len_cache: OrderedDict[str, int] = OrderedDict()

    def _ref_tokens(self, tokenizer: Any, ref: str) -> int:
        key = ref
        n = self._ref_len_cache.get(key)
        if n is None:
            n = len(tokenizer(ref, add_special_tokens=False)["input_ids"])
            self._ref_len_cache[key] = n
            if len(self._ref_len_cache) > 4096:
                self._ref_len_cache.popitem(last=False)
        return n

    def __call__(self, inp: RewardInput) -> RewardOutput:
        from sumrl.evaluation.text import words

        self._check(inp)
        n = len(inp)
        if self.mode == "ratio":
            scores, target_l, length_l = [], [], []
            for doc, summary in zip(inp.documents, inp.summaries):
                target = min(self.max_words, max(self.min_words, len(words(doc)) / self.compression))
                length = max(len(words(summary)), 1)  # empty summary counts as 1 word: finite penalty
                scores.append(-self.coef * math.log(length / target) ** 2)
                target_l.append(target)
                length_l.append(len(words(summary)))
            return sequence_output(self.name, scores, {"target_words": target_l, "words": length_l})
        # reference mode: unit = policy tokens when a tokenizer is known, else whitespace words
        tok = inp.tokenizer
        if inp.token_ids is not None and tok is None:
            raise SumrlError(f"reward '{self.name}': token_ids given without a tokenizer (reference length "
                             "must be counted in the same tokens)")
        ref_len, gen_len = [], []
        for i in range(n):
            ref = inp.references[i][0]
            if tok is not None:
                ref_len.append(self._ref_tokens(tok, ref))
                gen_len.append(len(inp.token_ids[i]) if inp.token_ids is not None
                               else len(tok(inp.summaries[i], add_special_tokens=False)["input_ids"]))
            else:
                ref_len.append(len(words(ref)))
                gen_len.append(len(words(inp.summaries[i])))
        excess = [max(0, g - r) for g, r in zip(gen_len, ref_len)]
        short = [max(0, r - g) for g, r in zip(gen_len, ref_len)]
        totals = [self.per_token_penalty * e + self.short_penalty * m for e, m in zip(excess, short)]
        token_rewards = None
        scores = list(totals)
        if inp.token_ids is not None:
            token_rewards = []
            for i in range(n):
                t = torch.zeros(len(inp.token_ids[i]))
                t[ref_len[i]:] = self.per_token_penalty  # exactly the tokens beyond the reference length
                token_rewards.append(t)
            scores = [self.short_penalty * m for m in short]
        comps = {self.name: torch.tensor(totals, dtype=torch.float32),
                 f"{self.name}/excess": torch.tensor(excess, dtype=torch.float32)}
        if self.short_penalty:
            comps[f"{self.name}/short"] = torch.tensor(short, dtype=torch.float32)
        return RewardOutput(scores=torch.tensor(scores, dtype=torch.float32), token_rewards=token_rewards,
                            components=comps)


class EosReward(MetricReward):
    """``-penalty`` when the summary was cut off (no EOS); 0 when finished or unknown."""

    def __init__(self, name: str = "eos", penalty: float = 1.0):
        self.name, self.penalty = name, float(penalty)

    def __call__(self, inp: RewardInput) -> RewardOutput:
        self._check(inp)
        fin = inp.finished if inp.finished is not None else [None] * len(inp)
        return sequence_output(self.name, [(-self.penalty if f is False else 0.0) for f in fin],
                               {"cutoff": [1.0 if f is False else 0.0 for f in fin]})


# =========================================================================== localising


class RepetitionReward(MetricReward):
    """``-penalty * (share of summary words inside repeated n-grams)``, on the repeating tokens."""

    per_token = True

    def __init__(self, name: str = "repetition", n: int = 3, penalty: float = 1.0):
        if n < 1:
            raise ConfigError(f"reward '{name}': option 'n' must be >= 1")
        self.name, self.n, self.penalty = name, int(n), float(penalty)

    def penalties(self, summary: str) -> list[tuple[tuple[int, int], float]]:
        from sumrl.evaluation.overlap import repeated_spans

        total = len(summary.split())
        if not total:
            return []
        return [(sp, -self.penalty * _word_count_in(summary, sp) / total) for sp in repeated_spans(summary, self.n)]

    def __call__(self, inp: RewardInput) -> RewardOutput:
        from sumrl.evaluation.overlap import repeated_ngram_rate

        self._check(inp)
        pens = [self.penalties(s) for s in inp.summaries]
        return localised_output(inp, self.name, [0.0] * len(inp), pens,
                                {f"rep{self.n}": [repeated_ngram_rate(s, self.n) for s in inp.summaries]})


class CopyReward(MetricReward):
    """``-penalty * (share of summary words in verbatim source copies of >= min_words words)``."""

    per_token = True

    def __init__(self, name: str = "copy", min_words: int = 8, penalty: float = 1.0):
        if min_words < 2:
            raise ConfigError(f"reward '{name}': option 'min_words' must be >= 2")
        self.name, self.min_words, self.penalty = name, int(min_words), float(penalty)

    def __call__(self, inp: RewardInput) -> RewardOutput:
        from sumrl.evaluation.overlap import copy_spans, get_source_index

        self._check(inp)
        pens, rates = [], []
        for doc, summary in zip(inp.documents, inp.summaries):
            total = len(summary.split())
            spans = copy_spans(summary, get_source_index(doc), self.min_words) if total else []
            pens.append([(sp, -self.penalty * _word_count_in(summary, sp) / total) for sp in spans])
            rates.append(sum(_word_count_in(summary, sp) for sp in spans) / total if total else 0.0)
        return localised_output(inp, self.name, [0.0] * len(inp), pens, {"copy_rate": rates})


class FaithfulnessReward(MetricReward):
    """``-penalty`` per number/name of the summary that occurs nowhere in the full source,
    spread over the tokens of that number/name."""

    per_token = True

    def __init__(self, name: str = "faithfulness", penalty: float = 0.5, kinds: Sequence[str] = ("number", "name")):
        bad = [k for k in kinds if k not in ("number", "name")]
        if bad or not kinds:
            raise ConfigError(f"reward '{name}': option 'kinds' must be a subset of ['number', 'name'], got {kinds!r}")
        self.name, self.penalty, self.kinds = name, float(penalty), tuple(kinds)

    def __call__(self, inp: RewardInput) -> RewardOutput:
        from sumrl.evaluation.facts import extract_facts
        from sumrl.evaluation.overlap import get_source_index

        self._check(inp)
        pens, n_bad, prec = [], [], []
        for doc, summary in zip(inp.documents, inp.summaries):
            index = get_source_index(doc).facts  # built once per document text (LRU)
            facts = [f for f in extract_facts(summary) if f.kind in self.kinds]
            bad = [f for f in facts if not index.supports(f)]
            pens.append([((f.start, f.end), -self.penalty) for f in bad])
            n_bad.append(len(bad))
            prec.append((len(facts) - len(bad)) / len(facts) if facts else 1.0)
        return localised_output(inp, self.name, [0.0] * len(inp), pens,
                                {"unsupported": n_bad, "fact_precision": prec})


# =========================================================================== embedding-based


class EmbeddingCache:
    """Process-wide MiniLM embeddings cached by text (LRU), and source windows cached per document.

    Source rule (documented in docs/rewards.md): the document is cut into consecutive windows of
    ``window_words`` whitespace words (180 = ~230 word pieces, inside MiniLM's window); when there
    are more than ``max_windows``, that many windows evenly spaced over the whole document are
    used (first and last included), so cost is bounded for any document length while every part
    of the document can be represented. ``max_windows=0`` uses all windows.
    """

    def __init__(self, max_texts: int = 20000, max_docs: int = 64):
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._docs: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.max_texts, self.max_docs = max_texts, max_docs
        self.encoder_path: str | None = None

    def _encoder(self) -> Any:
        from sumrl.models.encoder import get_encoder

        return get_encoder(self.encoder_path)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit embeddings (zero rows for empty texts), encoding only unseen texts."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
        if missing:
            embs = self._encoder().encode(missing)
            for t, e in zip(missing, embs):
                self._texts[t] = e
            while len(self._texts) > self.max_texts:
                self._texts.popitem(last=False)
        for t in texts:
            self._texts.move_to_end(t)
        if not texts:
            return torch.zeros(0, EMBEDDING_DIM)
        return torch.stack([self._texts[t] for t in texts])

    def source_windows(self, document: str, window_words: int = 180, max_windows: int = 16) -> torch.Tensor:
        from sumrl.models.encoder import sample_windows

        key = (hashlib.sha1(document.encode("utf-8", "surrogatepass")).hexdigest(), window_words, max_windows)
        hit = self._docs.get(key)
        if hit is not None:
            self._docs.move_to_end(key)
            return hit
        wins = sample_windows(document, window_words, max_windows)
        embs = self._encoder().encode(wins) if wins else torch.zeros(0, EMBEDDING_DIM)
        self._docs[key] = embs
        while len(self._docs) > self.max_docs:
            self._docs.popitem(last=False)
        return embs


EMBEDDINGS = EmbeddingCache()


def _sentence_embeddings(summaries: Sequence[str]) -> list[torch.Tensor]:
    """Per summary, the (n_sentences, D) embeddings of its sentences (one encoder pass per batch)."""
    from sumrl.evaluation.text import sentences

    return embed_sentence_lists([[s for s in sentences(x) if s.strip()] for x in summaries])


def embed_sentence_lists(sents: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """Per list of sentences, their (n, D) MiniLM embeddings, all lists in one cached encoder pass."""
    flat = [s for ss in sents for s in ss]
    embs = EMBEDDINGS.encode(flat) if flat else torch.zeros(0, EMBEDDING_DIM)
    out, k = [], 0
    for ss in sents:
        out.append(embs[k:k + len(ss)])
        k += len(ss)
    return out


def _unit_mean(e: torch.Tensor) -> torch.Tensor | None:
    if e.shape[0] == 0:
        return None
    m = e.mean(0)
    norm = m.norm()
    return m / norm if norm > 0 else None


class RelevanceReward(MetricReward):
    """Embedding similarity between summary and source (MiniLM, source windows; see EmbeddingCache).

    ``mode=relevance``: cosine of the summary embedding (mean of its sentence embeddings) with the
    document embedding (mean of the source-window embeddings). With a query, the score is
    ``(1 - query_weight) * cos(summary, document) + query_weight * cos(summary, query)``.
    ``mode=coverage``: mean over source windows of the best cosine with any summary sentence,
    clipped at 0: how much of the document some summary sentence speaks about (recall-like).
    """

    def __init__(self, name: str = "relevance", mode: str = "relevance", window_words: int = 180,
                 max_windows: int = 16, query_weight: float = 0.5):
        if mode not in ("relevance", "coverage"):
            raise ConfigError(f"reward '{name}': option 'mode' must be relevance or coverage, got {mode!r}")
        if window_words < 10 or max_windows < 0 or not 0 <= query_weight <= 1:
            raise ConfigError(f"reward '{name}': need window_words >= 10, max_windows >= 0, 0 <= query_weight <= 1")
        self.name, self.mode = name, mode
        self.window_words, self.max_windows, self.query_weight = int(window_words), int(max_windows), float(query_weight)

    def __call__(self, inp: RewardInput) -> RewardOutput:
        self._check(inp)
        sent_embs = _sentence_embeddings(inp.summaries)
        queries = [q for q in inp.queries if q]
        q_embs = dict(zip(queries, EMBEDDINGS.encode(queries))) if queries and self.mode == "relevance" else {}
        scores, doc_sim = [], []
        for doc, q, se in zip(inp.documents, inp.queries, sent_embs):
            wins = EMBEDDINGS.source_windows(doc, self.window_words, self.max_windows)
            if se.shape[0] == 0 or wins.shape[0] == 0:
                scores.append(0.0)
                doc_sim.append(0.0)
                continue
            if self.mode == "coverage":
                sim = (wins @ se.T).max(dim=1).values.clamp(min=0)
                scores.append(float(sim.mean()))
                doc_sim.append(float(sim.mean()))
                continue
            s, d = _unit_mean(se), _unit_mean(wins)
            if s is None or d is None:
                scores.append(0.0)
                doc_sim.append(0.0)
                continue
            c = float(s @ d)
            doc_sim.append(c)
            if q:
                c = (1 - self.query_weight) * c + self.query_weight * float(s @ q_embs[q])
            scores.append(c)
        comps = {"document": doc_sim} if self.mode == "relevance" and q_embs else None
        return sequence_output(self.name, scores, comps)


class CoherenceReward(MetricReward):
    """Proxy: sentence-to-sentence embedding continuity minus the repetition signal.

    ``continuity`` = mean cosine of consecutive sentence embeddings, where a pair at or above
    ``duplicate_threshold`` counts 0 (a sentence repeating the previous one is repetition, not
    continuity); a summary with fewer than 2 sentences gets ``single_sentence``. The repetition
    part is ``-repetition_weight * share of words in repeated n-grams``, localised on tokens.
    It does NOT measure discourse order, argument structure, entity coherence or contradiction.
    """

    per_token = True

    def __init__(self, name: str = "coherence", duplicate_threshold: float = 0.95, single_sentence: float = 0.5,
                 repetition_weight: float = 1.0, n: int = 3):
        self.name = name
        self.duplicate_threshold, self.single_sentence = float(duplicate_threshold), float(single_sentence)
        self.repetition_weight, self.n = float(repetition_weight), int(n)
        self._rep = RepetitionReward(name="_rep", n=self.n, penalty=self.repetition_weight)

    def __call__(self, inp: RewardInput) -> RewardOutput:
        self._check(inp)
        sent_embs = _sentence_embeddings(inp.summaries)
        cont = []
        for se in sent_embs:
            if se.shape[0] < 2:
                cont.append(self.single_sentence)
                continue
            sims = (se[:-1] * se[1:]).sum(-1)
            sims = torch.where(sims >= self.duplicate_threshold, torch.zeros_like(sims), sims)
            cont.append(float(sims.mean()))
        pens = [self._rep.penalties(s) for s in inp.summaries]
        rep = [sum(v for _, v in p) for p in pens]
        return localised_output(inp, self.name, cont, pens, {"continuity": cont, "repetition": rep})


METRIC_REWARDS: dict[str, tuple[type, dict[str, Any]]] = {
    # registry name -> (class, fixed defaults)
    "rouge": (RougeReward, {}),
    "length": (LengthReward, {}),
    "eos": (EosReward, {}),
    "repetition": (RepetitionReward, {}),
    "copy": (CopyReward, {}),
    "faithfulness": (FaithfulnessReward, {}),
    "relevance": (RelevanceReward, {"mode": "relevance"}),
    "coverage": (RelevanceReward, {"mode": "coverage"}),
    "coherence": (CoherenceReward, {}),
}
