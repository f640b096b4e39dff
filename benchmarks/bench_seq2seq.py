"""The encoder run once per group against once per row, on a randomly initialised LED (LoRA r16 on
every projection of encoder and decoder, as ``sumrl rl`` builds it).

    python benchmarks/bench_seq2seq.py --lengths 1024 4096 --samples 4 --new-tokens 64
    python benchmarks/bench_seq2seq.py --smoke

For each prompt length (one random prompt of exactly that many tokens, ``--samples`` rows of it, as
a GRPO group), times, best of ``--repeats``:

* generation: :func:`sumrl.models.seq2seq.generate` with the encoder shared by the group against one
  encoder pass per row (greedy, exactly ``--new-tokens`` tokens: ``min_new_tokens`` keeps a random
  model from stopping early);
* the no-grad forward (old / reference log-probs): :func:`sumrl.models.seq2seq.response_hidden`
  shared against per row;
* the training forward + backward (a loss on the decoder states, gradients into the encoder's and
  decoder's LoRA): shared against per row.

The max absolute difference of the decoder states between the two paths is printed (float32:
expect ~1e-6). The model is built from a config (``--d-model``, ``--layers``, ``--window``), so no
weights are downloaded; the timing is the architecture's, not a trained checkpoint's.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def build(d_model: int, layers: int, window: int, vocab: int, max_len: int):
    import torch
    from transformers import LEDConfig, LEDForConditionalGeneration

    from sumrl.models.lora import add_lora

    torch.manual_seed(0)
    cfg = LEDConfig(vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                    encoder_attention_heads=max(1, d_model // 64), decoder_attention_heads=max(1, d_model // 64),
                    encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, attention_window=[window] * layers,
                    max_encoder_position_embeddings=max_len, max_decoder_position_embeddings=1024, dropout=0.0,
                    attention_dropout=0.0, pad_token_id=1, eos_token_id=2, bos_token_id=0, decoder_start_token_id=2)
    model = LEDForConditionalGeneration(cfg).eval()
    return add_lora(model, r=16, alpha=32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a test runs this)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.lengths, args.samples, args.new_tokens, args.d_model, args.layers, args.window, args.vocab = \
            [64], 2, 4, 64, 1, 16, 512
    import torch

    from sumrl.models.seq2seq import generate, response_hidden

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.d_model, args.layers, args.window, args.vocab, max(16384, max(args.lengths)))
    print(f"LED d_model {args.d_model}, {args.layers}+{args.layers} layers, window {args.window}, LoRA r16; "
          f"{args.samples} samples per prompt, {args.new_tokens} new tokens; {torch.get_num_threads()} threads")
    print("| prompt tokens | part | per row (s) | shared (s) | speed-up | max abs diff |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    rows = []
    g = torch.Generator().manual_seed(0)
    for L in args.lengths:
        G, T = args.samples, args.new_tokens
        q = torch.randint(3, args.vocab, (1, L), generator=g).expand(G, L).clone()
        qm = torch.ones_like(q)
        r = torch.randint(3, args.vocab, (G, T), generator=g)
        rm = torch.ones_like(r)
        gen_kw = dict(max_new_tokens=T, min_new_tokens=T, do_sample=False, pad_token_id=1, eos_token_id=2)
        res = {}
        for share in (False, True):
            t_gen, out = _best(lambda: generate(model, q, qm, share_encoder=share, **gen_kw), args.repeats)
            with torch.no_grad():
                t_fwd, h = _best(lambda: response_hidden(model, q, qm, r, rm, share_encoder=share), args.repeats)

            def train_step():
                model.zero_grad(set_to_none=True)
                hh = response_hidden(model, q, qm, r, rm, share_encoder=share)
                hh.float().square().mean().backward()

            t_train, _ = _best(train_step, args.repeats)
            res[share] = (t_gen, t_fwd, t_train, h, out)
        diff = float((res[True][3] - res[False][3]).abs().max())
        same_tokens = bool(torch.equal(res[True][4], res[False][4]))
        for k, part in enumerate(("generate", "forward (no grad)", "train (fwd+bwd)")):
            a, b = res[False][k], res[True][k]
            extra = diff if k else ("same tokens" if same_tokens else "tokens differ")
            print(f"| {L} | {part} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {extra if isinstance(extra, str) else f'{extra:.1e}'} |")
            rows.append({"prompt_tokens": L, "part": part, "per_row_s": a, "shared_s": b})
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
