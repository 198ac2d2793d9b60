"""Data-parallel distillation: ``torchrun --nproc_per_node 2`` (gloo, CPU) matches one process.

Why the two can match: both draw the same global permutation from the seed; each global batch of 64
is split between the two processes, each computes its mean loss on its share, and the gradients are
all-reduced weighted by share size, which is the gradient of the global batch's mean loss. The
models start identical (same seed, then broadcast from rank 0) and see the same AdamW updates, so
they differ from the single-process run only by float summation order. The train split has an odd
size (301) so the last batch is split unevenly (23 + 22), which the weighting must get right.

This file is also the worker: ``python -m torch.distributed.run ... test_distill_ddp.py OUT_DIR``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from edgekit.distill.api import distill
from edgekit.project import Split, load_data, load_project

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"method": "fitnet+hinton", "hints": ["features.1=features.1"], "hint_epochs": 1, "epochs": 2,
            "batch_size": 64, "temperature": 3.0, "alpha": 0.8, "lr": 1e-2, "seed": 0}


class Net(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def run(out_dir: Path):
    full = load_data(load_project(ROOT))
    splits = {"train": Split(full["train"].x[:301], full["train"].y[:301]),
              "eval": Split(full["eval"].x[:101], full["eval"].y[:101])}
    torch.manual_seed(1)
    teacher = Net(8).eval()
    torch.manual_seed(0)
    return distill(Net(4), teacher, splits, out_dir=out_dir, **SETTINGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run(tmp_path / "single")
    finally:
        torch.set_num_threads(before)
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and single.metrics["world_size"] == 1
    parallel = load_file(str(tmp_path / "ddp" / "student.safetensors"))
    for name, value in single.student.state_dict().items():
        torch.testing.assert_close(parallel[name], value, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(single.metrics["hint_history"] + single.metrics["history"], ddp["hint_history"] + ddp["history"],
                    strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    # training moved the weights well beyond that tolerance, so the match is not between two untouched models
    torch.manual_seed(0)
    initial = Net(4).state_dict()
    assert max((parallel[k] - initial[k]).abs().max().item() for k in initial) > 0.05


if __name__ == "__main__":
    run(Path(sys.argv[1]))
