"""Run under `torch.distributed.run --nproc_per_node 2`: FSDP fine-tuning of a tiny model on CPU (gloo)."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch.distributed as dist  # noqa: E402

from conftest import tiny_model  # noqa: E402
from ropesearch.data import TokenizedDocument  # noqa: E402
from ropesearch.models import rope_base  # noqa: E402
from ropesearch.pipeline.finetune import FinetuneConfig, Finetuner  # noqa: E402
from ropesearch.rope import methods  # noqa: E402

dist.init_process_group("gloo")
out = Path(sys.argv[1])
model = tiny_model("llama")
documents = [TokenizedDocument("d", np.random.default_rng(0).integers(3, 128, 5000).astype(np.int32))]
config = FinetuneConfig(length=128, steps=3, global_batch=4, micro_batch=1, lr=1e-3, save_every=3)
trainer = Finetuner(model, methods.yarn(rope_base(model.config), 2), documents, config, out, log=lambda m: None)
history = trainer.run()
weights = trainer.full_state_dict()
if dist.get_rank() == 0:
    (out / "result.json").write_text(json.dumps({
        "world": dist.get_world_size(), "accumulation": trainer.accumulation,
        "losses": [h["loss"] for h in history], "keys": sorted(weights),
        "shapes": {k: list(v.shape) for k, v in weights.items()},
    }))
dist.barrier()
sys.stdout.flush()
# gloo's teardown at interpreter exit sometimes aborts ("terminate called without an active
# exception") after all work is done; leave without it
os._exit(0)
