"""The learned judges as evaluation metrics (``sumrl eval --judges``; docs/metrics.md). They are
reward models, a layer above :mod:`sumrl.evaluation`, so the evaluation harness receives this
function from its caller instead of importing it."""

from __future__ import annotations


def judge_metrics(rows: list[dict], knowledge: str | None = None, batch_size: int = 32) -> list[dict]:
    """The learned judges as metrics (docs/metrics.md): ``factual_support`` (mean calibrated support of
    the summary's sentences by the source), ``unsupported_sent_rate`` (share of sentences with
    support < 0.5), ``coherence_score`` (calibrated to SummEval's 1..5 expert scale) and, with a
    knowledge folder, ``knowledge_supported`` (share of source-unsupported sentences that the
    local corpus supports)."""
    from sumrl.rewards.base import RewardInput
    from sumrl.rewards.coherence_model import CoherenceModelReward
    from sumrl.rewards.factuality import FactualityReward

    fact = FactualityReward(knowledge=knowledge)
    coh = CoherenceModelReward()
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        inp = RewardInput(documents=[r.get("document", "") for r in chunk], summaries=[r["prediction"] for r in chunk],
                          references=[r["references"] for r in chunk], queries=[r.get("query") for r in chunk])
        f, c = fact(inp).components, coh(inp).components
        for k in range(len(chunk)):
            m = {"factual_support": float(f["factuality/support"][k]),
                 "unsupported_sent_rate": float(f["factuality/unsupported_rate"][k]),
                 "coherence_score": float(c["coherence_model/expert_scale"][k])}
            if knowledge:
                m["knowledge_supported"] = float(f["factuality/knowledge_supported"][k])
            out.append(m)
    return out
