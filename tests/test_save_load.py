"""Save -> load round trips everything: weights, clusters, router, schedule; from a path or a Hub-cache snapshot."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from transformers import AutoModelForCausalLM

from dynaspec_hf import DynaSpecAssistant
from conftest import VOCAB, make_assistant, tiny_pair


def saved_assistant(tmp_path, setting="context"):
    target, drafter = tiny_pair("llama", seed=11)
    assistant = make_assistant(drafter, setting)
    assistant.save_pretrained(tmp_path / "assistant")
    return target, assistant, tmp_path / "assistant"


def assert_same_assistant(a, b):
    for key in ("vocab_size", "num_clusters", "cluster_size", "core_size", "router_hidden_size", "num_context_tokens",
                "sampling_tail"):
        assert getattr(a.config, key) == getattr(b.config, key), key
    assert (a.config.k_by_position, a.config.core_by_position) == (b.config.k_by_position, b.config.core_by_position)
    drafter_a, drafter_b = a.config.drafter_config.to_dict(), b.config.drafter_config.to_dict()
    for key in set(drafter_a) - {"dtype", "_name_or_path"}:
        assert drafter_a[key] == drafter_b[key], key
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_round_trip_through_auto_class(tmp_path):
    target, assistant, path = saved_assistant(tmp_path)
    files = sorted(os.listdir(path))
    assert "model.safetensors" in files and "config.json" in files and "README.md" in files
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(loaded, DynaSpecAssistant)
    assert_same_assistant(assistant, loaded)
    assert loaded.config.k_by_position == [3, 2] and loaded.config.core_by_position == [8, 0]
    assert loaded.config.num_context_tokens == 16
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        target.generate(ids, assistant_model=loaded, do_sample=False, max_new_tokens=12),
        target.generate(ids, do_sample=False, max_new_tokens=12),
    )
    card = (path / "README.md").read_text()
    assert "k_by_position" in card and "[3, 2]" in card and "`num_context_tokens`" in card
    assert "`sampling_tail`" in card


def run_python(code: str, env: dict) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_loads_from_hub_cache_snapshot_offline(tmp_path):
    """The real Hub-cache layout (models--org--name/snapshots/<commit>, refs/main), read with HF_HUB_OFFLINE=1."""
    _, assistant, path = saved_assistant(tmp_path)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--dynaspec-test--tiny-assistant"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    os.rename(path, repo / "snapshots" / commit)
    out = run_python(
        """
        import dynaspec_hf, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("dynaspec-test/tiny-assistant")
        print(type(model).__name__, model.config.k_by_position, float(model.lm_head.weight.sum()))
        """,
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert out.split()[:2] == ["DynaSpecAssistant", "[3,"]
    assert abs(float(out.split()[-1]) - float(assistant.lm_head.weight.detach().sum())) < 1e-4


def test_loads_with_trust_remote_code_without_the_package(tmp_path):
    """`auto_map` plus the copied modeling files let a Hub repo load where dynaspec_hf is not imported."""
    _, assistant, path = saved_assistant(tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("DynaSpecAssistant")
    out = run_python(
        f"""
        import sys, torch
        sys.modules["dynaspec_hf"] = None  # make sure the installed package is not what loads
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)
        ids = torch.arange(5)[None]
        print(type(model).__name__, model.generate(ids, max_new_tokens=4).tolist())
        """,
        {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    expected = assistant.generate(torch.arange(5)[None], max_new_tokens=4).tolist()
    assert out.strip() == f"DynaSpecAssistant {expected}"


def test_set_schedule_shares_weights_and_validates():
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed")
    weight = assistant.lm_head.weight
    assistant.set_schedule(k_by_position=[16])
    assert assistant.lm_head.weight is weight and assistant.config.shortlist_at(0) == (0, 16, 0, False)
