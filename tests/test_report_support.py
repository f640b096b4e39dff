"""Fake run folders for the report tests (no model: predictions are written by hand and scored
with the real per-example metrics, without the embedding model)."""

from __future__ import annotations

import json
from pathlib import Path

from sumrl.evaluation.harness import aggregate_metrics
from sumrl.evaluation.metrics import score_example

# A document that tries to run script and fetch remote content if it were not escaped.
HOSTILE = ('<script>window.__pwned = 1</script><img src="http://127.0.0.1:9/leak.png" '
           'onerror="window.__pwned = 2"> & <b>bold</b>')

DOCS = [
    ("d1", "The Bank of England raised interest rates to 5.25 percent in August 2023 after inflation stayed "
           "high for many months. Economists at the bank expect rates to remain high. " + HOSTILE,
     "The Bank of England raised rates to 5.25 percent in August 2023."),
    ("d2", "We propose a reinforcement learning method for long document summarization. Our method reduces "
           "the length of generated summaries by 30 percent on three datasets while keeping ROUGE scores.",
     "An RL method shortens summaries by 30 percent without losing ROUGE."),
    ("d3", "The meeting discussed the remote control design. Marketing wanted a fruity look and the engineers "
           "asked for a cheaper battery. The project manager closed the meeting at noon.",
     "The team discussed the remote control design, its look and its battery."),
    ("d4", "Solar panels installed on 1,200 homes in Lisbon cut electricity bills by 18 percent during the "
           "first year of the programme, according to the city council.",
     "Solar panels on 1,200 Lisbon homes cut bills by 18 percent."),
]

# System -> per-document predictions: base is long and chatty, sft shorter, rl shortest.
PREDICTIONS = {
    "base": [
        "Sure, here is a summary: The Bank of England raised interest rates to 5.25 percent in August 2023 after "
        "inflation stayed high for many months, and Governor Smith said 7 more hikes will follow. "
        "<script>window.__pwned = 3</script>",
        "We propose a reinforcement learning method for long document summarization that reduces the length "
        "of generated summaries by 30 percent on three datasets while keeping ROUGE scores high.",
        "The meeting discussed the remote control design and marketing and engineers and a battery at noon "
        "with many more details that go on and on.",
        "Solar panels installed on 1,200 homes in Lisbon cut electricity bills by 18 percent during the first "
        "year of the programme, according to the city council of Porto.",
    ],
    "sft": [
        "The Bank of England raised interest rates to 5.25 percent in 2024 because of inflation.",
        "A reinforcement learning method reduces summary length by 30 percent on three datasets.",
        "The meeting discussed the remote control design and the battery of the device.",
        "Solar panels on 1,200 homes in Lisbon cut bills by 18 percent.",
    ],
    "rl-ppo": [
        "The Bank of England raised rates to 5.25 percent in August 2023.",
        "An RL method shortens summaries by 30 percent.",
        "The team discussed the remote control design and battery.",
        "Solar panels on 1,200 Lisbon homes cut bills by 18 percent.",
    ],
}


def write_run(folder: Path, system: str, rows: list[dict], *, config: dict | None = None,
              n_bootstrap: int = 100) -> Path:
    """A run folder in the `sumrl eval` layout; rows without metrics are scored here."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r.setdefault("system", system)
        r.setdefault("raw_prediction", r["prediction"])
        r.setdefault("strategy", "none")
        r.setdefault("finished", True)
        r.setdefault("query", None)
        if "metrics" not in r:
            r["metrics"] = score_example(r["prediction"], r["references"], r["document"], finished=r["finished"])
    metrics = aggregate_metrics(rows, n_bootstrap=n_bootstrap)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps({"system": system, "n": len(rows), "metrics": metrics}),
                                         encoding="utf-8")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def make_runs(root: Path, systems=("base", "sft", "rl-ppo")) -> list[Path]:
    out = []
    for s in systems:
        rows = [{"id": i, "document": doc, "references": [ref], "prediction": PREDICTIONS[s][k]}
                for k, (i, doc, ref) in enumerate(DOCS)]
        out.append(write_run(root / s, s, rows, config={"system": s, "model": f"models/{s}", "note": "<b>x</b>"}))
    return out


def make_train_runs(root: Path) -> tuple[Path, Path]:
    """An RL log (reward, KL, length) and an SFT log (sparse val/loss) like sumrl's MetricLogger."""
    rl = root / "train-ppo"
    rl.mkdir(parents=True)
    rl_rows = [{"step": s, "objective/reward": 0.1 + 0.02 * s, "objective/kl": 0.01 * s,
                "completions/mean_length": 120 - 2 * s} for s in range(1, 21)]
    (rl / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl_rows), encoding="utf-8")
    (rl / "config.json").write_text(json.dumps({"algo": "ppo", "kl_coef": 0.05}), encoding="utf-8")
    sft = root / "train-sft"
    sft.mkdir(parents=True)
    sft_rows = []
    for s in range(1, 31):
        row = {"step": s, "train/loss": 3.0 - 0.05 * s}
        if s % 10 == 0:
            row["val/loss"] = 2.9 - 0.04 * s
        sft_rows.append(row)
    (sft / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows), encoding="utf-8")
    (sft / "sft_config.json").write_text(json.dumps({"lr": 2e-4, "epochs": 1}), encoding="utf-8")
    return rl, sft
