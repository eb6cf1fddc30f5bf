"""Run by tests/test_distributed.py under torchrun: calibrate a fixed tiny pair, save from rank 0."""

import sys

import torch
from accelerate import PartialState

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from conftest import tiny_pair  # noqa: E402

from dynaspec_hf.calibrate import calibrate  # noqa: E402


def run(out_path=None):
    target, drafter = tiny_pair("llama", seed=31)
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 192, (int(torch.randint(4, 40, (1,), generator=generator)),), generator=generator)
                 for _ in range(60)]
    assistant, report = calibrate(target, drafter, sequences, num_clusters=16, router_hidden_size=16, epochs=2,
                                  progress=False)
    if out_path is not None and PartialState().is_main_process:
        processes = PartialState().num_processes
        torch.save({"state": assistant.state_dict(), "report": report, "processes": processes}, out_path)
    return assistant, report


if __name__ == "__main__":
    run(sys.argv[1])
    state = PartialState()
    state.wait_for_everyone()  # rank 0 has written its file before anyone tears the group down
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # an undestroyed gloo group can abort the process at exit
