"""LoRA through peft, plus the switches RL needs on a shared base model."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


def default_target_modules(model: Any) -> list[str]:
    """Attention and MLP projections of every layer, by the names each family uses."""
    from sumrl.models.seq2seq import default_target_modules as seq2seq_targets, is_encoder_decoder

    if is_encoder_decoder(model):
        return seq2seq_targets(model)
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    wanted = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    found = [n for n in wanted if n in names]
    return found or ["c_attn", "c_proj"]


def add_lora(model: Any, r: int = 16, alpha: int = 32, dropout: float = 0.0,
             target_modules: list[str] | None = None, adapter_name: str = "default",
             layers_to_transform: list[int] | None = None) -> Any:
    """``layers_to_transform``: adapt only these decoder layers (None = all); the layers below the
    lowest adapted one then need no backward pass, which is what makes CPU training affordable."""
    from peft import LoraConfig, get_peft_model

    from sumrl.models.seq2seq import is_encoder_decoder

    task = "SEQ_2_SEQ_LM" if is_encoder_decoder(model) else "CAUSAL_LM"
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type=task,
                     target_modules=target_modules or default_target_modules(model),
                     layers_to_transform=layers_to_transform)
    return get_peft_model(model, cfg, adapter_name=adapter_name)


@contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """Run the *reference* policy on the same weights: LoRA adapters off (no second model copy)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


def disable_dropout(model: Any) -> None:
    """RL needs deterministic log-probs: dropout makes the old/new policy ratio noisy even with
    identical weights (N+ implementation detail).

    Setting the config is not enough: Llama/Qwen/Gemma attention modules copy
    ``config.attention_dropout`` into a float attribute when they are built and pass it to the
    attention kernel in train mode, so every module's float dropout attributes are zeroed too."""
    import torch

    names = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
             "dropout_rate", "activation_dropout")
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in names:
            v = getattr(m, attr, None)
            if isinstance(v, float) and not isinstance(v, bool) and v != 0.0:
                setattr(m, attr, 0.0)
        cfg = getattr(m, "config", None)
        for c in (cfg, getattr(cfg, "text_config", None)):
            if c is None:
                continue
            for attr in names:
                if isinstance(getattr(c, attr, None), float):
                    setattr(c, attr, 0.0)
