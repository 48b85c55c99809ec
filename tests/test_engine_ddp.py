"""Two gloo processes on CPU (what torchrun sets up), against one process with the same global batch."""
import os
import socket

import torch
import torch.multiprocessing as mp

from fusegan.engine.config import TrainConfig
from fusegan.engine.trainer import Trainer

GLOBAL_BATCH, STEPS = 8, 3
# The autoencoder without BatchNorm: per-process batch statistics would (rightly) differ from one process's.
AE_OPTIONS = {"base": 4, "latent_dim": 4, "norm": "none"}


def _config(run_dir):
    return TrainConfig(recipe="ae", data="digits", res=32, batch=GLOBAL_BATCH, steps=STEPS, snap=STEPS, workers=0,
                       impl="ref", device="cpu", progress=False, tensorboard=False, run_dir=str(run_dir),
                       recipe_options=dict(AE_OPTIONS))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, run_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    os.environ.pop("TRITON_INTERPRET", None)
    torch.set_num_threads(1)
    trainer = Trainer(_config(run_dir))
    trainer.run()
    nets = {f"{name}.{k}": v.detach().clone() for name, net in trainer.recipe.nets.items()
            for k, v in net.state_dict().items()}
    torch.save({"nets": nets, "batch_gpu": trainer.ctx.batch_gpu}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_stay_identical_and_match_one_process(tmp_path):
    port = _free_port()
    mp.start_processes(_worker, args=(2, port, str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["batch_gpu"] == GLOBAL_BATCH // 2
    for key, value in rank0["nets"].items():
        assert torch.equal(value, rank1["nets"][key]), key  # every rank applied the same averaged gradients

    torch.set_num_threads(1)
    single = Trainer(_config(tmp_path / "single"))
    single.run()
    initial = Trainer(_config(tmp_path / "initial"))  # same seed, no steps: the starting point
    changed = 0
    for name, net in single.recipe.nets.items():
        for key, value in net.state_dict().items():
            ddp_value = rank0["nets"][f"{name}.{key}"]
            torch.testing.assert_close(ddp_value, value, rtol=1e-4, atol=1e-6, msg=key)
            changed += not torch.equal(value, initial.recipe.nets[name].state_dict()[key])
    assert changed > 0  # the runs trained: the comparison is not between two untouched initializations
    # Only rank 0 writes outputs.
    assert (tmp_path / "ddp" / "checkpoints" / "latest.json").is_file()
