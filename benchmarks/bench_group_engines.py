"""The shared-prompt engines against today's plain path, on the default model with LoRA r16.

    python benchmarks/bench_group_engines.py --lengths 512 4096 --samples 4 --new-tokens 64
    python benchmarks/bench_group_engines.py --smoke --policy PATH

For each prompt length (``--prompts`` prompts, default 4 below 2,048 tokens and 1 from there, each
cut to exactly that many tokens from ScisummNet train documents), times, best of ``--repeats``:

* generation: :func:`sumrl.rl.rollout.sample` (``model.generate`` over the P x G repeated prompts)
  against :func:`sumrl.generation.sampler.sample_groups` (prefill once per prompt, cache expanded,
  finished rows dropped), also with merged LoRA and with bf16 autocast; sampling at temperature
  ``--temperature`` with the model's real end tokens, seeded identically (new-token counts are
  printed: the runs draw different samples, so their lengths can differ);
* the no-grad forward (old log-probs): ``model_hidden_states`` over ``[prompt, response]`` rows
  plus chunked log-probs against :func:`sumrl.models.grouped.grouped_token_logprobs` (with
  ``--prefill-chunk``);
* the training forward + backward of a log-prob loss: the same two paths with gradient.

The max absolute log-prob difference between the plain and grouped paths is printed with each
forward row (float32: expect ~1e-5 or less).
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="default")
    ap.add_argument("--data", default="scisummnet")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--prefill-chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--parts", nargs="+", default=["generate", "forward", "train"],
                    choices=["generate", "forward", "train"])
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="activation checkpointing in the train part (without it the plain path at 512 tokens x 16 "
                         "rows keeps ~16 GB of activations)")
    ap.add_argument("--gen-bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="also time generation under bf16 autocast")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.lengths, args.prompts, args.samples, args.new_tokens = [64], 2, 2, 8

    import torch

    from sumrl.data import load_data
    from sumrl.generation.sampler import left_pad, sample_groups
    from sumrl.generation.summarize import eos_ids
    from sumrl.models.grouped import grouped_token_logprobs
    from sumrl.models.loading import load_model
    from sumrl.models.logprobs import IGNORE_INDEX, chunked_token_logprobs, model_hidden_states, output_head
    from sumrl.models.lora import add_lora
    from sumrl.generation.engine import sample
    from sumrl.rl.rollout import encode_prompt_ids, truncate_at_eos

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.policy, dtype="float32")
    model = add_lora(model, r=16, alpha=32)
    stops = eos_ids(model, tok)
    pad = int(tok.pad_token_id)
    G, T = args.samples, args.new_tokens
    examples = load_data(args.data, "train", require_summary=True)
    rows = []
    for L in args.lengths:
        P = args.prompts or (4 if L < 2048 else 1)
        prompts = [encode_prompt_ids(tok, ex.document, ex.query, max_prompt_tokens=L) for ex in examples[:P]]
        Lq = max(map(len, prompts))
        rep = [p for p in prompts for _ in range(G)]
        resp: list[list[int]] | None = None
        if "generate" in args.parts:
            variants = {
                "rollout.sample (generate, P*G rows)": lambda: [truncate_at_eos(r, stops)[0] for r in sample(
                    model, rep, max_new_tokens=T, temperature=args.temperature, top_p=1.0, stop_ids=stops, pad_id=pad)],
                "sample_groups": lambda: sample_groups(model, prompts, group_size=G, max_new_tokens=T,
                                                       temperature=args.temperature, stop_ids=stops, pad_id=pad,
                                                       prefill_chunk=args.prefill_chunk),
                "sample_groups merged LoRA": lambda: sample_groups(model, prompts, group_size=G, max_new_tokens=T,
                                                                   temperature=args.temperature, stop_ids=stops,
                                                                   pad_id=pad, prefill_chunk=args.prefill_chunk,
                                                                   merge_lora=True),
                "sample_groups merged LoRA + bf16": lambda: sample_groups(
                    model, prompts, group_size=G, max_new_tokens=T, temperature=args.temperature, stop_ids=stops,
                    pad_id=pad, prefill_chunk=args.prefill_chunk, merge_lora=True, bf16=True),
            }
            if not args.gen_bf16:
                variants.pop("sample_groups merged LoRA + bf16")
            for name, fn in variants.items():
                torch.manual_seed(0)
                t, out = _best(fn, args.repeats)
                n_new = sum(map(len, out))
                rows.append((L, P, "generate", name, t, f"{n_new} new tokens ({n_new / t:.1f} tok/s)"))
                print(rows[-1], flush=True)
                resp = resp or out
        if resp is None:  # fixed-length responses when generation is not timed
            g = torch.Generator().manual_seed(0)
            resp = [torch.randint(0, len(tok), (T,), generator=g).tolist() for _ in rep]
        q, qm = left_pad(prompts, pad)
        width = max(1, max(map(len, resp)))
        r = torch.full((len(resp), width), pad, dtype=torch.long)
        rm = torch.zeros_like(r)
        for i, x in enumerate(resp):
            r[i, :len(x)] = torch.tensor(x, dtype=torch.long)
            rm[i, :len(x)] = 1
        weight, softcap = output_head(model)
        tgt = torch.where(rm.bool(), r, torch.full_like(r, IGNORE_INDEX))

        def plain_lp():
            ids = torch.cat([q.repeat_interleave(G, 0), r], 1)
            mask = torch.cat([qm.repeat_interleave(G, 0), rm], 1)
            h = model_hidden_states(model, ids, mask)[:, Lq - 1:Lq - 1 + width]
            return chunked_token_logprobs(h / args.temperature, weight, tgt, softcap=softcap)

        def grouped_lp(chunk):
            return grouped_token_logprobs(model, q, qm, r, rm, temperature=args.temperature,
                                          prefill_chunk=chunk)["logprobs"]

        if "forward" in args.parts:
            with torch.no_grad():
                t_plain, lp_plain = _best(plain_lp, args.repeats)
                t_grp, lp_grp = _best(lambda: grouped_lp(None), args.repeats)
                t_chk, lp_chk = _best(lambda: grouped_lp(args.prefill_chunk), args.repeats)
            diff = max(float((lp_plain - lp_grp).abs().max()), float((lp_plain - lp_chk).abs().max()))
            rows += [(L, P, "forward (no grad)", "plain rows", t_plain, ""),
                     (L, P, "forward (no grad)", "grouped", t_grp, f"max |dlogp| {diff:.1e}"),
                     (L, P, "forward (no grad)", f"grouped, prefill chunk {args.prefill_chunk}", t_chk, "")]
            print(rows[-3:], flush=True)
        if "train" in args.parts:
            if args.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()  # dropout is 0 in these models; checkpointing acts in training mode only

            def step(fn):
                model.zero_grad(set_to_none=True)
                lp = fn()
                (-(lp * rm).sum() / rm.sum()).backward()
                return lp.detach()

            t_plain, lp_plain = _best(lambda: step(plain_lp), args.repeats)
            t_grp, lp_grp = _best(lambda: step(lambda: grouped_lp(None)), args.repeats)
            model.eval()
            ck = " (checkpointing)" if args.gradient_checkpointing else ""
            rows += [(L, P, "train fwd+bwd" + ck, "plain rows", t_plain, ""),
                     (L, P, "train fwd+bwd" + ck, "grouped", t_grp,
                      f"max |dlogp| {float((lp_plain - lp_grp).abs().max()):.1e}")]
            print(rows[-2:], flush=True)
    print()
    print(f"policy {args.policy} + LoRA r16 (float32 weights), {args.samples} samples per prompt, <= {T} new tokens, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print("| prompt tokens | prompts | part | path | seconds | note |")
    print("|---|---|---|---|---|---|")
    for L, P, part, name, t, note in rows:
        print(f"| {L} | {P} | {part} | {name} | {t:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
