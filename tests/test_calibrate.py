"""Calibration: the trained router must beat a static frequency shortlist on a domain the frequency corpus lacks."""

import dataclasses

import pytest
import torch

from dynaspec_hf.calibrate import TAIL_RANKS, TAIL_WEIGHTS, CalibrationConfig, calibrate, choose_schedule
from dynaspec_hf.training import train_causal_lm
from conftest import tiny_config

VOCAB, HALF = 192, 96


def markov_text(low: int, count: int, length: int, seed: int) -> list[torch.Tensor]:
    """Sequences from a sparse random Markov chain over tokens [low, low + HALF): each token has 2 successors."""
    generator = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, HALF, (HALF, 2), generator=generator) + low
    out = []
    for _ in range(count):
        token = int(torch.randint(0, HALF, (1,), generator=generator)) + low
        sequence = [token]
        for _ in range(length - 1):
            token = int(successors[token - low, int(torch.randint(0, 2, (1,), generator=generator))])
            sequence.append(token)
        out.append(torch.tensor(sequence))
    return out


@pytest.fixture(scope="module")
def two_domain_pair():
    """A target and a drafter trained on two domains with disjoint token ranges: A = [0, 96), B = [96, 192)."""
    from transformers import AutoModelForCausalLM

    domain_a, domain_b = markov_text(0, 120, 48, seed=1), markov_text(HALF, 120, 48, seed=2)
    stream = torch.cat(domain_a + domain_b)
    torch.manual_seed(0)
    target = AutoModelForCausalLM.from_config(tiny_config("llama", VOCAB, hidden_size=64)).eval()
    drafter = AutoModelForCausalLM.from_config(tiny_config("llama", VOCAB, hidden_size=32, layers=1)).eval()
    train_causal_lm(target, stream, steps=150, batch_size=16, length=32, lr=1e-2, progress=False)
    train_causal_lm(drafter, stream, steps=150, batch_size=16, length=32, lr=1e-2, teacher=target, progress=False)
    return target, drafter, domain_a, domain_b


def test_router_beats_static_shortlist_on_unseen_domain(two_domain_pair):
    target, drafter, domain_a, domain_b = two_domain_pair
    frequency_counts = torch.bincount(torch.cat(domain_a), minlength=VOCAB)  # FR-Spec's corpus: domain A only
    assert frequency_counts[HALF:].sum() == 0
    sequences, domains = domain_a + domain_b, ["A"] * len(domain_a) + ["B"] * len(domain_b)
    assistant, report = calibrate(
        target, drafter, sequences, domains=domains, num_clusters=12, frequency_counts=frequency_counts,
        router_hidden_size=64, heldout_fraction=0.2, epochs=30, progress=False, check_prompts=0,
    )
    curves = report["curves"]
    k = curves["ks"].index(2)  # 2 clusters of 16 = 32 rows, a sixth of the vocabulary
    b = curves["domains"]["B"]
    # the real reason: the static shortlist is drawn from domain A's frequencies and holds no domain-B token ...
    assert b["static"]["recall"][k] == 0.0
    # ... while the router picks the clusters where domain B's tokens live
    assert b["routed"]["recall"][k] > 0.8, b
    assert b["routed"]["acceptance"][k] > 0.5 * b["full_acceptance"]
    # it drafts greedily with the best split of the size nearest 1/16 of the vocabulary (1 of 12 clusters)
    split = report["splits"]["1"]
    assert assistant.config.schedule()._asdict() == dict(k_by_position=[split["k"]], core_by_position=[split["core"]],
                                                         num_context_tokens=split["context"])
    assert report["sampling_check"]["reason"] == "no prompts" and not assistant.config.temperature_bands


def test_choose_schedule_shrinks_later_positions():
    ks = [1, 2, 4, 8]
    acceptance = [0.5, 0.7, 0.78, 0.8]
    schedule = choose_schedule(acceptance, 0.8, ks, positions=6, target_retention=0.98)
    assert schedule[0] == 8 and schedule == sorted(schedule, reverse=True) and schedule[-1] < 8


