"""Summarise RL run folders (their metrics.jsonl) as Markdown: training reward and length in the
first and second half of the run, the held-out curve (``eval/*``, logged with ``--eval-every``)
and where a step's time goes.

    .venv/bin/python scripts/rl_summary.py runs/results/ppo runs/results/grpo runs/results/ppo++

Single steps are noisy (a handful of prompts each, with references of very different lengths), so
the table compares half-run means, over the steps that sampled from the policy (steps trained on the
reference summaries are left out of the reward columns and counted). Step times exclude step 1 (it also pays one-off costs such as
tokenising the documents).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path


def _all_rows(folder: Path) -> list[dict]:
    from sumrl.data.formats import read_metrics_log

    return read_metrics_log(folder, missing_ok=False)


def _rows(folder: Path) -> list[dict]:
    return [r for r in _all_rows(folder) if "objective/reward" in r]


def _sampled(rows: list[dict]) -> list[dict]:
    # steps that trained on the reference summaries (reference_trajectory_ratio) score the
    # references, not the policy: they would mix another quantity into the reward trend
    return [r for r in rows if r.get("completions/reference_fraction", 0.0) < 1.0]


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return statistics.fmean(vals) if vals else float("nan")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print("| run | steps (on references) | objective/reward (1st half → 2nd half) | completions/mean_length | "
          "completions/no_eos_rate | objective/kl (2nd half) |")
    print("|---|---|---|---|---|---|")
    timing = []
    for arg in argv:
        folder = Path(arg)
        rows = _rows(folder)
        sampled = _sampled(rows)
        h = len(sampled) // 2
        a, b = sampled[:h], sampled[h:]

        def pair(key: str, digits: int = 2) -> str:
            return f"{_mean(a, key):.{digits}f} → {_mean(b, key):.{digits}f}"

        print(f"| {folder.name} | {len(rows)} ({len(rows) - len(sampled)}) | {pair('objective/reward')} | {pair('completions/mean_length', 1)} | "
              f"{pair('completions/no_eos_rate')} | {_mean(b, 'objective/kl'):.2f} |")
        later = rows[1:] or rows  # time/step excludes time/eval
        step = _mean(later, "time/step")
        parts = {k: _mean(later, f"time/{k}") for k in ("generate", "score", "forward", "train")}
        timing.append((folder.name, parts, step))
    curves = [(Path(a).name, [r for r in _all_rows(Path(a)) if "eval/reward" in r]) for a in argv]
    if any(c for _, c in curves):
        print()
        print("Held-out curve: greedy summaries of the same validation documents after each number of steps.")
        print()
        print("| run | step | eval/reward | eval/rewards/rouge | eval/rewards/length | eval/mean_length | "
              "eval/no_eos_rate |")
        print("|---|---|---|---|---|---|---|")
        for name, curve in curves:
            for r in curve:
                cells = " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in
                                   ("eval/reward", "eval/rewards/rouge", "eval/rewards/length"))
                print(f"| {name} | {r['step']} | {cells} | {r.get('eval/mean_length', float('nan')):.1f} | "
                      f"{r.get('eval/no_eos_rate', float('nan')):.2f} |")
    print()
    print("| run | generate (s) | score (s) | forward (s) | train (s) | step (s) |")
    print("|---|---|---|---|---|---|")
    for name, parts, step in timing:
        cells = " | ".join(f"{v:.1f} ({100 * v / step:.0f}%)" for v in parts.values())
        print(f"| {name} | {cells} | {step:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
