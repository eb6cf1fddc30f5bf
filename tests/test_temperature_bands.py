"""Temperature bands: sampled drafting uses the band's schedule in every loop, greedy drafting the main one."""

import pytest
import torch

import dynaspec_hf
from dynaspec_hf import DynaSpecConfig, Schedule, TemperatureBand
from conftest import SAMPLING_BAND, make_assistant, tiny_config, tiny_pair

BAND = (4, 1, 8)  # SAMPLING_BAND as (core tokens, routed clusters, context slots)
GREEDY = {(16, 6, 0), (8, 4, 0), (0, 3, 0)}  # the "routed" setting's positions


def band(max_temperature, k, core=0, context=0):
    return dict(max_temperature=max_temperature, k_by_position=[k], core_by_position=[core], num_context_tokens=context)


def test_the_first_band_covering_the_temperature_is_used():
    config = DynaSpecConfig(tiny_config("llama"), num_clusters=16, core_size=48, k_by_position=[6],
                            temperature_bands=[band(0.5, 2), band(1.2, 3, 8), band(None, 4, 0, 16)])
    config.validate_schedule()
    assert config.shortlist_at(0) == (0, 6, 0, False)  # greedy
    assert config.shortlist_at(0, 0.3) == config.shortlist_at(3, 0.5) == (0, 2, 0, False)
    assert config.shortlist_at(0, 0.7) == (8, 3, 0, False)
    assert config.shortlist_at(0, 2.0) == (0, 4, 16, False)
    assert config.max_context_tokens == 16 and config.needs_router
    config.temperature_bands = [band(0.5, 2)]
    assert config.shortlist_at(0, 0.9) == (0, 6, 0, False)  # no band covers 0.9: the main schedule


@pytest.mark.parametrize("bands, message", [
    ([band(None, 2), band(1.0, 3)], "increasing"),
    ([band(1.0, 2), band(0.5, 3)], "increasing"),
    ([band(0.0, 2)], "positive"),
    ([dict(max_temperature=1.0, k_by_position=[2])], "keys"),
    ([band(None, 99)], "asks for"),
    ([band(None, 0)], "empty shortlist"),
])
def test_bad_bands_are_refused(bands, message):
    config = DynaSpecConfig(tiny_config("llama"), num_clusters=16, core_size=48, temperature_bands=bands)
    with pytest.raises(ValueError, match=message):
        config.validate_schedule()


def shortlists_used(assistant, monkeypatch) -> list[tuple[int, int, int]]:
    """Records (core tokens, routed clusters, context slots) of every head call."""
    head, used = assistant.lm_head, []
    forward = head.forward

    def spy(hidden, cluster_ids, num_core, index=None, context_ids=None, kernel="triton"):
        clusters = assistant.config.num_clusters if cluster_ids is None else cluster_ids.shape[1]
        used.append((num_core, clusters, 0 if context_ids is None else context_ids.shape[1]))
        return forward(hidden, cluster_ids, num_core, index, context_ids, kernel)

    monkeypatch.setattr(head, "forward", spy)
    return used


@pytest.mark.parametrize("loop", ["eager", "static cache", "tree"])
def test_sampling_drafts_with_the_band_and_greedy_with_the_main_schedule(loop, monkeypatch):
    target, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed")
    assert assistant.config.schedule(1.0)._asdict() == SAMPLING_BAND
    if loop == "static cache":
        assistant.drafting.static_cache_off_cuda = True
    used = shortlists_used(assistant, monkeypatch)
    prompt = torch.randint(0, 192, (1, 12), generator=torch.Generator().manual_seed(0))

    def run(**options):
        used.clear()
        if loop == "tree":
            dynaspec_hf.generate(target, assistant, prompt, max_new_tokens=12, tree=dynaspec_hf.TreeConfig(), **options)
        else:
            target.generate(prompt, assistant_model=assistant, max_new_tokens=12, **options)
        return set(used)

    run()  # the automatic tree's first generation also times the pair's engines, greedily
    assert run(do_sample=True, temperature=0.7) == {BAND}
    assert run(do_sample=True) == {BAND}  # temperature 1 by default
    assert run(do_sample=False) <= GREEDY and len(used) > 1
    assistant.set_schedule(temperature_bands=[band(0.5, 2)])  # no band covers T = 0.7
    assert run(do_sample=True, temperature=0.7) <= GREEDY


def test_typed_bands_are_stored_as_the_dicts_a_saved_config_holds():
    typed = TemperatureBand(0.5, Schedule(k_by_position=[2], core_by_position=[0], num_context_tokens=0))
    config = DynaSpecConfig(tiny_config("llama"), num_clusters=12, temperature_bands=[typed])
    assert config.temperature_bands == [band(0.5, 2)] and config.bands() == [typed]
    assert config.schedule(0.4) == typed.schedule and config.schedule(0.7).k_by_position == [12]
    assert config.shortlist_at(3, 0.4) == (0, 2, 0, 0.0)
    target, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed").set_schedule(temperature_bands=[typed])
    assert assistant.config.temperature_bands == [typed.as_dict()]
