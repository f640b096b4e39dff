"""Process memory: keep glibc from holding freed activation buffers as resident memory.

Why: PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves blocks above its
mmap threshold with their own ``mmap`` (returned to the system on free) and smaller ones from its
heaps (kept resident after free, for reuse). The threshold starts at 128 KiB but *rises* to the
size of each mmapped block freed, up to 32 MiB -- so after the first few layers, the per-layer
activations of a long prompt (a 4,096 x 1,536 float32 MLP buffer is 24 MiB) come from the heaps,
and the transients of every checkpointed layer, every prefill chunk and every attention call leave
freed-but-resident memory behind. Measured (docs/benchmarks.md): the training forward of a
2,048-token prompt x 4 samples with activation checkpointing held 2.59 GiB resident after its
forward with glibc's default, 1.35 GiB with a fixed 1 MiB threshold; the default is now 16 MiB,
the faster trade (see DEFAULT_MMAP_THRESHOLD).

:func:`cap_heap_retention` fixes the threshold (which also turns off its dynamic growth), so large
buffers always go back to the system when freed. No effect (and False) where glibc's ``mallopt``
is not available (macOS, musl, Windows). The price is a fresh, zeroed mapping for every large
buffer (page faults); ``SUMRL_MMAP_THRESHOLD=0`` in the environment keeps glibc's default, for
comparing step times (another value, in bytes, replaces the 16 MiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["cap_heap_retention", "DEFAULT_MMAP_THRESHOLD"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# 16 MiB: measured quietly (docs/benchmarks.md, GRPO 1 x 4 x 64 at 4,096 prompt tokens, fp32): 1 MiB
# 112.9 s / 2.38 GiB, 4 MiB 85.4 s / 2.73, 16 MiB 67.1 s / 4.74, glibc's default 75.2 s / 6.40. Below
# ~16 MiB every KV-cache growth and activation buffer becomes a fresh zeroed mapping (page faults).
DEFAULT_MMAP_THRESHOLD = 16 << 20


def cap_heap_retention(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``mmap_threshold`` bytes and more with their own mmap (fixed threshold),
    and trim the heap top above the same size. Returns True when glibc accepted both settings;
    False, changing nothing, when ``SUMRL_MMAP_THRESHOLD`` is 0 or there is no glibc."""
    env = os.environ.get("SUMRL_MMAP_THRESHOLD", "").strip()
    if env:
        try:
            mmap_threshold = int(env)
        except ValueError:
            from sumrl.errors import ConfigError

            raise ConfigError(f"SUMRL_MMAP_THRESHOLD must be a number of bytes (0 = glibc's default), got {env!r}")
        if mmap_threshold <= 0:
            return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    n = int(mmap_threshold)
    return bool(mallopt(_M_MMAP_THRESHOLD, n)) and bool(mallopt(_M_TRIM_THRESHOLD, n))
