import json

import pytest

from sumrl.errors import ModelNotFoundError
from sumrl.models.loading import load_model, load_tokenizer, resolve, save_model
from sumrl.models.prompts import build_prompt, prompt_overhead_tokens


def test_resolve_kinds(tmp_path, tiny_model_dir):
    assert resolve("default").kind == "packaged"
    assert resolve("gemma3-270m").kind == "packaged"
    assert resolve(str(tiny_model_dir)).kind == "hf_dir"
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(ModelNotFoundError, match="no such model"):
        resolve("./does/not/exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve(str(tmp_path / "x.gguf"))


def test_missing_hub_model_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sumrl.cli import main

    rc = main(["summarize", "--model", "nobody/no-such-model-xyz", "--data", "scitldr", "--limit", "1",
               "--out", str(tmp_path / "s.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: nobody/no-such-model-xyz") and "Traceback" not in err


def test_tokenizer_pad_distinct_from_eos_and_left_padding(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"


def test_pad_fallback_when_pad_equals_eos(tiny_tokenizer):
    from sumrl.models.loading import configure_tokenizer

    tiny_tokenizer.pad_token = tiny_tokenizer.eos_token
    tok = configure_tokenizer(tiny_tokenizer)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id


def test_chat_prompt_and_plain_fallback(tiny_model_dir, tiny_base_model_dir):
    chat = load_tokenizer(str(tiny_model_dir))
    p = build_prompt(chat, "DOC TEXT", query="what?")
    assert p.startswith("<|im_start|>user\n") and "DOC TEXT" in p and "Query: what?" in p
    assert p.endswith("<|im_start|>assistant\n")
    base = load_tokenizer(str(tiny_base_model_dir))
    q = build_prompt(base, "DOC TEXT")
    assert "<|im_start|>" not in q and q.endswith("Summary:") and "DOC TEXT" in q
    assert prompt_overhead_tokens(chat) > 5


def test_save_and_reload_lora_adapter(tmp_path, tiny_model_dir):
    import torch

    from sumrl.models.lora import add_lora

    model, tok = load_model(str(tiny_model_dir))
    peft_model = add_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    out = tmp_path / "adapter"
    save_model(peft_model, tok, out, base_spec=str(tiny_model_dir))
    assert json.loads((out / "sumrl_model.json").read_text())["base"] == str(tiny_model_dir)
    assert resolve(str(out)).kind == "adapter"
    re_model, _ = load_model(str(out))
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        a = peft_model(input_ids=ids).logits
        b = re_model(input_ids=ids).logits
        base_logits = load_model(str(tiny_model_dir))[0](input_ids=ids).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, base_logits)  # the adapter really changed the model


def test_bf16_load(tiny_model_dir):
    import torch

    model, _ = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
