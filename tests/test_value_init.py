"""The critic initialised from the whole policy-backbone reward model (value adapter + head)."""

from __future__ import annotations

import pytest
import torch

from sumrl.errors import ConfigError
from sumrl.rewards.registry import build_reward
from sumrl.rewards.reward_model import RewardModel

DOC = "Alice Smith studied robots for 12 years. The study of robots is not easy and it shows many results. " * 2
SUMMARY = "Alice Smith studied robots for 12 years."


def _rm_folder(tmp_path, tiny_model_dir, lora_layers=-1):
    from conftest import trained_looking_policy_rm

    return trained_looking_policy_rm(tiny_model_dir, tmp_path / "rm", seed=3, max_summary_tokens=48, lora_r=8,
                                     lora_layers=lora_layers)[1]


def _policy(model_dir, r=4):
    from sumrl.models.loading import load_model
    from sumrl.models.lora import add_lora
    from sumrl.rl.value import VALUE_ADAPTER

    model, tok = load_model(str(model_dir))
    model = add_lora(model, r=r, alpha=2 * r)
    model.add_adapter(VALUE_ADAPTER, model.peft_config["default"])  # as build_policy does
    return model, tok


@pytest.mark.parametrize("lora_layers", [-1, 1])
def test_value_model_outputs_equal_the_rm_token_values(tiny_model_dir, tmp_path, lora_layers):
    from sumrl.rl.value import PolicyValueModule, ValueHead, hidden_size, init_value_adapter_from_rm

    path = _rm_folder(tmp_path, tiny_model_dir, lora_layers)
    reward = build_reward([{"name": "rm", "path": str(path), "per_token": True},
                           {"name": "length", "per_token_penalty": -2.5}])
    rm_model = reward.rewards[0].rm.model
    model, _ = _policy(tiny_model_dir)  # policy LoRA rank 4; the RM's is 8: the value adapter takes the RM's
    head = ValueHead(hidden_size(model))
    note = init_value_adapter_from_rm(model, head, reward)
    assert "same base weights" in note and model.peft_config["value"].r == 8
    assert model.active_adapter == "default"
    module = PolicyValueModule(model, head, value_adapter=True)
    # the RM's exact input, split into "prompt" (document part) and "response" (summary tokens)
    batch, mask, _ = rm_model._features([DOC], [SUMMARY], [None])
    ids, n = batch["input_ids"], int(mask[0].sum())
    q, r = ids[:, :-n], ids[:, -n:]
    with torch.no_grad():
        values = module(q, torch.ones_like(q), r, torch.ones_like(r), with_values=True)["values"][0]
    rm_vals = rm_model.token_values([DOC], [SUMMARY])[0]
    expected = (rm_vals - 0.5) / 0.25  # the per-token reward's normalisation (token statistics)
    # V(s_{t+1}) is read after response token t: the RM's value at token t
    assert torch.allclose(values[1:], expected[:-1], atol=1e-4)
    assert not torch.allclose(expected[:-1], expected[1:], atol=1e-3)  # the shift matters: values vary
    # the value adapter is trainable, the policy's own adapter untouched
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_value_init_refusals(tiny_model_dir, tiny_base_model_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from sumrl.models.lora import add_lora
    from sumrl.rl.value import ValueHead, hidden_size, init_value_adapter_from_rm

    path = _rm_folder(tmp_path, tiny_model_dir)
    reward = build_reward([{"name": "rm", "path": str(path), "per_token": True}])
    # same architecture, other weights (an SFT-merged policy): allowed, said; refused when strict
    other, _ = _policy(tiny_base_model_dir)
    note = init_value_adapter_from_rm(other, ValueHead(hidden_size(other)), reward)
    assert "other base weights" in note
    other, _ = _policy(tiny_base_model_dir)
    with pytest.raises(ConfigError, match="other base weights"):
        init_value_adapter_from_rm(other, ValueHead(hidden_size(other)), reward, strict=True)
    # another architecture
    small = add_lora(LlamaForCausalLM(LlamaConfig(vocab_size=403, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)), r=4)
    with pytest.raises(ConfigError, match="not on the policy's base model"):
        init_value_adapter_from_rm(small, ValueHead(32), reward)
    # no rm reward; a MiniLM RM
    model, _ = _policy(tiny_model_dir)
    with pytest.raises(ConfigError, match="no 'rm' entry"):
        init_value_adapter_from_rm(model, ValueHead(hidden_size(model)), build_reward("rouge"))
    mini = tmp_path / "mini"
    RewardModel({"backbone": "minilm", "max_length": 64, "max_summary_tokens": 32}).save(
        mini, {"kind": "synthetic", "normalization": {"mean": 0.0, "std": 1.0, "n": 1}}, {})
    with pytest.raises(ConfigError, match="minilm backbone"):
        init_value_adapter_from_rm(model, ValueHead(hidden_size(model)), build_reward(f"rm:{mini}"))
