"""How often does each reward agree with people? (``sumrl rm eval-rewards``)

For every held-out human pair (document, chosen, rejected) each reward scores both summaries
(its total: sequence score plus per-token rewards; no token ids, so per-token penalties are in
the score). Agreement = (pairs where chosen scores higher + 0.5 * ties) / pairs, per reward and
per source. Reference-based rewards (rouge, length in reference mode) need ``meta.references``;
on pairs without references they are reported as not applicable rather than guessed. Numbers
are reported as they come: nothing is tuned on these pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from sumrl.config import opt
from sumrl.errors import ConfigError
from sumrl.rewards.base import RewardInput

METRIC_REWARD_NAMES = "rouge,length,eos,repetition,copy,faithfulness,relevance,coverage,coherence"
JUDGE_REWARD_NAMES = "factuality,coherence_model"  # learned judges, shipped weights (docs/rewards.md)


@dataclass
class EvalRewardsConfig:
    pairs: list[str] = opt(None, "pairs.jsonl file(s) with human judgments", default_factory=list)
    rewards: str = opt(f"{METRIC_REWARD_NAMES},{JUDGE_REWARD_NAMES}", "comma-separated reward names (each evaluated "
                                                                      "on its own)")
    rm: list[str] = opt(None, "reward-model folder(s) to evaluate too", default_factory=list)
    split: str = opt("test", "which pairs: test (held-out documents), train, val or all")
    limit: int | None = opt(None, "at most N pairs per source (taken in file order)")
    test_fraction: float = opt(0.2, "held-out share of documents for pairs without meta.split")
    seed: int = opt(0, "seed of the document split for pairs without meta.split")
    out: str | None = opt(None, "write the table as JSON here")
    bootstrap: int = opt(1000, "bootstrap resamples (over documents) for the 95% CIs; 0 = no CIs")
    human_scores: bool = opt(False, "also score the held-out FRANK and SummEval summaries themselves: balanced "
                                    "accuracy on FRANK's factuality labels and Kendall tau with SummEval's expert "
                                    "scores per dimension (needs --shared-dir or ../shared/data)")
    shared_dir: str | None = opt(None, "folder with FRANK and SummEval for --human-scores")

    def validate(self) -> None:
        if not self.pairs and not self.human_scores:
            raise ConfigError("missing --pairs FILE [FILE ...] (or --human-scores)")
        if self.split not in ("test", "train", "val", "all"):
            raise ConfigError("--split must be test, train, val or all")


def first_per_source(rows: Sequence[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` rows of each ``source``, in file order (None or 0: all)."""
    if not limit:
        return list(rows)
    kept, count = [], {}
    for r in rows:
        s = str(r.get("source"))
        if count.get(s, 0) < limit:
            kept.append(r)
            count[s] = count.get(s, 0) + 1
    return kept


def select_pairs(paths: Sequence[str], split: str = "test", seed: int = 0, test_fraction: float = 0.2,
                 limit: int | None = None) -> list[dict]:
    """The pairs of ``split`` (``all``: every pair) from the pairs files, at most ``limit`` per source.
    The split is each pair's ``meta.split``, else the seeded document-id rule
    (:func:`sumrl.data.pairs.pair_split`), so a document is never on both sides."""
    from sumrl.data.pairs import pair_split, read_pairs

    rows: list[dict] = []
    for path in paths:
        rs = read_pairs(path)
        if split != "all":
            rs = [r for r in rs if pair_split(r, seed, test_fraction) == split]
        rows.extend(rs)
    rows = first_per_source(rows, limit)
    if not rows:
        raise ConfigError(f"no pairs in split {split!r} of {', '.join(paths)}")
    return rows


