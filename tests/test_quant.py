"""``--load-in-4bit`` (QLoRA: frozen NF4 base through bitsandbytes, LoRA and heads in float32) for
sft, rm and rl, on a decoder and an encoder-decoder. bitsandbytes >= 0.46 quantises and runs 4-bit
layers on CPU, which is what these tests exercise; the CUDA kernels need a GPU (docs/models.md).
Without bitsandbytes only the one-line error is tested."""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import CORPUS, build_tiny_model, build_tiny_tokenizer  # noqa: E402
from sumrl.cli import main  # noqa: E402


def _has_bnb() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


needs_bnb = pytest.mark.skipif(not _has_bnb(), reason="bitsandbytes is not installed (pip install 'sumrl[quant]')")


@pytest.fixture(scope="module")
def quant_dirs(tmp_path_factory):
    """A tiny decoder and a tiny T5 whose linear layers are multiples of bitsandbytes' 64-element
    quantisation block (the 32-wide test models are not)."""
    from transformers import T5Config, T5ForConditionalGeneration

    dirs = {}
    tok = build_tiny_tokenizer(chat=True)
    d = tmp_path_factory.mktemp("q-dec")
    build_tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    dirs["decoder"] = d
    tok = build_tiny_tokenizer(chat=False)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=64, d_ff=128, d_kv=16, num_layers=2,
                                             num_heads=4, dropout_rate=0.0, pad_token_id=tok.pad_token_id,
                                             eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id))
    d = tmp_path_factory.mktemp("q-t5")
    t5.save_pretrained(d)
    tok.save_pretrained(d)
    dirs["t5"] = d
    return dirs


@pytest.fixture(scope="module")
def q_data(tmp_path_factory):
    p = tmp_path_factory.mktemp("q-data") / "docs.jsonl"
    rows = [{"id": f"d{i}", "document": " ".join(CORPUS[i:i + 3]), "summary": " ".join(CORPUS[i].split()[:6]),
             "split": "train" if i < 6 else "val" if i < 8 else "test"} for i in range(10)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_missing_backend_is_one_line(quant_dirs, q_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    rc = main(["sft", "--model", str(quant_dirs["decoder"]), "--data", str(q_data), "--out", str(tmp_path / "o"),
               "--load-in-4bit", "--steps", "1", "--no-progress", "--no-tensorboard"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
    assert rc == 2 and len(err) == 1 and "bitsandbytes" in err[0] and "sumrl[quant]" in err[0]


def test_4bit_needs_lora(quant_dirs, q_data, tmp_path, capsys):
    rc = main(["sft", "--model", str(quant_dirs["decoder"]), "--data", str(q_data), "--out", str(tmp_path / "o"),
               "--load-in-4bit", "--full"])
    assert rc == 2 and "--load-in-4bit needs --lora" in capsys.readouterr().err


@needs_bnb
@pytest.mark.parametrize("fam", ["decoder", "t5"])
def test_4bit_base_sft_rm_rl(fam, quant_dirs, q_data, tmp_path):
    """One 4-bit run of each command: the base is quantised and frozen, only float32 LoRA (and the
    heads) train; the saved adapter reloads on a 4-bit base; the RL reference (adapters off, the
    same 4-bit base) equals the policy at step 1 (KL exactly 0)."""
    from sumrl.models.loading import is_4bit, load_model
    from sumrl.training.sft import build_model
    from sumrl.config import build_config
    from sumrl.training.config import SFTConfig

    cfg = build_config(SFTConfig, overrides=dict(model=str(quant_dirs[fam]), data=str(q_data), out=str(tmp_path / "x"),
                                                 load_in_4bit=True, lora_r=4))
    model, tok, _ = build_model(cfg)
    assert is_4bit(model)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable)
    # chunked log-probs through the 4-bit trunk == the model's own logits (the head stays float32)
    from sumrl.rl.value import PolicyValueModule

    q = torch.tensor([[tok.pad_token_id, 40, 41, 42], [43, 44, 45, 46]])
    qm = (torch.arange(4) > 0).long().expand(2, 4).clone()
    qm[1] = 1
    r = torch.tensor([[50, 51, 52], [53, 54, 55]])
    model.eval()
    with torch.no_grad():
        lp = PolicyValueModule(model)(q, qm, r, torch.ones_like(r))["logprobs"]
        if fam == "t5":
            start = torch.full((2, 1), tok.pad_token_id)
            logits = torch.stack([model(input_ids=q[b:b + 1, 4 - int(qm[b].sum()):],
                                        decoder_input_ids=torch.cat([start[b:b + 1], r[b:b + 1, :-1]], 1)).logits[0]
                                  for b in range(2)])
        else:
            logits = torch.stack([model(input_ids=torch.cat([q[b:b + 1, 4 - int(qm[b].sum()):], r[b:b + 1]], 1)
                                        ).logits[0, -4:-1] for b in range(2)])
    want = torch.log_softmax(logits.float(), -1).gather(2, r[:, :, None]).squeeze(2)
    torch.testing.assert_close(lp, want, atol=1e-4, rtol=0)

    sft = tmp_path / "sft"
    assert main(["sft", "--model", str(quant_dirs[fam]), "--data", str(q_data), "--out", str(sft), "--load-in-4bit",
                 "--lora-r", "4", "--steps", "2", "--batch-size", "2", "--max-seq-len", "128",
                 "--max-target-tokens", "16", "--eval-every", "0", "--no-progress", "--no-tensorboard",
                 "--no-bf16"]) == 0
    assert json.loads((sft / "sumrl_model.json").read_text())["load_in_4bit"] is True
    reloaded, _ = load_model(str(sft))
    assert is_4bit(reloaded)

    rm = tmp_path / "rm"
    assert main(["rm", "train", "--kind", "synthetic", "--data", str(q_data), "--out", str(rm), "--backbone", "policy",
                 "--model", str(quant_dirs[fam]), "--load-in-4bit", "--steps", "1", "--batch-size", "2",
                 "--max-length", "96", "--max-summary-tokens", "24", "--lr", "1e-3", "--eval-limit", "2"]) == 0

    rl = tmp_path / "rl"
    assert main(["rl", "--policy", str(quant_dirs[fam]), "--data", str(q_data), "--out", str(rl), "--load-in-4bit",
                 "--reward", "length,eos", "--batch-size", "2", "--max-new-tokens", "6", "--max-prompt-tokens", "64",
                 "--no-progress", "--no-tensorboard", "--steps", "1", "--eval-every", "0", "--no-bf16",
                 "--lora-r", "4"]) == 0
    row = [json.loads(l) for l in (rl / "metrics.jsonl").read_text().splitlines() if l.strip()][-1]
    assert row["objective/kl"] == 0.0 and row["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert json.loads((rl / "sumrl_model.json").read_text())["load_in_4bit"] is True
