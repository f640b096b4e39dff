"""`sumrl human`: blind pairwise human evaluation of summaries (web app, statistics) and the export
of human preference pairs for reward-model training. See docs/human_eval.md."""
