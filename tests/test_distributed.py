"""Data-parallel training on 2 CPU (gloo) processes under torchrun equals 1 process with the same
global batch and seed: ``sumrl rl`` (GRPO; PPO with a critic; full-weight PPO under FSDP2), ``sumrl rm``
(synthetic and preference; data-parallel and FSDP2) and ``sumrl sft`` (LoRA data-parallel; LoRA and full
under FSDP2, early stopping under FSDP2); and runs interrupted and resumed under FSDP2 = uninterrupted runs.

The 2-process runs are launched twice for the module (one ``torchrun`` for the data-parallel runs, one
for the FSDP2 runs, each running its commands in turn: process start-up is most of the cost); each test runs its 1-process twin in-process and
compares.

Sampling is made comparable by a deterministic rollout engine (tests/dist_worker.py) installed in
both runs: each completion is a function of its prompt and its index in the group, not of the
process that samples it, so both runs train on the same episodes; everything else (scoring, no-grad
passes, KL, whitening, group baselines, the update, clipping, checkpoints, logging) is sumrl's own.

Tolerance: the runs differ only by floating-point rounding (a process pads its rows to its own
widest in the no-grad passes; gradients are summed by an all-reduce instead of accumulated in one
process): every logged metric within rel 1e-4 / abs 1e-6, trained weights within 1e-5 (relative to
their largest entry, at least 1). A statistic over half the batch, a gradient not averaged or a
normaliser of the local mini-batch moves them by orders of magnitude more."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sumrl.cli import main

HERE = Path(__file__).parent
ROOT = HERE.parent
CHEAP = "length,eos,repetition"

RL_CASES = {
    # group baselines, KL in the reward, micro-batches that cut across a process's rows
    # + the held-out evaluation (before step 1 and after step 2), split over the processes
    "grpo": ["--algo", "grpo", "--samples-per-prompt", "2", "--batch-size", "4", "--kl-coef", "0.05",
             "--micro-batch-size", "3", "--eval-every", "2", "--val-examples", "3", "--val-batch-size", "2"],
    # critic, GAE, whitened advantages, 2 epochs x 2 mini-batches, policy/critic clipped separately
    "ppo": ["--algo", "ppo", "--batch-size", "4", "--ppo-epochs", "2", "--mini-batch-size", "2",
            "--micro-batch-size", "1", "--kl-coef", "0.05", "--max-grad-norm", "0.5"],
}


# RL on prompts of very different lengths (uneven_rl_file: short and 96-token prompts) with a small token budget
# per pass: a process whose prompts are long plans 2 micro-batches where one with short prompts plans 1 -- in the
# no-grad passes (policy, values, reference) and in the update (checked by the test). Under FSDP2 every forward and
# backward is a collective, so the processes must still make the same number of calls.
RL_UNEVEN = {
    "grpo-uneven": ["--algo", "grpo", "--samples-per-prompt", "2", "--batch-size", "4", "--kl-coef", "0.05",
                    "--micro-batch-tokens", "150"],
    "ppo-uneven": ["--algo", "ppo", "--batch-size", "4", "--kl-coef", "0.05", "--micro-batch-tokens", "150",
                   "--max-grad-norm", "0.5"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(k, None)
    return env


def torchrun(nproc: int, commands: list[list[str]], workdir: Path, *, seed: int = 0, timeout: int = 600,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """``sumrl`` commands in turn in one group of ``nproc`` gloo processes, with the deterministic engine."""
    cmd_file = workdir / "commands.json"
    cmd_file.write_text(json.dumps(commands))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), str(HERE / "dist_worker.py"), str(seed), str(cmd_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**_env(), **(env or {})}, cwd=str(ROOT))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # a hang (processes waiting on each other's collectives): end the workers too -- torchrun starts them
        # in sessions of their own, so killing the launcher alone would leave them waiting
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the {nproc} processes did not finish within {timeout} s (a hang?)\n{out[-3000:]}{err[-5000:]}")
    p = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def _metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    f = out / "adapter_model.safetensors"
    return load_file(str(f if f.exists() else out / "model.safetensors"))


def _close(a, b, rel=1e-4, abs_=1e-6, where=""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], rel, abs_, f"{where}/{k}")
    elif isinstance(a, (int, float)) and not isinstance(a, bool) and a is not None:
        assert b == pytest.approx(a, rel=rel, abs=abs_), (where, a, b)
    elif isinstance(a, list) and a and isinstance(a[0], (int, float)):
        assert b == pytest.approx(a, rel=rel, abs=abs_), (where, a, b)
    else:
        assert a == b, (where, a, b)


def assert_same_weights(a: Path, b: Path, tol: float = 1e-5, skip: tuple = ()) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    moved = 0
    for k in wa:
        if k in skip:
            continue
        scale = max(float(wa[k].abs().max()), 1.0)
        assert float((wa[k] - wb[k]).abs().max()) <= tol * scale, k
        moved += int(bool((wa[k] != 0).any()))
    assert moved  # the comparison is not between two untrained models


def _rl(policy, data, out, case):
    return ["rl", "--policy", str(policy), "--data", str(data), "--out", str(out), "--reward", CHEAP,
            "--max-new-tokens", "6", "--max-prompt-tokens", "96", "--no-progress", "--no-tensorboard",
            "--steps", "2", "--eval-every", "0", "--no-bf16", "--lr", "0.01", "--seed", "3", "--sample-every", "1",
            *{**RL_CASES, **RL_UNEVEN}[case]]


def _rm(kind, source, model, out):
    common = ["--out", str(out), "--backbone", "policy", "--model", str(model), "--steps", "2", "--batch-size", "2",
              "--max-length", "96", "--lr", "1e-2", "--seed", "1"]
    if kind == "synthetic":
        return ["rm", "train", "--kind", "synthetic", "--data", str(source), "--max-summary-tokens", "48",
                "--micro-batch-size", "1", *common]
    return ["rm", "train", "--kind", "preference", "--pairs", str(source), "--max-summary-tokens", "32",
            "--margin", *common]


def _sft(model, data, out, *extra):
    return ["sft", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "2", "--batch-size", "4",
            "--max-seq-len", "96", "--max-target-tokens", "16", "--eval-every", "0", "--no-progress", "--no-tensorboard",
            "--no-bf16", "--lr", "1e-2", "--warmup-steps", "0", "--seed", "2", *extra]


# SFT under FSDP2: LoRA, and full fine-tuning with validation (loss and greedy generation on every process)
SFT_FSDP = {"sft": (), "sft-full": ("--full", "--lr", "1e-3", "--eval-every", "1", "--val-examples", "2",
                                    "--val-generate", "2", "--val-max-new-tokens", "4")}


# full-weight RL under FSDP2: the reference a frozen copy sharded like the policy, the head critic on the
# sharded trunk (PPO: critic, GAE, KL in the reward, 2 epochs x 2 mini-batches)
RL_FULL = ["--no-lora", "--lr", "1e-3"]
# SFT early stopping under FSDP2: validation every step; with these settings the 1-process run's best
# validation is not its last step, so the best weights are gathered, saved and loaded back into the shards
SFT_ES = ("--full", "--lr", "0.1", "--steps", "4", "--eval-every", "1", "--val-examples", "2", "--val-generate", "0",
          "--early-stopping-patience", "2")


# LoRA SFT on documents of uneven length: at step 2 packing gives one process 2 micro-batches and the other 1
# (checked by uneven_counts), so under FSDP2 / ZeRO-2 the second runs an idle pass to keep the collectives in step
UNEVEN = ("--max-seq-len", "256")


def uneven_file(files: Path) -> Path:
    from conftest import CORPUS

    rows = [{"id": f"u{i}", "document": f"Paper {i}. " + " ".join(CORPUS[i:i + 1 + (i * 5) % 7]),
             "summary": CORPUS[i].split(".")[0] + ".", "split": "train"} for i in range(8)]
    f = files / "uneven.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def uneven_counts(data: Path, model: Path) -> list[list[int]]:
    """Micro-batches per step and process (2 processes) of the uneven-length SFT run, as sumrl sft plans them."""
    from transformers import AutoTokenizer

    from sumrl.data import load_data
    from sumrl.training.common import StepSampler
    from sumrl.training.config import SFTConfig
    from sumrl.training.packing import plan_micro_batches
    from sumrl.training.sft import _fields, encode_for

    cfg = SFTConfig(model=str(model), data=str(data), out="x", steps=2, batch_size=4, max_seq_len=256,
                    max_target_tokens=16, seed=2)
    seqs = encode_for(cfg, AutoTokenizer.from_pretrained(model),
                      load_data(cfg.data, cfg.split, fields=_fields(cfg), require_summary=True, seed=cfg.seed))
    sampler = StepSampler(len(seqs), cfg.batch_size, cfg.seed)
    return [[len(plan_micro_batches([len(x) for x in [seqs[i] for i in sampler.indices(step)][r::2]],
                                    cfg.tokens_per_micro_batch, packing=True)) for r in range(2)] for step in range(2)]


def uneven_rl_file(files: Path) -> Path:
    """Training prompts of a title alone (51 prompt tokens) or cut at --max-prompt-tokens 96 (94), placed so that
    with --seed 3 the processes' prompts are short/short and long/long in step 1's no-grad passes (1 and 2
    micro-batches under --micro-batch-tokens 150), and in step 2's update (the mini-batch shuffle: 2 and 1)."""
    from conftest import CORPUS

    rows = [{"id": f"r{i}", "document": f"Paper {i}." + (" " + " ".join(CORPUS[i:i + 8]) if i in (0, 1, 3, 5) else ""),
             "summary": CORPUS[i].split(".")[0] + ".", "split": "train"} for i in range(8)]
    f = files / "uneven_rl.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _with(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def fsdp_resume_commands(files: Path, model: Path, outs: dict) -> list[list[str]]:
    """Runs interrupted after step 1 and resumed under FSDP2 on the same 2 processes: full-weight PPO
    (``--steps 1``, then ``--steps 2 --resume``) and LoRA SFT (stopped after its step-1 checkpoint,
    as a kill would stop it, then ``--resume``)."""
    rl = _rl(model, files / "rl.jsonl", outs["ppo-full-resumed"], "ppo") + RL_FULL
    sft = _sft(model, files / "rl.jsonl", outs["sft-resumed"], "--save-every", "1")
    return [_with(rl, "--steps", "1"), [*rl, "--resume"], ["@stop=1", *sft], [*sft, "--resume"]]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from test_reward_model import _docs

    from conftest import CORPUS

    d = tmp_path_factory.mktemp("dist")
    # distinct documents: the deterministic engine tells completions apart by their prompt
    rows = [{"id": f"d{i}", "document": f"Paper {i}. " + " ".join(CORPUS[i:i + 3]), "summary": CORPUS[i].split(".")[0] + ".",
             "split": "train" if i < 8 else "val"} for i in range(11)]
    (d / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = _docs()
    (d / "rm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs + [{**docs[0], "id": "v0", "split": "val"}]))
    pairs = [{"id": r["id"], "document": r["document"], "query": None, "chosen": r["summary"],
              "rejected": "the the the the", "margin": 1.0, "source": "toy",
              "meta": {"split": "test" if k >= 4 else "train"}} for k, r in enumerate(docs)]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return d


@pytest.fixture(scope="module")
def two(files, tiny_model_dir):
    """The 2-process runs: {name: output folder}, plus the launcher's stdout."""
    outs = {name: files / f"two-{name}" for name in [*RL_CASES, "synthetic", "preference", "sft"]}
    cmds = [_rl(tiny_model_dir, files / "rl.jsonl", outs[c], c) for c in RL_CASES]
    cmds += [_rm("synthetic", files / "rm.jsonl", tiny_model_dir, outs["synthetic"]),
             _rm("preference", files / "pairs.jsonl", tiny_model_dir, outs["preference"]),
             _sft(tiny_model_dir, files / "rl.jsonl", outs["sft"])]
    p = torchrun(2, cmds, files)
    return outs, p.stdout


@pytest.fixture(scope="module")
def two_fsdp(files, tiny_model_dir):
    """The RL, RM and SFT runs again on 2 processes under FSDP2 (Accelerate's FSDP path forced on the
    CPU group, tests/dist_worker.py): the optimizer prepared with the model, the full weights gathered
    for checkpoints and the published model; plus one GRPO run that samples with the real engine
    (generation kept in step over the sharded processes), full-weight PPO (the reference a sharded
    frozen copy), runs interrupted and resumed, and SFT early stopping. One launch for all."""
    outs = {k: files / f"fsdp-{k}" for k in (*RL_CASES, "synthetic", "preference", "real", *SFT_FSDP, "ppo-full",
                                             "ppo-full-resumed", "sft-resumed", "sft-es", "sft-uneven")}
    cmds = [_rl(tiny_model_dir, files / "rl.jsonl", outs[c], c) for c in RL_CASES]
    cmds += [_rm("synthetic", files / "rm.jsonl", tiny_model_dir, outs["synthetic"]),
             _rm("preference", files / "pairs.jsonl", tiny_model_dir, outs["preference"]),
             ["@real", *_rl(tiny_model_dir, files / "rl.jsonl", outs["real"], "grpo")]]
    cmds += [_sft(tiny_model_dir, files / "rl.jsonl", outs[k], *a) for k, a in SFT_FSDP.items()]
    # full-weight RL, the interrupted-and-resumed runs, SFT early stopping
    cmds += [_rl(tiny_model_dir, files / "rl.jsonl", outs["ppo-full"], "ppo") + RL_FULL]
    cmds += fsdp_resume_commands(files, tiny_model_dir, outs)
    cmds += [_sft(tiny_model_dir, files / "rl.jsonl", outs["sft-es"], *SFT_ES)]
    cmds += [_sft(tiny_model_dir, uneven_file(files), outs["sft-uneven"], *UNEVEN)]
    p = torchrun(2, cmds, files, env={"SUMRL_TEST_FSDP2": "1"})
    assert (p.stdout + p.stderr).count("2 process(es); FSDP2") == len(SFT_FSDP) + 4, p.stdout + p.stderr
    assert p.stdout.count("rm: 2 processes (FSDP2, parameters, gradients and optimizer state sharded)") == 2
    assert p.stdout.count("prompts each; FSDP2") == len(RL_CASES) + 4
    assert p.stdout.count("resuming at step 1; 2 processes") == 1  # rl; sft says it in its own words
    # each of the tiny model's 2 decoder layers its own unit, plus the root (embeddings, head, value head)
    assert (p.stdout + p.stderr).count("FSDP2 (3 shard units;") == len(RL_CASES) + 4 + len(SFT_FSDP) + 4
    return outs


@pytest.fixture(scope="module")
def one_ppo_full(files, tiny_model_dir, tmp_path_factory):
    """Full-weight PPO in one process (the twin of the FSDP2 runs), with the deterministic engine."""
    import sumrl.generation.engine as E
    from dist_worker import install

    saved = E.HFEngine.generate
    install(0)
    try:
        out = tmp_path_factory.mktemp("one-ppo-full")
        assert main(_rl(tiny_model_dir, files / "rl.jsonl", out, "ppo") + RL_FULL) == 0
    finally:
        E.HFEngine.generate = saved
    return out


def _same_run(one: Path, two: Path, drop: tuple = ("time/",), tol: float = 1e-5) -> None:
    ma, mb = _metrics(one), _metrics(two)
    assert [r["step"] for r in mb] == [r["step"] for r in ma] and ma
    for ra, rb in zip(ma, mb):
        _close({k: v for k, v in ra.items() if not k.startswith(drop)},
               {k: v for k, v in rb.items() if not k.startswith(drop)}, where=f"step {ra['step']}")
    assert_same_weights(one, two, tol)


def test_full_weight_rl_under_fsdp2_equals_one_process(two_fsdp, one_ppo_full):
    """The frozen reference copy sharded like the policy (every KL term reads it), the head critic on the
    sharded trunk, all weights trained: the same metrics, sample tables and published model as one process."""
    two = two_fsdp["ppo-full"]
    _same_run(one_ppo_full, two)
    samples = lambda out: (out / "samples.jsonl").read_text()
    assert samples(one_ppo_full) == samples(two)
    assert (two / "model.safetensors").exists() and not (two / "adapter_model.safetensors").exists()
    assert "objective/kl" in _metrics(two)[-1] and "value/loss" in _metrics(two)[-1]
    # the AdamW state gathered from the shards is the one-process optimizer.pt: same numbering, same groups
    opt = lambda out: torch.load(out / "checkpoints" / "step-00000002" / "optimizer.pt")
    a, b = opt(one_ppo_full), opt(two)
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys() and a["state"]
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert type(b["state"][i][k]) is torch.Tensor and b["state"][i][k].shape == v.shape, (i, k)
            assert float((v - b["state"][i][k]).abs().max()) <= 1e-5 * max(float(v.abs().max()), 1e-3), (i, k)


def test_an_fsdp2_checkpoint_resumes_in_one_process(two_fsdp, tiny_model_dir, files, tmp_path, engine, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_fsdp["ppo-full"], run)  # 2 steps on 2 FSDP2 processes, checkpoint at step 2
    args = _with(_rl(tiny_model_dir, files / "rl.jsonl", run, "ppo") + RL_FULL, "--steps", "3")
    assert main([*args, "--resume"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3]


@pytest.mark.parametrize("case", ["rl", "sft"])
def test_an_fsdp2_run_resumed_equals_the_uninterrupted_run(case, request, two_fsdp, one_ppo_full):
    """Stopped after step 1 and resumed under FSDP2: the whole weights and AdamW state of the checkpoint
    go back into the shards (torch.distributed.checkpoint's state-dict helpers); steps are logged once
    and the result equals the run that was never stopped."""
    if case == "rl":  # full-weight PPO: against the uninterrupted one-process run
        one, two = one_ppo_full, two_fsdp["ppo-full-resumed"]
    else:  # LoRA SFT: against the uninterrupted FSDP2 run
        one, two = request.getfixturevalue("two_fsdp")["sft"], two_fsdp["sft-resumed"]
    _same_run(one, two, drop=("time/", "train/tokens_per_s", "perf/"))
    assert (two / "checkpoints" / "step-00000002").is_dir()


def test_sft_early_stopping_under_fsdp2_equals_one_process(two_fsdp, files, tiny_model_dir, tmp_path):
    from sumrl.models.loading import read_model_meta

    one = tmp_path / "one"
    assert main(_sft(tiny_model_dir, files / "rl.jsonl", one, *SFT_ES)) == 0
    two = two_fsdp["sft-es"]
    meta = read_model_meta(one)
    # the published weights are not the last ones, and the run stopped early
    assert meta["best_step"] < max(r["step"] for r in _metrics(one)) and meta["stopped_at"] < 4
    assert read_model_meta(two)["best_step"] == meta["best_step"]
    # lr 0.1 (for the validation loss to rise within 4 steps): Adam moves every element by up to lr whatever
    # its gradient's size, so embedding rows whose gradients are near Adam's eps (1e-8) turn the
    # all-reduce's rounding into differences of ~1e-5 (1.6e-5 seen); 1e-4 is still 1/1000 of one step,
    # and publishing the last instead of the best weights moves them by ~lr
    _same_run(one, two, drop=("time/", "train/tokens_per_s", "perf/", "train/micro_batches"), tol=1e-4)


@pytest.fixture
def engine():
    """The worker's deterministic engine in this (1-process) run too."""
    import sumrl.generation.engine as E
    from dist_worker import install

    saved = E.HFEngine.generate
    install(0)
    yield
    E.HFEngine.generate = saved


@pytest.mark.parametrize("sharding", ["ddp", "fsdp2"])
@pytest.mark.parametrize("case", list(RL_CASES))
def test_rl_on_two_processes_equals_one(case, sharding, request, files, tiny_model_dir, tmp_path, engine):
    if sharding == "ddp":
        outs, stdout = request.getfixturevalue("two")
        assert stdout.count("rl done") == len(RL_CASES)  # one summary line per run, not per process
        assert stdout.count("2 processes, 2 prompts each") == len(RL_CASES)
    else:
        outs = request.getfixturevalue("two_fsdp")
    one = tmp_path / "one"
    assert main(_rl(tiny_model_dir, files / "rl.jsonl", one, case)) == 0
    ma, mb = _metrics(one), _metrics(outs[case])
    assert [r["step"] for r in mb] == ([0, 1, 2] if case == "grpo" else [1, 2])  # once each, by the main process
    if case == "grpo":
        assert "eval/reward" in mb[0] and "eval/reward" in mb[-1]
    samples = lambda out: [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert samples(one) == samples(outs[case])  # the sample tables, held-out ones included
    for ra, rb in zip(ma, mb):
        _close({k: v for k, v in ra.items() if not k.startswith("time/")},
               {k: v for k, v in rb.items() if not k.startswith("time/")}, where=f"step {ra['step']}")
    assert_same_weights(one, outs[case])
    assert (outs[case] / "checkpoints" / "step-00000002" / "trainable.pt").exists()


def test_rl_under_fsdp2_samples_with_the_real_engine(two_fsdp, two, tiny_model_dir):
    """Generation on the sharded policy: every process takes the same number of decoding steps
    (synced), training rollouts and the greedy held-out curve; the adapter and a checkpoint in the
    one-process format come out whole and load."""
    from sumrl.models.loading import load_model

    out = two_fsdp["real"]
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/reward" in rows[0] and "objective/kl" in rows[1]
    model, _ = load_model(str(out))
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.dim() == 2 and p.shape[0] * p.shape[1] > 0 for p in lora.values())
    # the checkpoint holds whole tensors, as a data-parallel run's does
    state = torch.load(out / "checkpoints" / "step-00000002" / "trainable.pt")
    ddp = torch.load(two[0]["grpo"] / "checkpoints" / "step-00000002" / "trainable.pt")
    assert all(type(v) is torch.Tensor for v in state.values())
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in ddp.items()}


@pytest.mark.parametrize("sharding", ["ddp", "fsdp2"])
@pytest.mark.parametrize("kind", ["synthetic", "preference"])
def test_rm_on_two_processes_equals_one(kind, sharding, request, files, tiny_model_dir, tmp_path):
    if sharding == "ddp":
        outs, stdout = request.getfixturevalue("two")
        assert stdout.count("saved reward model to") == 2 and stdout.count("rm: 2 processes (data-parallel)") == 2
    else:
        outs = request.getfixturevalue("two_fsdp")
    one = tmp_path / "one"
    source = files / ("rm.jsonl" if kind == "synthetic" else "pairs.jsonl")
    assert main(_rm(kind, source, tiny_model_dir, one)) == 0
    ma = json.loads((one / "metrics.json").read_text())
    mb = json.loads((outs[kind] / "metrics.json").read_text())
    ma.pop("seconds"), mb.pop("seconds")
    skip = ()
    if kind == "preference":
        # The head's bias adds the same amount to the chosen and the rejected score: its true gradient
        # under the pairwise loss is 0, and Adam turns the rounding noise in it (1e-10) into steps of up
        # to lr. Its difference is bounded by lr x steps and shifts the mean value by exactly itself.
        db = float(_weights(outs[kind])["head.bias"] - _weights(one)["head.bias"])
        assert abs(db) <= 1e-2 * 2
        for k in ("normalization", "token_normalization"):
            ma[k]["mean"] += db
        skip = ("head.bias",)
    _close(ma, mb, where=kind)
    assert_same_weights(one, outs[kind], skip=skip)


@pytest.mark.parametrize("case", ["ddp", *SFT_FSDP])
def test_sft_on_two_processes_equals_one(case, request, files, tiny_model_dir, tmp_path):
    one = tmp_path / "one"
    if case == "ddp":
        outs, _ = request.getfixturevalue("two")
        two_out, extra = outs["sft"], ()
    else:
        two_out, extra = request.getfixturevalue("two_fsdp")[case], SFT_FSDP[case]
        assert (two_out / "checkpoints").is_dir()
    assert main(_sft(tiny_model_dir, files / "rl.jsonl", one, *extra)) == 0
    ma, mb = _metrics(one), _metrics(two_out)
    if "--val-examples" in extra:
        assert any("val/loss" in r for r in mb) and any("val/rouge1" in r for r in mb)
    assert [r["step"] for r in mb] == [r["step"] for r in ma] and ma
    drop = ("time/", "train/tokens_per_s", "perf/", "train/micro_batches")  # per-process counts and speeds
    for ra, rb in zip(ma, mb):
        _close({k: v for k, v in ra.items() if not k.startswith(drop)},
               {k: v for k, v in rb.items() if not k.startswith(drop)}, where=f"sft step {ra['step']}")
    assert_same_weights(one, two_out)


def test_a_two_process_run_resumes_in_one_process(two, tmp_path, tiny_model_dir, files, engine, capsys):
    import shutil

    outs, _ = two
    run = tmp_path / "run"
    shutil.copytree(outs["grpo"], run)  # 2 steps on 2 processes, checkpoint at step 2
    args = _rl(tiny_model_dir, files / "rl.jsonl", run, "grpo")
    args[args.index("--steps") + 1] = "3"
    assert main([*args, "--resume"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert [r["step"] for r in _metrics(run)] == [0, 1, 2, 3]  # step 0: the held-out curve before training


def test_a_batch_that_does_not_split_evenly_is_one_line(tiny_model_dir, files, tmp_path):
    from sumrl.errors import ConfigError
    from sumrl.rl.distributed import check_divisible

    check_divisible(batch_size=4, group_size=2, mini_batch_size=None, world=2)
    with pytest.raises(ConfigError, match="--batch-size 3 must be a multiple of the number of processes"):
        check_divisible(batch_size=3, group_size=2, mini_batch_size=None, world=2)
    with pytest.raises(ConfigError, match="--mini-batch-size 3"):
        check_divisible(batch_size=4, group_size=2, mini_batch_size=3, world=2)


def test_concatenated_parts_equal_one_collate():
    """What the processes' rollouts concatenate to is exactly ``collate`` of all their episodes."""
    from sumrl.rl.distributed import concat_rollouts, concat_rows, shard
    from sumrl.rl.trajectory import Episode, collate

    eps = [Episode(example_index=i, group=i // 2, prompt_ids=tuple(range(1, 3 + i)), action_ids=tuple(range(5, 5 + (i * 3) % 5 + 1)),
                   summary_ids=tuple(range(5, 5 + (i * 3) % 5)), finished=True, text=str(i)) for i in range(8)]
    whole = collate(eps, pad_id=0)
    parts = [collate(shard(eps, r, 4), pad_id=0) for r in range(4)]
    got = concat_rollouts(parts, pad_id=0)
    for f in ("query_ids", "query_mask", "response_ids", "response_mask", "action_mask", "value_mask", "finished"):
        assert torch.equal(getattr(got, f), getattr(whole, f)), f
    assert got.episodes == whole.episodes
    x = [torch.ones(2, 3), torch.ones(2, 5)]
    assert concat_rows(x).shape == (4, 5) and float(concat_rows(x).sum()) == 16.0
    assert concat_rows([None, None]) is None
    assert shard(list(range(6)), 1, 3) == [2, 3]


def test_sampling_seeds_differ_by_process_and_step_and_repeat():
    from sumrl.rl.distributed import step_seed

    seeds = {step_seed(s, t, r) for s in (0, 1) for t in range(50) for r in range(8)}
    assert len(seeds) == 2 * 50 * 8  # no two (seed, step, rank) share a sampling seed
    assert step_seed(3, 7, 1) == step_seed(3, 7, 1)


def test_a_deepspeed_launch_without_deepspeed_is_one_line(tiny_model_dir, files, tmp_path, monkeypatch, capsys):
    """sft, rm and rl run under DeepSpeed ZeRO-2 (tests/test_deepspeed.py, where DeepSpeed is installed); launched
    with a DeepSpeed config where it is not, every command stops before any work with one line. DeepSpeed is
    hidden (``import deepspeed`` raises ImportError) so that this runs where it is installed too."""
    import sys

    monkeypatch.setitem(sys.modules, "deepspeed", None)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(files / "rl.jsonl"), "--out", str(tmp_path / "s"),
                 "--steps", "1", "--max-target-tokens", "16", "--max-seq-len", "96", "--no-bf16"]) == 2
    assert main(_rl(tiny_model_dir, files / "rl.jsonl", tmp_path / "rl", "grpo")) == 2
    assert main(_rm("preference", files / "pairs.jsonl", tiny_model_dir, tmp_path / "rm")) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(err) == 3 and all("DeepSpeed is not installed" in l and "docs/scale.md" in l for l in err), err
    assert not (tmp_path / "s").exists()


def _ds_accelerator(stage=2, **config):
    from types import SimpleNamespace

    cfg = {"zero_optimization": {"stage": stage, "offload_optimizer": {"device": "none"}}, **config}
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage, deepspeed_config=cfg)))


