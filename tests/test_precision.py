"""--bf16 auto: the decision per machine (sumrl.models.precision) and its config/CLI parsing."""

from __future__ import annotations

import argparse
import json

import pytest

from sumrl.config import AutoBool, add_dataclass_args, build_config, config_from_args
from sumrl.errors import ConfigError
from sumrl.models import precision
from sumrl.models.precision import precision_line, resolve_bf16


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUMRL_CACHE", str(tmp_path))
    monkeypatch.delenv("SUMRL_PRECISION_BENCH", raising=False)
    return tmp_path / "precision.json"


def test_forced_settings_need_no_measurement(cache):
    assert resolve_bf16(True, "cpu")[0] is True
    assert resolve_bf16("false", "cpu")[0] is False
    assert not cache.exists()
    with pytest.raises(ConfigError, match="expected auto, true or false"):
        resolve_bf16("maybe", "cpu")


def test_cpu_auto_measures_once_and_caches(cache, monkeypatch):
    calls = []

    def fake(size=512, repeats=3):
        calls.append(size)
        return {"float32": 100.0, "bfloat16": 700.0}

    monkeypatch.setattr(precision, "_measure_cpu", fake)
    use, why = resolve_bf16("auto", "cpu")
    assert use is True and "7.00x" in why and "measured now" in why
    use2, why2 = resolve_bf16("auto", "cpu")
    assert use2 is True and "cached measurement" in why2
    assert len(calls) == 1
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["float32"] == 100.0 and entry["bfloat16"] == 700.0


@pytest.mark.parametrize("damaged", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_cache_is_measured_again(cache, monkeypatch, damaged):
    monkeypatch.setattr(precision, "_measure_cpu", lambda size=512, repeats=3: {"float32": 100.0, "bfloat16": 700.0})
    cache.write_bytes(damaged)
    use, why = resolve_bf16("auto", "cpu")
    assert use is True and "measured now" in why
    assert isinstance(json.loads(cache.read_text()), dict)  # rewritten whole


def test_cpu_auto_refuses_slow_bf16(cache, monkeypatch):
    # a CPU without bf16 matrix units: bf16 slower than fp32 (the 170 vs 310 GFLOP/s)
    monkeypatch.setattr(precision, "_measure_cpu", lambda size=512, repeats=3: {"float32": 310.0, "bfloat16": 170.0})
    use, why = resolve_bf16("auto", "cpu")
    assert use is False and "not faster enough" in why
    line = precision_line("sft", use, why)
    assert line.startswith("sft: precision float32 -- CPU")


def test_cpu_flags_when_measurement_disabled(cache, monkeypatch):
    monkeypatch.setenv("SUMRL_PRECISION_BENCH", "0")
    monkeypatch.setattr(precision, "_cpu_identity", lambda: ("Fake CPU", "avx2 fma"))
    assert resolve_bf16("auto", "cpu") == (False, "CPU 'Fake CPU' has no AMX-BF16 (cpu flags; measurement disabled "
                                                   "by SUMRL_PRECISION_BENCH=0)")
    monkeypatch.setattr(precision, "_cpu_identity", lambda: ("Fake CPU", "amx_bf16 amx_tile avx512f"))
    assert resolve_bf16("auto", "cpu")[0] is True
    assert not cache.exists()


def test_real_measurement_is_sane(cache):
    m = precision._measure_cpu(size=128, repeats=1)
    assert m["float32"] > 0 and m["bfloat16"] > 0


def test_gpu_capability(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "T4")
    assert resolve_bf16("auto", torch.device("cuda", 0)) == (
        False, "GPU T4 has compute capability 7.5 (< 8.0: no bf16 tensor cores)")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "H200")
    assert resolve_bf16("auto", "cuda:0")[0] is True


def test_autobool_config_and_flags():
    from dataclasses import dataclass

    from sumrl.config import opt

    @dataclass
    class C:
        bf16: AutoBool = opt("auto", "precision")

    assert build_config(C).bf16 == "auto"
    assert build_config(C, {"bf16": True}).bf16 is True
    assert build_config(C, {"bf16": "false"}).bf16 is False
    assert build_config(C, {"bf16": "AUTO"}).bf16 == "auto"
    with pytest.raises(ConfigError, match="option 'bf16'"):
        build_config(C, {"bf16": 3})
    p = argparse.ArgumentParser()
    add_dataclass_args(p, C)
    for argv, want in [([], "auto"), (["--bf16"], True), (["--bf16", "auto"], "auto"), (["--bf16", "false"], False),
                       (["--no-bf16"], False)]:
        assert config_from_args(C, p.parse_args(argv)).bf16 == want, argv


def test_sft_and_demo_default_to_auto():
    from sumrl.demo import PRESETS
    from sumrl.training.config import SFTConfig

    assert SFTConfig().bf16 == "auto"
    assert all(p["bf16"] == "auto" for p in PRESETS.values())
    for name in ("sft_lora", "sft_full", "sft_gpu"):
        from sumrl.config import load_recipe
        from pathlib import Path

        r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml")
        assert build_config(SFTConfig, r).bf16 == "auto", name


def test_bf16_logprob_error_measures_the_autocast_gap():
    import torch
    from conftest import build_tiny_model, build_tiny_tokenizer

    from sumrl.models.logprobs import next_token_targets
    from sumrl.models.precision import bf16_logprob_error

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok).eval()
    ids = torch.randint(3, len(tok), (2, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    err = bf16_logprob_error(model, ids, mask, next_token_targets(ids, mask))
    assert 0 < err < 0.1  # bf16 rounding is visible but small on a tiny model
    no_targets = torch.full_like(ids, -100)
    assert bf16_logprob_error(model, ids, mask, no_targets) == 0.0
