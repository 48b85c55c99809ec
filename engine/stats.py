"""What a person watches during training: a tqdm bar, `stats.jsonl`, TensorBoard scalars (when installed).

Losses are summed on the device between log lines, so logging costs one host sync per `log_every` steps.
"""
import json
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm


class StatsWriter:
    def __init__(self, run_dir, *, total_steps, start_step, batch, loss_names=(), enabled=True, progress=True,
                 tensorboard=True):
        self.run_dir, self.batch, self.enabled = Path(run_dir), batch, enabled
        self.loss_names = tuple(loss_names)
        self.sums, self.count = {}, 0
        self.last_time, self.last_step = time.perf_counter(), start_step
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=not progress)
        self.file = open(self.run_dir / "stats.jsonl", "a") if enabled else None
        self.tb = _tensorboard_writer(self.run_dir) if enabled and tensorboard else None

    def accumulate(self, losses: dict):
        for key, value in losses.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1

    def log(self, step: int, *, nonfinite_total: int, device) -> dict:
        now = time.perf_counter()
        steps = step - self.last_step
        seconds = max(now - self.last_time, 1e-9)
        img_per_s = steps * self.batch / seconds
        means = {k: float(v) / self.count for k, v in self.sums.items()} if self.count else {}
        record = {
            "step": step,
            "kimg": step * self.batch / 1000,
            "time": time.time(),
            "img_per_s": img_per_s,
            "sec_per_kimg": 1000 / img_per_s if img_per_s > 0 else float("inf"),
            "nonfinite_total": nonfinite_total,
            **means,
        }
        if device.type == "cuda":
            record["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        self.sums, self.count = {}, 0
        self.last_time, self.last_step = now, step
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            if self.tb is not None:
                for key, value in record.items():
                    if key not in ("step", "time"):
                        self.tb.add_scalar(key, value, step)
        shown = {"kimg": f"{record['kimg']:.1f}", "img/s": f"{img_per_s:.0f}",
                 "sec/kimg": f"{record['sec_per_kimg']:.2f}"}
        shown.update({k: f"{means[k]:.3f}" for k in self.loss_names if k in means})
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(step - self.bar.n)
        return record

    def write_metrics(self, step: int, values: dict):
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "kimg": step * self.batch / 1000, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"metrics/{key}", value, step)
        self.bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def warn(self, message: str):
        if self.enabled:
            self.bar.write(message)
            with open(self.run_dir / "events.log", "a") as f:
                f.write(message + "\n")

    def close(self):
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _tensorboard_writer(run_dir):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
