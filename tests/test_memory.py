"""utils.memory: a fixed glibc mmap threshold returns freed large buffers to the system."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import torch
from sumrl.utils.memory import cap_heap_retention
def rss():
    for l in open('/proc/self/status'):
        if l.startswith('VmRSS'):
            return int(l.split()[1]) / 1024
def held():
    # an activation pattern: large transients interleaved with small tensors that live on (which
    # keep the heap from shrinking back past the freed transients)
    before = rss()
    live, transient = [], []
    for _ in range(20):
        transient.append(torch.ones(6 << 20))  # 24 MiB (above the 16 MiB default threshold)
        live.append(torch.ones(1024))
    del transient
    return rss() - before
# glibc raises its dynamic threshold to the size of a freed mmapped block (here 28 MiB), after which
# blocks of that size come from the heap and stay resident when freed
big = torch.ones(7 << 20); del big
default = held()
assert cap_heap_retention()
print(default, held())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc are Linux-only")
def test_freed_activations_leave_the_resident_set():
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-1000:]
    default, capped = map(float, p.stdout.split()[-2:])
    assert default > 300  # the behaviour it fixes (glibc's dynamic threshold): most of 480 MiB stays resident
    assert capped < 48  # with the fixed threshold: MiB still resident after freeing 480 MiB


def test_the_environment_can_keep_glibcs_default_and_bad_values_are_one_line(monkeypatch):
    from sumrl.errors import ConfigError
    from sumrl.utils.memory import cap_heap_retention

    monkeypatch.setenv("SUMRL_MMAP_THRESHOLD", "0")
    assert cap_heap_retention() is False  # nothing changed
    monkeypatch.setenv("SUMRL_MMAP_THRESHOLD", "1MB")
    with pytest.raises(ConfigError, match="SUMRL_MMAP_THRESHOLD must be a number of bytes"):
        cap_heap_retention()
