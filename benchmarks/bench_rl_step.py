"""Time one RL step per algorithm on the default model and split it into stages.

    python benchmarks/bench_rl_step.py --algos ppo grpo --prompts 4 --new-tokens 48 --prompt-tokens 256

Each algorithm runs ``--steps`` outer steps (default 2: the first one also pays one-off costs such
as tokenising the documents) with metric rewards (rouge, length), and the table reports the
*last* step's stage times from its metrics: generation (sampling, plus the guide for guided
algorithms), scoring (rewards), forward (old / reference log-probs and values, no grad) and
training (PPO epochs with backward). GRPO/RLOO use ``prompts / 2`` prompts x 2 samples so every
algorithm trains on the same number of sequences. Guided algorithms need ``--guide``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", nargs="+", default=["ppo", "grpo"])
    ap.add_argument("--policy", default="default")
    ap.add_argument("--guide", default=None, help="guide model for ppo++ / aggrevated / d2lols")
    ap.add_argument("--data", default="scisummnet")
    ap.add_argument("--reward", default="rouge,length")
    ap.add_argument("--prompts", type=int, default=4, help="sequences per step")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)

    import torch

    from sumrl.config import build_config
    from sumrl.rl.config import GROUP_ALGOS, RLConfig
    from sumrl.rl.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for algo in args.algos:
        group = algo in GROUP_ALGOS
        with tempfile.TemporaryDirectory() as tmp:
            cfg = build_config(RLConfig, None, dict(
                algo=algo, policy=args.policy, data=args.data, reward=args.reward, out=os.path.join(tmp, algo),
                steps=args.steps, batch_size=args.prompts // 2 if group else args.prompts,
                samples_per_prompt=2 if group else None, max_new_tokens=args.new_tokens,
                max_prompt_tokens=args.prompt_tokens, micro_batch_size=args.prompts, guide=args.guide,
                progress=False, tensorboard=False, sample_every=0, save_every=10_000,
                temperature=0.7, no_eos_penalty=-1.0))
            t0 = time.perf_counter()
            summary = train(cfg)
            wall = time.perf_counter() - t0
        m = summary["last"]
        rows.append((algo, m.get("time/generate", 0.0), m.get("time/generate_guide", 0.0), m.get("time/score", 0.0),
                     m.get("time/forward", 0.0), m.get("time/train", 0.0), m.get("time/step", 0.0),
                     m.get("completions/mean_length", 0.0), wall))
    print()
    print(f"device: cpu, torch threads {torch.get_num_threads()}, policy {args.policy}, {args.prompts} sequences x "
          f"<= {args.new_tokens} new tokens, prompts <= {args.prompt_tokens} tokens, rewards {args.reward}")
    print("| algo | generate (s) | of which guide | score (s) | forward (s) | train (s) | step (s) | mean length | run wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.1f} | {r[8]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
