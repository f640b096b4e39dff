"""Precision chosen per machine, not per recipe: ``--bf16 auto``.

Why: bfloat16 autocast is a large win only where the hardware has bf16 matrix units. Measured on
two CPUs: with AMX, bf16 matmuls ran ~7x faster than float32; without it (AVX-512 without
AMX-BF16, or AVX2) bf16 was *slower* than float32 and a bf16 preset made ``make demo`` 41% slower.
So ``auto`` decides from what is known or measured about the machine at hand:

* CUDA: bf16 when the device's compute capability is >= 8.0 (Ampere and later have bf16 tensor
  cores; ``torch.cuda.is_bf16_supported()`` alone also says yes on older GPUs, where it is emulated);
* CPU: a tiny matmul benchmark (bf16 vs float32, 512 x 512, best of a few runs, ~0.1 s), cached in
  ``<sumrl cache>/precision.json`` keyed by the CPU model, its flags and the torch version, so each
  machine measures once. bf16 is chosen when it is at least ``MIN_SPEEDUP`` times faster (autocast
  pays casts around every matmul, so a tie is a loss). ``SUMRL_PRECISION_BENCH=0`` skips the
  measurement and decides from the CPU flags (``amx_bf16``) instead;
* anything else (MPS, XPU ...): float32.

``resolve_bf16`` returns the decision *and* the reason; commands print both in their first lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from typing import Any

from sumrl.config import BF16_HELP, parse_auto_bool

__all__ = ["resolve_bf16", "parse_bf16", "precision_line", "bf16_logprob_error", "MIN_SPEEDUP", "BF16_HELP"]

MIN_SPEEDUP = 1.3


def parse_bf16(value: Any, where: str = "bf16") -> bool | str:
    """``"auto"``, True or False from a config/flag value (bools, true/false/yes/no/1/0, auto)."""
    return parse_auto_bool(value, where)


def _cpu_identity() -> tuple[str, str]:
    """(model name, sorted flags) of this CPU, from /proc/cpuinfo where available."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(val.split()))
                if name and flags:
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def _cache_file():
    from sumrl.models.loading import cache_dir

    return cache_dir() / "precision.json"


def _measure_cpu(size: int = 512, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of a ``size``-square matmul in float32 and bfloat16 with the current torch threads."""
    import torch

    out = {}
    flop = 2.0 * size ** 3
    g = torch.Generator().manual_seed(0)
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(size, size, generator=g).to(dtype)
        b = torch.randn(size, size, generator=g).to(dtype)
        a @ b  # warm-up: first call selects / JIT-compiles the kernel
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        out[name] = flop / max(best, 1e-9) / 1e9
    return out


def _cpu_decision() -> tuple[bool, str]:
    import torch

    name, flags = _cpu_identity()
    flagset = set(flags.split())
    has_amx = "amx_bf16" in flagset
    if os.environ.get("SUMRL_PRECISION_BENCH", "1") == "0":
        if has_amx:
            return True, f"CPU '{name}' has AMX-BF16 (cpu flags; measurement disabled by SUMRL_PRECISION_BENCH=0)"
        return False, f"CPU '{name}' has no AMX-BF16 (cpu flags; measurement disabled by SUMRL_PRECISION_BENCH=0)"
    threads = torch.get_num_threads()
    key = hashlib.sha256(f"{name}|{flags}|{torch.__version__}|{threads}".encode()).hexdigest()[:16]
    path = _cache_file()
    from sumrl.errors import DataError
    from sumrl.utils.io import read_json_file

    try:  # a missing or damaged cache is measured again, never an error
        cache = read_json_file(path)
    except DataError:
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    entry = cache.get(key)
    how = "cached measurement"
    if not (isinstance(entry, dict) and "float32" in entry and "bfloat16" in entry):
        entry = _measure_cpu()
        entry.update(cpu=name, torch=torch.__version__, threads=threads)
        cache[key] = entry
        how = "measured now, cached"
        try:
            from sumrl.utils.io import atomic_write_text

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
        except OSError:
            how = "measured now (cache not writable)"
    f32, b16 = float(entry["float32"]), float(entry["bfloat16"])
    speedup = b16 / max(f32, 1e-9)
    use = speedup >= MIN_SPEEDUP
    verdict = "faster" if use else "not faster enough"
    amx = "with" if has_amx else "without"
    return use, (f"CPU '{name}' ({amx} AMX-BF16, {threads} threads): bf16 matmul {b16:.0f} vs float32 {f32:.0f} "
                 f"GFLOP/s = {speedup:.2f}x, {verdict} (threshold {MIN_SPEEDUP}x; {how} in {path})")


def resolve_bf16(setting: Any, device: Any = None) -> tuple[bool, str]:
    """``(use_bf16, reason)`` for a ``--bf16`` setting (``"auto"``, True or False) on ``device``
    (a torch.device, a string such as ``"cuda:0"``, or None for CUDA when available else CPU)."""
    import torch

    value = parse_bf16(setting)
    if value is True:
        return True, "bf16 forced (--bf16 true)"
    if value is False:
        return False, "float32 forced (--bf16 false)"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        name = torch.cuda.get_device_name(idx)
        if major >= 8:
            return True, f"GPU {name} has compute capability {major}.{minor} (>= 8.0: bf16 tensor cores)"
        return False, f"GPU {name} has compute capability {major}.{minor} (< 8.0: no bf16 tensor cores)"
    if dev.type == "cpu":
        return _cpu_decision()
    return False, f"device type {dev.type}: float32 (bf16 speed not known there)"


def precision_line(command: str, use_bf16: bool, reason: str) -> str:
    """The line commands print first: ``<command>: precision bf16 autocast -- <reason>``."""
    return f"{command}: precision {'bf16 autocast' if use_bf16 else 'float32'} -- {reason}"


def bf16_logprob_error(model: Any, input_ids: Any, attention_mask: Any, targets: Any, *, chunk_size: int = 512) -> float:
    """Largest ``|log p_bf16 - log p_fp32|`` over the non-ignored ``targets`` of one batch: the
    check a trainer runs once (e.g. on its first rollout) before training under bf16 autocast,
    falling back to float32 when it exceeds its tolerance. No gradient; the model is unchanged."""
    import torch

    from sumrl.models.logprobs import IGNORE_INDEX, model_token_logprobs

    with torch.no_grad():
        ref = model_token_logprobs(model, input_ids, attention_mask, targets, chunk_size=chunk_size)
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16):
            low = model_token_logprobs(model, input_ids, attention_mask, targets, chunk_size=chunk_size)
    valid = targets != IGNORE_INDEX
    return float((low.float() - ref.float())[valid].abs().max()) if bool(valid.any()) else 0.0