@pytest.mark.parametrize("acc,match", [
    (_ds_accelerator(0), "ZeRO-1/2/3 only, not ZeRO-0"),
    (_ds_accelerator(bf16={"enabled": True}), "mixed_precision: 'no'"),
    (_ds_accelerator(optimizer={"type": "Adam"}), "remove the 'optimizer' section"),
    (_ds_accelerator(zero_optimization={"stage": 2, "offload_optimizer": {"device": "cpu"}}), "does not offload"),
])
def test_what_does_not_run_under_deepspeed_is_one_line(acc, match):
    """Settings whose maths sumrl cannot keep under DeepSpeed stop before any work (no DeepSpeed needed)."""
    from sumrl.errors import ConfigError
    from sumrl.training.parallel import check_deepspeed

    check_deepspeed(_ds_accelerator(), "sft")  # ZeRO-2 as shipped: accepted
    check_deepspeed(_ds_accelerator(3), "sft")  # ZeRO-3 too (tests/test_deepspeed.py)
    with pytest.raises(ConfigError, match=match):
        check_deepspeed(acc, "sft")


@pytest.mark.parametrize("extra", [("--algo", "aggrevated", "--guide", "x"), ("--target-coef", "0.1")])
def test_rl_not_tested_under_deepspeed_is_one_line(extra, tiny_model_dir, files, tmp_path, monkeypatch, capsys):
    """PPO (value head or adapter), GRPO and RLOO run under ZeRO-2 (tests/test_deepspeed.py); the guided
    algorithms and --target-coef stop with one line before any work."""
    import sumrl.training.parallel as par

    monkeypatch.setattr(par, "is_deepspeed", lambda acc: True)
    monkeypatch.setattr(par, "check_deepspeed", lambda *a, **k: None)
    assert main(_rl(tiny_model_dir, files / "rl.jsonl", tmp_path / "rl", "ppo") + list(extra)) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "under DeepSpeed runs --algo ppo, grpo and rloo only" in err[0], err


