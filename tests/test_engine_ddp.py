"""Two gloo processes on CPU (what torchrun sets up), against one process with the same global batch; resuming
them gives each rank back its own RNG streams."""
import os
import random
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from fusegan.engine import checkpoint as ckpt
from fusegan.engine.config import TrainConfig
from fusegan.engine.trainer import Trainer
from test_engine_train import rewrite_in_old_rng_layout  # (tests/ is on sys.path under pytest)

GLOBAL_BATCH, STEPS = 8, 3
# The autoencoder without BatchNorm: per-process batch statistics would (rightly) differ from one process's.
AE_OPTIONS = {"base": 4, "latent_dim": 4, "norm": "none"}


def _config(run_dir, **overrides):
    fields = dict(recipe="ae", data="digits", res=32, batch=GLOBAL_BATCH, steps=STEPS, snap=STEPS, workers=0,
                  impl="ref", device="cpu", progress=False, tensorboard=False, run_dir=str(run_dir),
                  recipe_options=dict(AE_OPTIONS))
    fields.update(overrides)
    return TrainConfig(**fields)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, world_size, port):
    """What torchrun gives each process: the environment the Trainer joins its process group from."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    os.environ.pop("TRITON_INTERPRET", None)
    torch.set_num_threads(1)


def _worker(rank, world_size, port, run_dir, out_dir):
    _join(rank, world_size, port)
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


def _draws(trainer) -> dict:
    """Four numbers from each RNG a resume restores, drawn from a copy: the run's own streams do not move."""
    saved = ckpt.rng_state(trainer.device, aug=trainer.aug_generator)
    draws = {"torch": torch.randn(4), "aug": torch.randn(4, generator=trainer.aug_generator),
             "numpy": torch.from_numpy(np.random.standard_normal(4)),
             "python": torch.tensor([random.random() for _ in range(4)], dtype=torch.float64)}
    ckpt.set_rng_state(saved, trainer.device, aug=trainer.aug_generator)
    return draws


def _resume_worker(rank, world_size, port, tmp):
    _join(rank, world_size, port)
    draws = {}
    straight = Trainer(_config(f"{tmp}/straight", steps=4, snap=4, xflip=True))
    straight.run()
    draws["straight"] = _draws(straight)
    split = Trainer(_config(f"{tmp}/split", steps=2, snap=2, xflip=True))
    split.run()
    draws["saved"] = _draws(split)  # the state this rank had when it wrote the step-2 checkpoint
    torch.distributed.barrier()  # rank 0 has written the checkpoint (the others return from the snapshot at once)
    resumed = Trainer(_config(f"{tmp}/unused", steps=4, snap=4, xflip=True, resume=f"{tmp}/split"))
    draws["restored"] = _draws(resumed)
    resumed.run()
    draws["resumed"] = _draws(resumed)
    nets_equal = [torch.equal(a, b) for name, net in straight.recipe.nets.items()
                  for a, b in zip(net.state_dict().values(), resumed.recipe.nets[name].state_dict().values())]
    grown = Trainer(_config(f"{tmp}/unused", resume=f"{tmp}/old-layout"))  # written by one process
    draws["grown"] = _draws(grown)
    torch.save({"draws": draws, "nets_equal": nets_equal}, f"{tmp}/resume{rank}.pt")
    torch.distributed.destroy_process_group()


def test_resume_gives_each_rank_its_own_streams_back(tmp_path):
    """Two ranks, 2 steps, a checkpoint, a resume, 2 more steps: right after the resume every rank draws what it
    drew when it wrote the checkpoint (so the ranks differ), and at the end what an uninterrupted run draws. A
    checkpoint written by one process in the layout before per-rank entries resumes on two: rank 0 continues its
    stream, rank 1 gets a fresh one of its own."""
    torch.set_num_threads(1)
    single = Trainer(_config(tmp_path / "old-layout", steps=2, snap=2))
    single.run()
    single_draws = _draws(single)
    rewrite_in_old_rng_layout(tmp_path / "old-layout")
    mp.start_processes(_resume_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"resume{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(ckpt.rank_rng_states(ckpt.load_state(ckpt.find_latest(tmp_path / "split")[1]))) == 2
    for rng in single_draws:
        for r, out in enumerate(ranks):
            draws = out["draws"]
            assert torch.equal(draws["restored"][rng], draws["saved"][rng]), (r, rng)
            assert torch.equal(draws["resumed"][rng], draws["straight"][rng]), (r, rng)
        first, second = (out["draws"] for out in ranks)
        assert not torch.equal(first["restored"][rng], second["restored"][rng]), rng
        assert torch.equal(first["grown"][rng], single_draws[rng]), rng
        assert not torch.equal(second["grown"][rng], single_draws[rng]), rng
    for out in ranks:  # and the weights are the uninterrupted run's
        assert out["nets_equal"] and all(out["nets_equal"])


class _SignalOnRank1AfterOneStep:
    """Stands in for the trainer's SIGINT/SIGTERM catcher: on rank 1 a signal arrives during the second step (the
    loop reads `signal` once per step), on rank 0 never."""

    def __init__(self):
        self.reads = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def signal(self):
        self.reads += 1
        return "SIGTERM" if os.environ["RANK"] == "1" and self.reads >= 2 else None


def _signal_worker(rank, world_size, port, tmp):
    _join(rank, world_size, port)
    import fusegan.engine.trainer as trainer_module
    trainer_module._StopFlag = _SignalOnRank1AfterOneStep
    summary = Trainer(_config(f"{tmp}/run", steps=6, snap=6)).run()
    torch.save({"steps": summary["steps"], "stopped_by": summary["stopped_by"]}, f"{tmp}/signal{rank}.pt")
    torch.distributed.destroy_process_group()


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Ranks that stopped at different steps would enter different collectives (the snapshot's gather against
    the next step's gradient all-reduce) and hang; the stop request is shared instead."""
    context = mp.start_processes(_signal_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    for _ in range(120):  # a hang must fail the test, not stall the suite
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        raise AssertionError("the ranks did not finish: a collective was left waiting")
    rank0, rank1 = (torch.load(tmp_path / f"signal{r}.pt") for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 2
    assert rank1["stopped_by"] == "SIGTERM" and rank0["stopped_by"] == "signal on another rank"
    assert ckpt.load_state(ckpt.find_latest(tmp_path / "run")[1])["step"] == 2  # the snapshot of the stop step
