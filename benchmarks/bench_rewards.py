"""Seconds to score 64 summaries of 8k-word documents with every metric reward.

    .venv/bin/python benchmarks/bench_rewards.py [--docs 8] [--summaries 64] [--words 8000]

Documents: built-in ScisummNet training papers, concatenated until each has ``--words`` words
(8k-word documents are the product's target). ``--docs 8`` with 64 summaries is a GRPO batch
(8 documents x 8 sampled summaries); ``--docs 64`` gives every summary its own document (the
worst case: nothing is shared). Summaries (~120 words) are built from each document's sentences
and its reference, with some repetition and a changed number so that the localising rewards
find something. Token ids come from the default policy tokenizer (SmolLM2) when it is in the
local cache, so the per-token alignment is timed too. Each reward is timed cold (first call:
indexes and source-window embeddings built) and warm (second call on the same batch: what an
RL step costs when documents repeat across steps, e.g. several PPO epochs); the encoder load
is reported separately.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REWARDS = ["rouge", "length", "eos", "repetition", "copy", "faithfulness", "relevance", "coverage", "coherence"]


def build_batch(n_docs: int, n_summaries: int, words: int, seed: int = 0):
    from sumrl.data import load_data
    from sumrl.evaluation.text import sentences

    ex = [e for e in load_data("scisummnet", "train") if e.references and e.references[0].strip()]
    rng = random.Random(seed)
    docs, refs = [], []
    k = 0
    for _ in range(n_docs):
        parts: list[str] = []
        ref = ex[k % len(ex)].references[0]
        while sum(len(p.split()) for p in parts) < words:
            parts.append(ex[k % len(ex)].document)
            k += 1
        docs.append(" ".join(" ".join(parts).split()[:words]))
        refs.append(ref)
    D, S, R, Q = [], [], [], []
    for i in range(n_summaries):
        d = i % n_docs
        sents = [s for s in sentences(docs[d][:20000]) if 5 < len(s.split()) < 40]
        picked = rng.sample(sents, min(4, len(sents)))
        if i % 4 == 1:
            picked.append(picked[0])  # repetition
        if i % 4 == 2:
            picked.append("The accuracy rose to 97.3 percent in 2031.")  # unsupported number
        D.append(docs[d])
        S.append(" ".join(picked))
        R.append([refs[d]])
        Q.append(None)
    return D, S, R, Q


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--summaries", type=int, default=64)
    ap.add_argument("--words", type=int, default=8000)
    ap.add_argument("--no-tokens", action="store_true", help="do not pass token ids (no per-token alignment)")
    args = ap.parse_args(argv)

    from sumrl.models.encoder import get_encoder
    from sumrl.rewards.base import RewardInput
    from sumrl.rewards.registry import build_reward

    D, S, R, Q = build_batch(args.docs, args.summaries, args.words)
    tok = None
    if not args.no_tokens:
        try:
            from sumrl.models.loading import cache_dir, load_tokenizer

            if (cache_dir() / "models" / "smollm2-135m-instruct" / "config.json").exists():
                tok = load_tokenizer("default")
        except Exception as e:  # noqa: BLE001 - benchmark runs without token ids then
            print(f"(no policy tokenizer: {e})", file=sys.stderr)
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in S] if tok is not None else None
    t = time.perf_counter()
    get_encoder()
    t_load = time.perf_counter() - t

    def fresh_input():
        return RewardInput(documents=D, summaries=S, references=R, queries=Q, token_ids=ids, tokenizer=tok,
                           finished=[i % 5 != 0 for i in range(len(S))])

    rows = []
    total_cold = total_warm = 0.0
    for name in REWARDS:
        reward = build_reward(name)
        t = time.perf_counter()
        reward(fresh_input())
        cold = time.perf_counter() - t
        t = time.perf_counter()
        reward(fresh_input())
        warm = time.perf_counter() - t
        rows.append((name, cold, warm))
        total_cold += cold
        total_warm += warm
    t = time.perf_counter()
    from sumrl.rewards.metric import EMBEDDINGS
    from sumrl.evaluation.overlap import get_source_index

    EMBEDDINGS._texts.clear()
    EMBEDDINGS._docs.clear()
    get_source_index.cache_clear()
    build_reward(",".join(REWARDS))(fresh_input())
    composite = time.perf_counter() - t
    print(f"{len(S)} summaries of {args.words}-word documents ({args.docs} distinct documents), "
          f"token ids: {'yes (' + type(tok).__name__ + ')' if tok is not None else 'no'}, torch threads: "
          f"{__import__('torch').get_num_threads()}")
    print(f"encoder load: {t_load:.1f}s (once per process)")
    print(f"| reward | cold s | warm s |\n|---|---|---|")
    for name, cold, warm in rows:
        print(f"| {name} | {cold:.2f} | {warm:.2f} |")
    print(f"| sum of the above | {total_cold:.2f} | {total_warm:.2f} |")
    print(f"| all nine as one composite, cold caches | {composite:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