def test_accelerate_recipes_are_valid_configs():
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig

    root = ROOT / "recipes" / "accelerate"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert names == ["ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp2.yaml"]
    for name in names:
        cfg = ClusterConfig.from_yaml_file(str(root / name))  # Accelerate's own reader (unknown keys fail)
        assert cfg.mixed_precision in ("no", "bf16") and cfg.num_processes == 8, name
    assert yaml.safe_load((root / "fsdp2.yaml").read_text())["fsdp_config"]["fsdp_version"] == 2


def test_sft_with_idle_passes_under_fsdp2_equals_one_process(two_fsdp, files, tiny_model_dir, tmp_path):
    """Packing gives the processes different numbers of micro-batches (2 and 1 at step 2); under FSDP2 every
    forward and backward is a collective, so the one with fewer runs an idle pass (0 x a loss): it used to hang
    there. The result equals one process."""
    data = files / "uneven.jsonl"
    counts = uneven_counts(data, tiny_model_dir)
    assert any(a != b for a, b in counts), counts  # the case does exercise idle passes
    one = tmp_path / "one"
    assert main(_sft(tiny_model_dir, data, one, *UNEVEN)) == 0
    # Adam turns rounding noise in near-zero LoRA gradients into steps of up to lr (see test_deepspeed.py)
    _same_run(one, two_fsdp["sft-uneven"], drop=("time/", "train/tokens_per_s", "perf/", "train/micro_batches"),
              tol=1e-4)


