"""Runs ``sumrl`` in one process of a (torchrun) group for tests/test_distributed.py, with the
rollout engine replaced by a deterministic one: each completion is a function of (prompt tokens,
its index among the identical prompts of the call, seed) -- not of the process that samples it --
so one process and N processes produce the same episodes and their training can be compared
number for number. Usage: python dist_worker.py SEED COMMANDS.json (a list of sumrl argument
lists, run one after the other in the same process group: one launch for several runs; a list
starting with "@real" samples with the real engine; "@stop=K" stops an sft run after step K, as a kill would). SUMRL_TEST_FSDP2=1: Accelerate's FSDP2 path is
forced (:func:`force_fsdp2`). SUMRL_TEST_PASSES=DIR: each process writes the micro-batch counts its RL
passes planned (:func:`record_passes`)."""

from __future__ import annotations

import sys
import zlib

import torch


class FixedEngine:
    def __init__(self, seed: int, vocab: int):
        self.seed, self.vocab = seed, vocab

    def sync_weights(self, model) -> None:
        pass

    def generate(self, prompts, limits, sampling):
        seen: dict[tuple, int] = {}
        out = []
        for p, lim in zip(prompts, limits):
            key = tuple(int(x) for x in p)
            k = seen.get(key, 0)
            seen[key] = k + 1
            g = torch.Generator().manual_seed(zlib.crc32(repr((key, k, self.seed)).encode()))
            n = int(torch.randint(1, lim + 1, (1,), generator=g))
            toks = torch.randint(3, self.vocab, (n,), generator=g).tolist()
            if n < lim and float(torch.rand(1, generator=g)) < 0.7:
                toks[-1] = int(sampling.stop_ids[0])  # most rows end with an end token
            out.append(toks + [int(sampling.pad_id)] * (lim - n))
        return out


def install(seed: int) -> None:
    """Replace the HF engine's sampling by :class:`FixedEngine` (tokens below 300: in any test vocabulary)."""
    import sumrl.generation.engine as E

    def generate(self, prompts, limits, sampling):
        w = self.model.get_input_embeddings().weight
        vocab = getattr(w, "ds_shape", w.shape)[0]  # a ZeRO-3 placeholder's own shape is (0,)
        return FixedEngine(seed, min(vocab, 300)).generate(prompts, limits, sampling)

    E.HFEngine.generate = generate


def force_fsdp2() -> None:
    """Accelerate maps every CPU run to MULTI_CPU and never applies FSDP there; this puts its FSDP2
    plugin in place after the Accelerator is built, so that ``prepare`` shards with
    ``torch.distributed.fsdp.fully_shard`` over the gloo group exactly as it does on GPUs (each
    transformer layer its own unit, as recipes/accelerate/fsdp2.yaml asks)."""
    import accelerate
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    orig = accelerate.Accelerator.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        if self.state.num_processes > 1:
            self.state.distributed_type = DistributedType.FSDP
            self.state.fsdp_plugin = FullyShardedDataParallelPlugin(
                fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
                state_dict_type="FULL_STATE_DICT")

    accelerate.Accelerator.__init__ = init


def record_passes(folder: str) -> dict:
    """Record how many micro-batches each call of ``RLTrainer.micro_batches`` planned on this process
    (the no-grad passes and the update's mini-batches, in call order); :func:`main` writes them to
    ``DIR/<run folder name>-rank<R>.json`` after each command. Returns the live record."""
    import sumrl.rl.trainer as T

    rec = {"counts": []}
    orig = T.RLTrainer.micro_batches

    def micro_batches(self, batch):
        out = orig(self, batch)
        rec["counts"].append(len(out))
        return out

    T.RLTrainer.micro_batches = micro_batches
    return rec


def main() -> int:
    import json
    import os
    from pathlib import Path

    import sumrl.generation.engine as E

    real = E.HFEngine.generate
    install(int(sys.argv[1]))
    fixed = E.HFEngine.generate
    if os.environ.get("SUMRL_TEST_FSDP2") == "1":
        force_fsdp2()
    passes = os.environ.get("SUMRL_TEST_PASSES")
    rec = record_passes(passes) if passes else None
    from sumrl.cli import main as cli

    for args in json.loads(Path(sys.argv[2]).read_text()):
        # a command starting with "@real" samples with the HF engine itself; "@stop=K": the run is
        # interrupted on every process after step K (and its checkpoint), as a kill would stop it
        E.HFEngine.generate = real if args[:1] == ["@real"] else fixed
        stop = int(args[0].split("=")[1]) if args[0].startswith("@stop=") else None
        with stopped_after(stop):
            rc = cli(args[1:] if args[0].startswith("@") else args)
        if rec is not None:
            rank = os.environ.get("RANK", "0")
            name = Path(args[args.index("--out") + 1]).name
            (Path(passes) / f"{name}-rank{rank}.json").write_text(json.dumps(rec["counts"]))
            rec["counts"] = []
        if rc and not (stop is not None and rc == 130):  # 130: the interruption asked for
            return rc
    return 0


class stopped_after:
    """``sumrl sft`` stops (KeyboardInterrupt, the CLI's exit 130) on every process after step ``k``:
    its step callback, called after the step's checkpoint, raises."""

    def __init__(self, k):
        self.k = k

    def __enter__(self):
        import sumrl.training.sft as S

        self.saved = S.train
        if self.k is not None:
            def train(cfg, *, callbacks=None):
                def stop(step, metrics):
                    if step >= self.k:
                        raise KeyboardInterrupt
                return self.saved(cfg, callbacks=[*(callbacks or []), stop])

            S.train = train
        return self

    def __exit__(self, *exc):
        import sumrl.training.sft as S

        S.train = self.saved
        return False


if __name__ == "__main__":
    sys.exit(main())
