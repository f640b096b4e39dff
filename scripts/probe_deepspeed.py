"""DeepSpeed ZeRO on the CPU, outside sumrl's trainers (docs/scale.md, "DeepSpeed ZeRO-2", the probe
at its end): two optimizer steps of the tiny test Llama under ``deepspeed.initialize`` with gloo. The
trainers themselves run under ZeRO-2 (tests/test_deepspeed.py). DeepSpeed is not a sumrl dependency;
install it by hand first (docs/scale.md, "DeepSpeed install"). Usage, from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m torch.distributed.run --nproc_per_node 2 scripts/probe_deepspeed.py 2

(the argument: the ZeRO stage). Prints each rank's loss per step."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import deepspeed  # noqa: E402
from conftest import build_tiny_model, build_tiny_tokenizer  # noqa: E402

torch.manual_seed(0)
tok = build_tiny_tokenizer()
model = build_tiny_model(tok)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
# a torch optimizer (DeepSpeed's fused Adam needs CUDA), which ZeRO must be told is allowed
cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
       "zero_optimization": {"stage": int(sys.argv[1])}, "zero_allow_untested_optimizer": True,
       "gradient_clipping": 1.0}
deepspeed.init_distributed(dist_backend="gloo")
engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
ids = torch.randint(3, 100, (1, 12))
for step in range(2):
    out = engine(input_ids=ids, labels=ids)
    engine.backward(out.loss)
    engine.step()
    print("rank", os.environ["RANK"], "step", step, "loss", float(out.loss.detach()), flush=True)