@pytest.fixture(scope="module")
def two_fsdp_uneven(files, tiny_model_dir):
    """GRPO (LoRA, the reference = adapters off) and PPO (the head critic) on prompts of uneven length under
    FSDP2, in a launch of their own with a short timeout: a hang fails within 2 minutes. Also returns each
    process's planned micro-batch counts (tests/dist_worker.py, SUMRL_TEST_PASSES)."""
    data = uneven_rl_file(files)
    outs = {k: files / f"fsdp-{k}" for k in RL_UNEVEN}
    passes = files / "passes"
    passes.mkdir(exist_ok=True)
    p = torchrun(2, [_rl(tiny_model_dir, data, outs[k], k) for k in RL_UNEVEN], files, timeout=120,
                 env={"SUMRL_TEST_FSDP2": "1", "SUMRL_TEST_PASSES": str(passes)})
    assert p.stdout.count("prompts each; FSDP2 (3 shard units;") == len(RL_UNEVEN), p.stdout + p.stderr
    counts = {k: [json.loads((passes / f"{outs[k].name}-rank{r}.json").read_text()) for r in range(2)]
              for k in RL_UNEVEN}
    return outs, counts


@pytest.mark.parametrize("case", list(RL_UNEVEN))
def test_rl_with_uneven_micro_batches_under_fsdp2_equals_one_process(case, two_fsdp_uneven, files, tiny_model_dir,
                                                                     tmp_path, engine):
    """The token budget gives the processes different numbers of micro-batches in the no-grad passes and in the
    update; under FSDP2 each of those forwards and backwards is a collective, so the process with fewer runs
    idle passes (results dropped, 0 x the loss): without them the run hangs. The result equals one process."""
    outs, counts = two_fsdp_uneven
    assert_uneven_rl_equals_one_process(case, outs[case], counts[case], files, tiny_model_dir, tmp_path)


