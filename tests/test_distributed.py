"""Calibration data-parallel over 2 CPU processes (torchrun + accelerate's gloo backend) equals 1 process."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from distributed_calibrate import run


def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "two.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("distributed_calibrate.py")), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two = torch.load(out)
    assert two["processes"] == 2
    single, report = run()
    assert two["report"]["train_pairs"] == report["train_pairs"]
    assert two["report"]["k_by_position"] == report["k_by_position"]
    for key, value in single.state_dict().items():
        assert torch.allclose(two["state"][key].float(), value.float(), atol=1e-5), key
