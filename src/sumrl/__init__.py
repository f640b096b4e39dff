"""sumrl: reinforcement learning for long-document summarization."""

__version__ = "0.1.0"
