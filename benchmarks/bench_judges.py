"""Seconds to score 64 summaries of 8k-word documents with the learned judges.

    .venv/bin/python benchmarks/bench_judges.py [--docs 8] [--summaries 64] [--words 8000]

The batch is the one of ``bench_rewards.py`` (built-in ScisummNet papers concatenated to
``--words`` words; ~120-word summaries built from document sentences, with repeats and an
invented number). Timed per judge, after loading it (reported separately):

* cold: first call (BM25 indexes of the documents built, retrieved source windows encoded by
  MiniLM's bottom layers, summary sentences encoded);
* new summaries, same documents: a second batch of different summaries of the same documents --
  what the next GRPO/PPO step costs, with the source windows' states cached;
* warm: the first batch again (everything cached but the top layers).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--summaries", type=int, default=64)
    ap.add_argument("--words", type=int, default=8000)
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("bench_rewards", Path(__file__).with_name("bench_rewards.py"))
    br = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(br)

    import torch

    from sumrl.rewards.base import RewardInput
    from sumrl.rewards.registry import build_reward

    D, S, R, Q = br.build_batch(args.docs, args.summaries, args.words, seed=0)
    _, S2, _, _ = br.build_batch(args.docs, args.summaries, args.words, seed=1)

    def inp(summaries):
        return RewardInput(documents=D, summaries=summaries, references=R, queries=Q)

    n_sent = sum(len(__import__("sumrl.evaluation.text", fromlist=["sentences"]).sentences(s)) for s in S)
    print(f"{len(S)} summaries ({n_sent} sentences) of {args.words}-word documents ({args.docs} distinct), "
          f"torch threads: {torch.get_num_threads()}")
    print("| judge | load s | cold s | new summaries, same documents s | warm s |\n|---|---|---|---|---|")
    for name in ("factuality", "coherence_model"):
        t = time.perf_counter()
        r = build_reward(name)
        load = time.perf_counter() - t
        times = []
        for batch in (S, S2, S):
            t = time.perf_counter()
            r(inp(batch))
            times.append(time.perf_counter() - t)
        print(f"| {name} | {load:.2f} | {times[0]:.2f} | {times[1]:.2f} | {times[2]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
