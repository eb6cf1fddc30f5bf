"""Every draft path goes through one step, `DynaSpecAssistant.shortlist_logits` (router + head): transformers' loop
drafting eagerly or on the static cache, and the own loop's chains (greedy and sampled) and trees. A path with a
copy of its own would not call it."""

import pytest
import torch

import dynaspec_hf
from dynaspec_hf import DynaSpecAssistant, TreeConfig
from conftest import make_assistant, tiny_pair


@pytest.mark.parametrize("path", ["transformers, eager", "transformers, static cache", "own loop, chain",
                                  "own loop, sampled chain", "own loop, tree"])
def test_every_draft_path_calls_the_one_step(path, monkeypatch):
    target, drafter = tiny_pair("llama", seed=3)
    assistant = make_assistant(drafter, "routed")
    assistant.drafting.static_cache_off_cuda = path == "transformers, static cache"
    calls, step = [], DynaSpecAssistant.shortlist_logits

    def counted(self, hidden, *args, **kwargs):
        calls.append(hidden.shape[0])
        return step(self, hidden, *args, **kwargs)

    monkeypatch.setattr(DynaSpecAssistant, "shortlist_logits", counted)
    ids = torch.randint(0, 192, (1, 10), generator=torch.Generator().manual_seed(0))
    if path.startswith("transformers"):
        out = target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=12)
    elif path.endswith("sampled chain"):
        torch.manual_seed(0)
        out = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=12, tree=TreeConfig.chain(4),
                                   do_sample=True)
    else:
        tree = TreeConfig.chain(4) if path.endswith("chain") else TreeConfig(num_nodes=6, max_depth=3, width=2)
        out = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=12, tree=tree)
    if not path.endswith("sampled chain"):
        assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=12))
    assert len(calls) >= 2, f"{path} drafted without the one step"
    if path.endswith("tree"):
        assert max(calls) > 1, "the tree's node forwards score several nodes per step"