def test_feature_collection_resumes_after_interruption(two_domain_pair, tmp_path):
    from dynaspec_hf.calibrate import collect_features
    from dynaspec_hf.measure import count_forward_calls

    target, drafter, domain_a, _ = two_domain_pair
    sequences = domain_a[:40]
    expected = collect_features(target, drafter, sequences, progress=False, batch_size=4)

    cache = tmp_path / "features.pt"
    calls = []

    def interrupt(module, args, kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt

    handle = drafter.base_model.register_forward_pre_hook(interrupt, with_kwargs=True)
    with pytest.raises(KeyboardInterrupt):
        collect_features(target, drafter, sequences, progress=False, batch_size=4, cache_file=cache, save_every=2)
    handle.remove()
    assert torch.load(cache)["batches"] == 4  # saved after batches 2 and 4, interrupted in batch 6
    with count_forward_calls(drafter.base_model) as resumed_calls:
        resumed = collect_features(target, drafter, sequences, progress=False, batch_size=4, cache_file=cache,
                                   save_every=2)
    assert resumed_calls[0] == 10 - 4
    for field in ("previous_hidden", "token_embedding", "hidden", "target_next", "domain"):
        assert torch.equal(getattr(resumed, field), getattr(expected, field)), field


def test_drafter_output_counts_are_what_the_drafter_generates():
    from dynaspec_hf.calibrate import drafter_output_counts
    from conftest import tiny_pair

    _, drafter = tiny_pair("llama", seed=3)
    sequences = [torch.randint(0, 192, (10,), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    counts = drafter_output_counts(drafter, sequences, prompt_tokens=8, new_tokens=5, batch_size=2)
    expected = torch.zeros(192, dtype=torch.long)
    for s in sequences:
        out = drafter.generate(s[None, :8], do_sample=False, max_new_tokens=5, min_new_tokens=5)
        expected += torch.bincount(out[0, 8:], minlength=192)
    assert torch.equal(counts, expected) and counts.sum() == 15


def test_features_keep_the_targets_mass_per_cluster(two_domain_pair):
    from dynaspec_hf.calibrate import collect_features

    target, drafter, domain_a, _ = two_domain_pair
    token_cluster = torch.arange(VOCAB) % 12
    features = collect_features(target, drafter, domain_a[:3], token_cluster=token_cluster, progress=False)
    with torch.no_grad():
        probs = target(domain_a[0][None]).logits[0, 1:].softmax(-1)  # rows of sequence 0, positions 1..
    expected = torch.zeros(len(probs), 12).index_add_(1, token_cluster, probs)
    torch.testing.assert_close(features.target_mass[: len(probs)].float(), expected, atol=2e-3, rtol=0)
    assert collect_features(target, drafter, domain_a[:1], progress=False).target_mass.shape[1] == 0


def test_mass_objective_routes_to_where_the_targets_mass_is():
    """The target's argmax token has p = 0.3 in cluster 0; cluster 1 holds 0.7 spread over 7 tokens. The argmax
    objective learns cluster 0, the mass objective cluster 1: at k = 1 it covers 0.7 of the mass, not 0.3."""
    from dynaspec_hf.calibrate import RouterFeatures, train_router

    n, d = 512, 8
    generator = torch.Generator().manual_seed(0)
    token_cluster = torch.tensor([0] + [1] * 7 + [2] * 8)
    mass = torch.tensor([0.3, 0.7, 0.0]).expand(n, -1)
    features = RouterFeatures(torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator),
                              torch.zeros(n, d), torch.zeros(n, dtype=torch.long), mass.half(),
                              torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                              torch.arange(n), torch.zeros(n, 0, dtype=torch.int), torch.zeros(n, 0), ["all"])
    covered = {}
    for objective in ("mass", "argmax"):
        router = train_router(features, token_cluster, 3, 16, objective=objective, epochs=20, batch_size=64,
                              lr=1e-2, progress=False)
        with torch.no_grad():
            top = router(features.previous_hidden, features.token_embedding).argmax(-1)
        covered[objective] = float(mass.gather(1, top[:, None]).mean())
    assert covered == pytest.approx({"mass": 0.7, "argmax": 0.3}), covered
    with pytest.raises(ValueError, match="needs the target's mass"):
        train_router(features.select(torch.arange(4)), token_cluster, 4, progress=False)
    with pytest.raises(ValueError, match="Unknown router objective"):
        train_router(features, token_cluster, 3, objective="kl", progress=False)


def test_calibration_chooses_the_best_core_routed_split(two_domain_pair):
    """Every size k is tried as routed clusters + frequency core of the same row count; the report keeps the split
    with the best held-out greedy acceptance, the all-routed split agrees with the routed curve, and the routed
    clusters never cover more target mass than the best k clusters could."""
    from dynaspec_hf.calibrate import best_splits

    target, drafter, domain_a, domain_b = two_domain_pair
    sequences, domains = domain_a + domain_b, ["A"] * len(domain_a) + ["B"] * len(domain_b)
    _, report = calibrate(target, drafter, sequences, domains=domains, num_clusters=12, core_size=64,
                          router_hidden_size=64, heldout_fraction=0.2, epochs=10, progress=False, check_prompts=0)
    curves = report["curves"]
    overall = curves["domains"]["all"]
    for i, k in enumerate(curves["ks"]):
        candidates = overall["splits"][str(k)]
        assert all(c["core"] == (k - c["routed"]) * curves["cluster_size"] - c["context"] <= 64 for c in candidates)
        routed_only = next(c for c in candidates if c["routed"] == k)
        assert routed_only["acceptance"] == overall["routed"]["acceptance"][i]
        # the split whose worst held-out domain accepts most (the mean over both breaks ties)
        worst = [min(round(curves["domains"][d]["splits"][str(k)][j]["acceptance"], 6) for d in "AB")
                 for j in range(len(candidates))]
        best = candidates[max(range(len(candidates)), key=lambda j: (
            worst[j], round(candidates[j]["acceptance"], 6), candidates[j]["routed"], -candidates[j]["context"]))]
        assert report["splits"][str(k)] == {"k": best["routed"], "core": best["core"], "context": best["context"]}
        assert overall["routed"]["mass"][i] <= overall["routed"]["best_mass"][i] + 1e-6
    # 8 routed; 6 + 32 core; 4 + 64 core (2 + 96 would exceed the core); none with context (too few rows for 128)
    assert len(overall["splits"]["8"]) == 3
    assert overall["routed"]["best_mass"][-1] == pytest.approx(1.0, abs=1e-2)  # every cluster: all the mass
    assert best_splits(curves) == report["splits"]
    assert best_splits(curves, rule="mean") == report["splits_by_mean"]["splits"]


def test_splits_are_chosen_for_the_worst_domain_and_the_mean_breaks_ties():
    """A split that wins on the mean by giving one domain up loses to one that holds up in every domain."""
    from dynaspec_hf.calibrate import best_splits

    def split(routed, score):
        return dict(routed=routed, core=0, context=0, acceptance=score)

    def curves(a, b):  # per candidate: domain A's and B's acceptance; "all" holds their mean (equal sizes)
        entry = lambda scores: {"splits": {"4": [split(4, scores[0]), split(2, scores[1]), split(1, scores[2])]}}
        return {"domains": {"all": entry([(x + y) / 2 for x, y in zip(a, b)]), "A": entry(a), "B": entry(b)}}

    lopsided = curves(a=[0.9, 0.55, 0.5], b=[0.3, 0.5, 0.5])  # means 0.6, 0.525, 0.5; worst 0.3, 0.5, 0.5
    assert best_splits(lopsided, rule="mean")["4"]["k"] == 4
    assert best_splits(lopsided)["4"]["k"] == 2  # worst 0.5 twice: the better mean (0.525) wins the tie
    with pytest.raises(ValueError, match="split rule"):
        best_splits(lopsided, rule="median")


def test_context_splits_are_scored_with_each_positions_recent_tokens(two_domain_pair):
    """Held-out splits with context tokens score the union of routed clusters, core and the distinct tokens read
    so far in the same sequence (chunks cut across sequences here); the report can choose them."""
    from dynaspec_hf.calibrate import best_splits, collect_features, shortlist_curves
    from test_context_tokens import reference_recent

    target, drafter, domain_a, domain_b = two_domain_pair
    assistant, report = calibrate(target, drafter, domain_a[:60] + domain_b[:60], num_clusters=12, core_size=64,
                                  router_hidden_size=64, heldout_fraction=0.2, epochs=5, context_sizes=(0, 8, 16),
                                  progress=False, check_prompts=0)
    assert all(set(split) == {"k", "core", "context"} for split in report["splits"].values())
    sequences = domain_a[-4:] + domain_b[-4:]
    features = collect_features(target, drafter, sequences, top_tokens=VOCAB, progress=False)
    recent = features.context_before(torch.arange(len(features)), 16, VOCAB)
    expected = [reference_recent(s[1 : t + 1].tolist(), 16) for s in sequences for t in range(1, len(s))]
    assert recent.tolist() == expected

    static_order = torch.arange(VOCAB)  # token id = frequency rank
    curves = shortlist_curves(assistant, features, static_order, [4], chunk=7, context_sizes=(0, 8, 16))
    candidates = curves["domains"]["all"]["splits"]["4"]
    assert {c["context"] for c in candidates} == {0, 8, 16}
    with torch.no_grad():
        scores = assistant.router(features.previous_hidden.float(), features.token_embedding.float())
        logits = assistant.full_vocabulary_logits(features.hidden.float())
        p = torch.cat([target(s[None]).logits[0, 1:] for s in sequences]).softmax(-1)  # the target's next token
    overall = curves["domains"]["all"]
    assert overall["top_tokens_mass"] == pytest.approx(1.0, abs=1e-3)  # every token kept: the sum is exact
    full_overlap = torch.minimum(p, logits.softmax(-1)).sum(-1).mean()
    assert overall["full_sampled_acceptance"] == pytest.approx(float(full_overlap), abs=2e-3)
    cluster_of = torch.empty(VOCAB, dtype=torch.long)
    ids = assistant.lm_head.cluster_token_ids
    cluster_of[ids[ids >= 0]] = torch.arange(12)[:, None].expand_as(ids)[ids >= 0]
    for candidate in candidates:
        clusters = scores.topk(candidate["routed"], dim=-1).indices
        allowed = (cluster_of[None] == clusters[:, :, None]).any(1) | (static_order < candidate["core"])[None]
        for row, tokens in enumerate(recent[:, : candidate["context"]].tolist()):
            allowed[row, [t for t in tokens if t >= 0]] = True
        recall = allowed.gather(1, features.target_next[:, None]).float().mean()
        acceptance = (logits.masked_fill(~allowed, float("-inf")).argmax(-1) == features.target_next).float().mean()
        assert candidate["recall"] == pytest.approx(float(recall), abs=1e-6), candidate
        assert candidate["acceptance"] == pytest.approx(float(acceptance), abs=1e-6), candidate
        q = logits.masked_fill(~allowed, float("-inf")).softmax(-1)  # the drafter renormalized on the shortlist
        overlap = torch.minimum(p, q).sum(-1).mean()
        assert candidate["sampled_acceptance"] == pytest.approx(float(overlap), abs=2e-3), candidate
        assert candidate["sampled_acceptance"] < overall["full_sampled_acceptance"]
    best = max(candidates, key=lambda c: (round(c["sampled_acceptance"], 6), c["routed"], -c["context"]))
    assert best_splits(curves, criterion="sampled_acceptance")["4"] == {
        "k": best["routed"], "core": best["core"], "context": best["context"]}


def test_the_sampling_band_is_kept_only_when_end_to_end_tau_confirms_it(two_domain_pair):
    """A sampled split that drafts from far fewer tokens than the greedy one loses τ at T = 1 and is not saved as
    the sampling band; one that drafts from the whole vocabulary gains and is."""
    from dynaspec_hf.calibrate import check_sampling_schedule

    target, drafter, domain_a, _ = two_domain_pair
    assistant, _ = calibrate(target, drafter, domain_a[:80], num_clusters=12, core_size=64, router_hidden_size=64,
                             epochs=5, progress=False)
    prompts = domain_a[-6:]  # 48 tokens each: prompts of 24
    small, whole = {"k": 1, "core": 0, "context": 0}, {"k": 12, "core": 0, "context": 0}
    lost = check_sampling_schedule(target, assistant, whole, small, prompts, 24)
    assert not lost["kept"] and lost["tau_sampled_split"] < lost["tau_greedy_split"], lost
    assert assistant.config.temperature_bands == [] and assistant.config.k_by_position == [12]
    won = check_sampling_schedule(target, assistant, small, whole, prompts, 24)
    assert won["kept"] and won["tau_sampled_split"] > won["tau_greedy_split"], won
    assert assistant.config.k_by_position == [1] and assistant.config.schedule(1.0).k_by_position == [12]
    assert check_sampling_schedule(target, assistant, small, dict(small), prompts, 24)["kept"] is False


def test_the_sampling_tail_is_switched_on_only_when_it_raises_tau(two_domain_pair):
    """The tail's weight and rank are the ones with the best exact sampled acceptance on held-out text (every rank
    tried; the drafter is 32 wide), and the tail stays on only if it also raises end-to-end τ at T = 1. Drafting
    from the whole vocabulary leaves no tail: every weight accepts alike, and it stays off."""
    from dynaspec_hf.calibrate import check_sampling_schedule

    target, drafter, domain_a, _ = two_domain_pair
    assistant, report = calibrate(target, drafter, domain_a[:80], num_clusters=12, core_size=64,
                                  router_hidden_size=64, epochs=5, progress=False)
    prompts = domain_a[-6:]
    small, whole = {"k": 1, "core": 0, "context": 0}, {"k": 12, "core": 0, "context": 0}
    for check in (report["sampling_check"], check_sampling_schedule(target, assistant, small, small, prompts, 24)):
        by_rank = check["acceptance_by_rank"]
        assert set(by_rank) == {str(r) for r in TAIL_RANKS} and by_rank["0"] == check["acceptance"]["tail"]
        best = max(((int(r), w) for r in by_rank for w in TAIL_WEIGHTS),
                   key=lambda rw: (by_rank[str(rw[0])][str(rw[1])], -rw[1], -rw[0]))
        assert (check["tail_rank"], check["tail_weight"]) == (best if best[1] else (0, 0.0)), check
        without = check["tau_sampled_split"] if check["kept"] else check["tau_greedy_split"]
        assert check["tail_kept"] == (check["tail_weight"] > 0 and check["tau_tail"] > without)
    kept = check["tail_kept"]
    assert assistant.config.sampling_tail == (check["tail_weight"] if kept else 0)
    assert assistant.config.sampling_tail_rank == (check["tail_rank"] if kept else 0)
    wide = check_sampling_schedule(target, assistant, whole, whole, prompts, 24)
    assert len(set(wide["acceptance"]["tail"].values())) == 1 and wide["tail_weight"] == 0, wide
    assert not wide["tail_kept"] and assistant.config.sampling_tail == 0


def test_sampled_acceptance_is_the_exact_overlap_of_target_and_drafter(two_domain_pair):
    """Teacher-forced, aligned with the target: the full head's overlap equals one computed from the two models'
    own logits; a shortlist accepts at most the target mass inside it, and the best shortlist holds the most."""
    from dynaspec_hf.calibrate import sampled_acceptance

    target, drafter, domain_a, _ = two_domain_pair
    assistant, _ = calibrate(target, drafter, domain_a[:40], num_clusters=12, core_size=64, router_hidden_size=64,
                             epochs=2, progress=False, check_prompts=0)
    assistant.set_schedule(k_by_position=[2], core_by_position=[8], num_context_tokens=4)
    sequences = domain_a[-3:]
    out = sampled_acceptance(target, assistant, sequences)
    with torch.no_grad():
        overlaps = [torch.minimum(target(s[None]).logits[0, 1:-1].softmax(-1), drafter(s[None]).logits[0, 1:-1]
                                  .softmax(-1)).sum(-1) for s in sequences]
    assert out["positions"] == sum(len(s) - 2 for s in sequences) and out["shortlist_size"] == 8 + 2 * 16 + 4
    assert out["full"] == pytest.approx(float(torch.cat(overlaps).mean()), abs=1e-5)
    assert out["tail"]["0.0"] <= out["target_mass_in_shortlist"] + 1e-6
    assert out["target_mass_in_shortlist"] <= out["target_mass_in_best_shortlist"] + 1e-6
    assert out["best_shortlist"] <= out["target_mass_in_best_shortlist"] + 1e-6
    assert set(out["tail"]) == {str(w) for w in TAIL_WEIGHTS}


def test_a_calibration_config_equals_its_options_and_travels_in_the_report(two_domain_pair):
    target, drafter, domain_a, domain_b = two_domain_pair
    options = dict(num_clusters=12, router_hidden_size=32, heldout_fraction=0.25, epochs=3, check_prompts=0)
    config = CalibrationConfig(**options)
    sequences = domain_a[:20] + domain_b[:20]
    by_options, report = calibrate(target, drafter, sequences, progress=False, **options)
    by_config, _ = calibrate(target, drafter, sequences, config, progress=False)
    assert report["config"] == dataclasses.asdict(config) and report["config"]["epochs"] == 3
    for mine, theirs in zip(by_options.router.parameters(), by_config.router.parameters()):
        assert torch.equal(mine, theirs)
    _, overridden = calibrate(target, drafter, sequences, config, progress=False, seed=1)  # an option over config's
    assert overridden["config"]["seed"] == 1 and overridden["config"]["epochs"] == 3
    with pytest.raises(TypeError, match="epoch"):
        calibrate(target, drafter, sequences, num_clusters=12, epoch=3)
