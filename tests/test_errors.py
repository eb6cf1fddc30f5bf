"""Bad input gets a clear error that names the values involved, never a silent wrong answer."""

import json
import shutil

import pytest
import torch

from dynaspec_hf import DynaSpecAssistant, DynaSpecCandidateGenerator, DynaSpecConfig, TokenClusters
from conftest import make_assistant, tiny_config, tiny_pair


@pytest.fixture(scope="module")
def pair():
    return tiny_pair("llama", seed=21)


@pytest.fixture(scope="module")
def saved(pair, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "assistant"
    make_assistant(pair[1], "routed").save_pretrained(path)
    return path


def copy_of(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "copy")
    return tmp_path / "copy"


def test_vocabulary_mismatch_in_stock_loop(pair):
    other_target, _ = tiny_pair("llama", vocab_size=200)
    assistant = make_assistant(pair[1], "full")
    with pytest.raises(ValueError, match="different tokenizers"):
        other_target.generate(torch.zeros(1, 4, dtype=torch.long), assistant_model=assistant, max_new_tokens=3)


def test_vocabulary_mismatch_in_candidate_generator(pair):
    assistant = make_assistant(pair[1], "full")
    with pytest.raises(ValueError, match="200 tokens but the assistant's has 192"):
        DynaSpecCandidateGenerator(assistant, target_config=tiny_config("llama", vocab_size=200))


def test_token_outside_assistant_vocabulary(pair):
    assistant = make_assistant(pair[1], "full")
    with pytest.raises(ValueError, match="Token id 500 is outside the drafter's vocabulary of 192 tokens"):
        assistant.generate(torch.tensor([[1, 500]]), max_new_tokens=2)


def test_clusters_must_cover_vocabulary_exactly_once():
    table = torch.arange(12).view(3, 4)
    table[2, 3] = 0  # token 0 twice, token 11 never
    with pytest.raises(ValueError, match="exactly once: 1 tokens are in no cluster and 1 are in more than one"):
        TokenClusters(table, torch.empty(0, dtype=torch.long), 12)


def test_schedule_asking_for_more_clusters_than_exist():
    config = DynaSpecConfig(tiny_config("llama"), num_clusters=16, k_by_position=[20, 4])
    with pytest.raises(ValueError, match=r"`k_by_position`=\[20, 4\] asks for \[20\], but the layout has 16 clusters"):
        DynaSpecAssistant(config)


def test_core_schedule_larger_than_core(pair):
    assistant = make_assistant(pair[1], "full", core_size=48)
    with pytest.raises(ValueError, match=r"asks for \[64\], but the layout has 48 core tokens"):
        assistant.set_schedule(k_by_position=[0], core_by_position=[64])


def test_empty_shortlist_is_refused(pair):
    assistant = make_assistant(pair[1], "full")
    with pytest.raises(ValueError, match="Draft position 0 has an empty shortlist"):
        assistant.set_schedule(k_by_position=[0], core_by_position=[0])


def test_missing_router_weights_when_schedule_routes(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    path = copy_of(saved, tmp_path)
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("router.")}, path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"has no router weights .*k_by_position=\[6, 4, 3\]; temperature bands: \[\[1\]\]"):
        DynaSpecAssistant.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["k_by_position"], config["core_by_position"] = [0], [48]  # a static shortlist needs no router ...
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has no router weights"):  # ... but the sampling band still routes
        DynaSpecAssistant.from_pretrained(path)
    config["temperature_bands"] = []
    (path / "config.json").write_text(json.dumps(config))
    assert DynaSpecAssistant.from_pretrained(path).config.k_by_position == [0]


def test_cluster_buffer_not_matching_config(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["num_clusters"], config["cluster_size"], config["k_by_position"] = 8, 24, [4]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_clusters=8, cluster_size=24.*config.json and the weights disagree"):
        DynaSpecAssistant.from_pretrained(path)


def test_cluster_buffer_damaged(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    path = copy_of(saved, tmp_path)
    weights = load_file(path / "model.safetensors")
    weights["lm_head.cluster_token_ids"][0, 0] = weights["lm_head.cluster_token_ids"][1, 0]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="exactly once"):
        DynaSpecAssistant.from_pretrained(path)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupted_weights_file(saved, tmp_path, damage):
    path = copy_of(saved, tmp_path)
    data = (path / "model.safetensors").read_bytes()
    data = data[: len(data) // 2] if damage == "truncate" else b"\xff" * 8 + data[8:]
    (path / "model.safetensors").write_bytes(data)
    with pytest.raises(OSError, match="corrupted or truncated"):
        DynaSpecAssistant.from_pretrained(path)


def test_batch_larger_than_one_in_stock_loop(pair):
    target, drafter = pair
    with pytest.raises(ValueError, match="batch_size = 1"):
        target.generate(torch.zeros(2, 4, dtype=torch.long), assistant_model=make_assistant(drafter, "full"),
                        max_new_tokens=3)


def test_unsupported_generate_options(pair):
    assistant = make_assistant(pair[1], "full")
    with pytest.raises(ValueError, match="num_beams must be 1"):
        assistant.generate(torch.zeros(1, 3, dtype=torch.long), num_beams=2, max_new_tokens=2)
    with pytest.raises(TypeError, match="unsupported arguments: \\['bogus_option'\\]"):
        assistant.generate(torch.zeros(1, 3, dtype=torch.long), bogus_option=1, max_new_tokens=2)


def test_unknown_head_kernel(pair):
    assistant = make_assistant(pair[1], "routed")
    assistant.drafting.head_kernel = "cuda"
    with pytest.raises(ValueError, match="'triton' or 'gather', not 'cuda'"):
        assistant.draft(torch.tensor([[1, 2, 3]]), 2)