def build_rewards(names: str, rm_dirs: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """(name, Reward) for each comma-separated reward name, then ``rm:DIR`` for each reward-model folder."""
    from sumrl.rewards.registry import build_reward

    rewards: list[tuple[str, Any]] = [(n, build_reward(n)) for n in (x.strip() for x in names.split(",")) if n]
    rewards += [(f"rm:{d}", build_reward([{"name": "rm", "path": d}])) for d in rm_dirs]
    return rewards


def eval_rewards(cfg: EvalRewardsConfig, progress: bool = True) -> dict[str, Any]:
    """One ``sumrl rm eval-rewards`` run: the agreement table on the selected pairs (key ``table``)
    and/or the human-score tables (``human_scores``), written to ``cfg.out`` when set. Returns what
    is written (``{"human_scores", "config"}`` alone when no pairs are given)."""
    from sumrl.utils.io import write_json

    # the pairs first: a bad file is reported before the judges are loaded
    rows = select_pairs(cfg.pairs, cfg.split, cfg.seed, cfg.test_fraction, cfg.limit) if cfg.pairs else []
    rewards = build_rewards(cfg.rewards, cfg.rm)
    result: dict[str, Any] = {}
    if cfg.pairs:
        result = {"split": cfg.split, "pairs": cfg.pairs, "n_pairs": len(rows),
                  "table": agreement_table(rows, rewards, progress=progress, n_bootstrap=cfg.bootstrap, seed=cfg.seed)}
    if cfg.human_scores:
        from sumrl.data.pairs import shared_data_dir
        from sumrl.rewards.validation import human_score_tables

        result["human_scores"] = human_score_tables(str(shared_data_dir(cfg.shared_dir)), rewards,
                                                    n_bootstrap=cfg.bootstrap, seed=cfg.seed, progress=progress)
    result["config"] = asdict(cfg)
    if cfg.out:
        write_json(cfg.out, result)
    return result


def _inputs(rows: Sequence[dict]) -> RewardInput:
    docs, sums, refs, qs = [], [], [], []
    for r in rows:
        rr = list((r.get("meta") or {}).get("references") or [])
        for s in (r["chosen"], r["rejected"]):
            docs.append(r["document"])
            sums.append(s)
            refs.append(rr)
            qs.append(r.get("query"))
    return RewardInput(documents=docs, summaries=sums, references=refs, queries=qs)


def agreement_table(rows: Sequence[dict], rewards: Sequence[tuple[str, Any]], batch_size: int = 64,
                    progress: bool = False, n_bootstrap: int = 0, seed: int = 0) -> list[dict]:
    """``rewards``: (name, callable Reward). Returns rows ``{reward, source, n, agree, ties, accuracy}``,
    plus ``ci`` (95% bootstrap over documents, :func:`sumrl.rewards.validation.agreement_ci`) when
    ``n_bootstrap`` > 0. ``progress``: a tqdm bar over the (reward, source) cells."""
    from tqdm.auto import tqdm

    by_source: dict[str, list[dict]] = {}
    for r in rows:
        # pairs of one source judged on different dimensions (SummEval consistency vs coherence) stay apart
        dim = (r.get("meta") or {}).get("dimension")
        key = str(r.get("source") or "?") + (f"/{dim}" if dim not in (None, "overall", "factuality") else "")
        by_source.setdefault(key, []).append(r)
    table = []
    with tqdm(total=len(rewards) * len(by_source), desc="eval-rewards", unit="cell", disable=not progress,
              leave=False) as bar:
        for name, reward in rewards:
            for source, rs in sorted(by_source.items()):
                row = _agreement_cell(name, reward, source, rs, batch_size, n_bootstrap, seed)
                table.append(row)
                bar.update(1)
                if row["accuracy"] is not None:
                    bar.set_postfix_str(f"{name} on {source}: {row['accuracy']:.3f} ({row['n']} pairs)")
    return table


def _agreement_cell(name: str, reward: Any, source: str, rs: Sequence[dict], batch_size: int, n_bootstrap: int,
                    seed: int) -> dict:
    """One reward on the pairs of one source (a row of :func:`agreement_table`)."""
    needs_refs = getattr(reward, "needs_references", False)
    usable = [r for r in rs if not needs_refs or (r.get("meta") or {}).get("references")]
    if not usable:
        return {"reward": name, "source": source, "n": 0, "agree": 0, "ties": 0, "accuracy": None,
                "note": "no references in these pairs"}
    agree = ties = 0
    outcomes: list[float] = []
    # batches keep pairs of one document together, so per-document caches are reused
    for s in range(0, len(usable), batch_size):
        chunk = usable[s:s + batch_size]
        tot = reward(_inputs(chunk)).totals().tolist()
        for k in range(len(chunk)):
            c, rj = tot[2 * k], tot[2 * k + 1]
            if abs(c - rj) <= 1e-9:
                ties += 1
                outcomes.append(0.5)
            elif c > rj:
                agree += 1
                outcomes.append(1.0)
            else:
                outcomes.append(0.0)
    n = len(usable)
    extra = {}
    if n_bootstrap > 0:
        from sumrl.rewards.validation import agreement_ci

        extra["ci"] = list(agreement_ci(outcomes, [r["id"] for r in usable], n_bootstrap, seed))
    return {"reward": name, "source": source, "n": n, "agree": agree, "ties": ties,
            "accuracy": (agree + 0.5 * ties) / n, **extra,
            **({"note": f"{len(rs) - n} pairs without references skipped"} if n < len(rs) else {})}


def format_table(table: Sequence[dict]) -> str:
    """Markdown: one row per reward, one column per source (accuracy, n, ties)."""
    sources = sorted({t["source"] for t in table})
    rewards = list(dict.fromkeys(t["reward"] for t in table))
    cell = {(t["reward"], t["source"]): t for t in table}
    with_ci = any("ci" in t for t in table)
    what = "agree [95% CI] / n / ties" if with_ci else "agree / n / ties"
    head = "| reward | " + " | ".join(f"{s} ({what})" for s in sources) + " |"
    lines = [head, "|---|" + "---|" * len(sources)]
    for rw in rewards:
        cells = []
        for s in sources:
            t = cell.get((rw, s))
            if t is None or t["accuracy"] is None:
                cells.append("n/a")
            else:
                ci = ""
                if "ci" in t:
                    lo, hi = t["ci"]
                    ci = " [one document]" if lo != lo else f" [{lo:.3f}, {hi:.3f}]"  # NaN: a single cluster
                cells.append(f"{t['accuracy']:.3f}{ci} / {t['n']} / {t['ties']}")
        lines.append(f"| {rw} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