def assert_uneven_rl_equals_one_process(case: str, two: Path, counts: list, files: Path, model: Path,
                                        tmp_path: Path) -> None:
    """The 2-process run ``two`` of an RL_UNEVEN case planned different micro-batch counts on its processes
    (``counts``: per process, per call of micro_batches) in the no-grad passes and in the update, and equals
    one process (metrics, sample tables, weights). Also used by tests/test_deepspeed.py (ZeRO-2)."""
    a, b = counts
    # per call of micro_batches, in order, for each of the 2 steps: the no-grad passes (PPO: policy with values,
    # then reference; GRPO: the reference only, its policy pass is the update's own), then the update's one
    # mini-batch
    per_step = {"grpo-uneven": 2, "ppo-uneven": 3}[case]
    assert len(a) == len(b) == 2 * per_step, (a, b)
    update = {per_step - 1, 2 * per_step - 1}
    assert any(a[k] != b[k] for k in range(2 * per_step) if k not in update), (a, b)  # uneven no-grad passes ...
    assert any(a[k] != b[k] for k in update), (a, b)  # ... and an uneven update
    one = tmp_path / "one"
    assert main(_rl(model, files / "uneven_rl.jsonl", one, case)) == 0
    samples = lambda out: (out / "samples.jsonl").read_text()
    assert samples(one) == samples(two)
    _same_run(one, two)
    if case == "ppo-uneven":
        assert "value/loss" in _metrics(two)[-1]


def test_lockstep_pads_to_the_busiest_process(monkeypatch):
    """Every process makes as many passes as the busiest; the extra ones repeat the last part, marked idle."""
    import sumrl.training.parallel as par

    monkeypatch.setattr(par, "gather_parts", lambda acc, n: [n, 3])  # the other process plans 3 micro-batches
    assert par.lockstep(None, ["a", "b"], collective=True) == [("a", False), ("b", False), ("b", True)]
    assert par.lockstep(None, ["a", "b", "c", "d"], collective=True) == [(x, False) for x in "abcd"]
    monkeypatch.setattr(par, "gather_parts", lambda acc, n: pytest.fail("no collective without sharding"))
    assert par.lockstep(None, ["a", "b"], collective=False) == [("a", False), ("b", False)]
