"""sumrl: reinforcement learning for long-document summarization."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (the optional `quant` extra; peft imports it whenever it is installed) tries, on CPUs
# with AVX512-BF16, to download a faster 4-bit kernel from the Hugging Face hub through the
# `kernels` package and warns on every import when it cannot; its own CPU path is used then, and
# nothing is downloaded at run time here anyway. Only that one logger is quietened.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
