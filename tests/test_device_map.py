"""A target placed by `device_map` over two devices' worth of layers: what a user with a target too large for one GPU
loads. On the CPU the second device is accelerate's disk offload: its hooks move that layer's weights in for each
forward, as they move activations between GPUs, and `hf_device_map` spans two devices, so the loops take their
several-device path (eager, no CUDA graphs, no compile). Greedy output must stay the target's own."""

import pytest
import torch
from conftest import make_assistant, random_cases, tiny_pair
from transformers import AutoModelForCausalLM

import dynaspec_hf

DEVICE_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def placed_pair(tmp_path_factory):
    target, drafter = tiny_pair("llama")
    path = tmp_path_factory.mktemp("target")
    target.save_pretrained(path)
    placed = AutoModelForCausalLM.from_pretrained(path, device_map=DEVICE_MAP, offload_folder=str(path / "offload"))
    assert len(set(placed.hf_device_map.values())) == 2
    return target, placed, make_assistant(drafter, "routed")


LOOPS = {
    "transformers' loop": lambda target, assistant, ids, new: target.generate(
        ids, assistant_model=assistant, do_sample=False, max_new_tokens=new),
    "own loop, chain": lambda target, assistant, ids, new: dynaspec_hf.generate(
        target, assistant, ids, max_new_tokens=new),
    "own loop, automatic tree": lambda target, assistant, ids, new: dynaspec_hf.generate(
        target, assistant, ids, max_new_tokens=new, tree=dynaspec_hf.TreeConfig()),
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_target_placed_over_two_devices_keeps_its_greedy_output(placed_pair, loop):
    target, placed, assistant = placed_pair
    for ids, new in random_cases(5):
        expected = target.generate(ids, do_sample=False, max_new_tokens=new)
        assert torch.equal(LOOPS[loop](placed, assistant, ids, new), expected)
