"""DySpec tree decoding (`dynaspec_hf.generate`): exact greedy output, exact sampling, tree mask, entry points."""

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

import dynaspec_hf
from dynaspec_hf import TreeConfig
from dynaspec_hf.verification import TreeVerifier, recursive_rejection_sample
from dynaspec_hf.engines import kept_engine
from dynaspec_hf.fast_draft import chain_drafter
from dynaspec_hf.generation import compile_options_for
from dynaspec_hf.measure import count_forward_calls
from dynaspec_hf.eager_draft import draft_tokens
from dynaspec_hf.tree import ChainDrafter, SiblingAcceptance, TreeDrafter
from conftest import FAMILIES, FAMILY_CASES, VOCAB, make_assistant, random_cases, tiny_pair
from test_budget import VERIFICATION_BOUND
from test_sampling import PROMPT as SAMPLE_PROMPT, chi_square_p_value, exact_distributions

PROMPTS = 30
SLIDING = sorted(family for family, (_, kwargs) in FAMILIES.items() if "sliding_window" in kwargs)
TREES = {"tree": TreeConfig(num_nodes=12, max_depth=5, width=3), "chain": TreeConfig.chain(4),
         "runner-ups": TreeConfig.chain(4, runner_ups=2), "automatic": TreeConfig(max_depth=5, width=3)}


@pytest.mark.parametrize("shape", sorted(TREES))
@pytest.mark.parametrize("family,setting", FAMILY_CASES)
def test_tree_greedy_equals_target(family, setting, shape):
    # sliding-window families attend within 8 tokens: most cases outgrow the window
    target, drafter = tiny_pair(family)
    assistant = make_assistant(drafter, setting)
    mismatches, passes, produced = [], 0, 0
    dynaspec_hf.generate(target, assistant, torch.ones(1, 3, dtype=torch.long), max_new_tokens=1, tree=TREES[shape])
    # (the first generation of an automatic shape also times the pair's engines: target passes the stats leave out)
    for i, (ids, new_tokens) in enumerate(random_cases(PROMPTS)):
        expected = target.generate(ids, do_sample=False, max_new_tokens=new_tokens)
        with count_forward_calls(target) as calls:
            got, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=new_tokens, tree=TREES[shape],
                                              return_stats=True)
        if not torch.equal(expected, got):
            mismatches.append((i, ids.shape[1], new_tokens))
        assert stats.target_passes == calls[0], "the stats the benchmark counts τ by"  # a replay calls no forward
        assert stats.new_tokens == got.shape[1] - ids.shape[1] and stats.drafted_tokens >= stats.target_passes - 1
        # per round: the accepted drafts and the target's token; only the last round can be cut to max_new_tokens
        rounds = stats.target_passes
        assert sum(stats.accepted[:-1]) + rounds - 1 < stats.new_tokens <= sum(stats.accepted) + rounds
        assert all(a <= d <= s.max_depth and d <= n <= s.num_nodes
                   for s, a, d, n in zip(stats.shapes, stats.accepted, stats.depths, stats.drafted))
        assert TREES[shape].is_automatic or set(stats.shapes) == {TREES[shape]}
        passes, produced = passes + calls[0], produced + new_tokens
    assert not mismatches, f"{len(mismatches)}/{PROMPTS} prompts differ: {mismatches[:5]}"
    assert passes < produced, "no draft token was ever accepted: the test would not exercise the accept path"


@pytest.mark.parametrize("family", ["llama", *SLIDING])
@pytest.mark.parametrize("size", [0, 24])
def test_tree_verification_logits_equal_plain_forward(size, family):
    """The tree mask and positions must give every node the logits of a plain forward over its own path, on the
    unpadded path (the prompt's pass, size 0) and the padded one (later passes), mid-generation; for
    sliding-window targets, with the text beyond their 8-token window (what sampling's acceptance reads too)."""
    target, drafter = tiny_pair(family, seed=2)
    assistant = make_assistant(drafter, "routed")
    committed = torch.randint(0, VOCAB, (11,), generator=torch.Generator().manual_seed(3))
    verifier = TreeVerifier(target, max_length=64, size=size)
    drafter = TreeDrafter(assistant, 64, max_depth=4, width=3)
    verifier.verify(committed[:7], drafter.draft_nodes(committed[:7], num_nodes=5, do_sample=False))
    logits = verifier.verify(committed, drafter.draft_nodes(committed, num_nodes=14, max_children=3, do_sample=False))
    tree = drafter.tree()  # the nodes the pass read were built on the device, before the tree was read
    assert len(tree) == 15 and max(tree.depths) <= 4 and max(tree.depths) >= 2 and max(map(len, tree.children)) >= 2
    assert verifier.model.write_position == committed.shape[0]
    for node in range(len(tree)):
        path, ancestor = [], node
        while ancestor > 0:
            path.insert(0, tree.tokens[ancestor])
            ancestor = tree.parents[ancestor]
        ids = torch.cat([committed, torch.tensor(path, dtype=torch.long)])[None]
        torch.testing.assert_close(logits[node], target(ids).logits[0, -1].float(), atol=1e-4, rtol=1e-4)


def test_tree_shape_limits():
    _, drafter = tiny_pair("qwen2", seed=1)
    assistant = make_assistant(drafter, "routed")
    committed = torch.arange(5)
    tree = TreeDrafter(assistant, 64, max_depth=3, width=2).draft(committed, num_nodes=9, max_children=2,
                                                                  do_sample=True)
    assert len(tree) == 10 and max(tree.depths) <= 3 and max(map(len, tree.children)) <= 2
    for node, children in enumerate(tree.children):
        tokens = [tree.tokens[c] for c in children]
        assert len(set(tokens)) == len(tokens), "siblings must be drawn without replacement"
        assert all(float(tree.probs[node][t]) > 0 for t in tokens), "children must come from the node's shortlist"


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_chain_runner_ups_are_the_next_draws_beside_each_draft(do_sample):
    """Each draft's runner-ups are distinct tokens other than the draft, after it among its parent's children
    (sampled, from q), and leaves; greedy, the next likeliest. The nodes the target reads are the tree's."""
    _, drafter = tiny_pair("qwen2", seed=1)
    assistant = make_assistant(drafter, "routed")
    chain = ChainDrafter(assistant, 3, runner_ups=2)
    nodes = chain.draft_nodes(torch.arange(5), num_nodes=9, do_sample=do_sample)
    tree = chain.tree()
    assert len(tree) == 10 and max(tree.depths) == 3 and [len(c) for c in tree.children if c] == [3, 3, 3]
    assert torch.equal(tree.nodes().visible, nodes.visible) and torch.equal(tree.nodes().tokens, nodes.tokens)
    assert torch.equal(tree.nodes().positions, nodes.positions)
    for node, children in enumerate(tree.children):
        if not children:
            continue
        tokens = [tree.tokens[c] for c in children]
        assert len(set(tokens)) == 3 and not any(tree.children[c] for c in children[1:])
        assert do_sample or tree.probs[node] is None
        assert not do_sample or all(float(tree.probs[node][t]) > 0 for t in tokens)
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, float("-inf")]])
    assert draft_tokens(logits, do_sample=False, runner_ups=2).tolist() == [[1, 2, 3]]
    with pytest.raises(ValueError, match="runner_ups"):
        TreeConfig(num_nodes=8, max_depth=4, runner_ups=1).validate()
    with pytest.raises(ValueError, match="runner_ups"):
        TreeConfig(runner_ups=1).validate()
    with pytest.raises(ValueError, match="runner_ups"):
        TreeConfig.chain(3, runner_ups=16).validate()


def test_tree_graphs_are_keyed_by_the_sampling_settings():
    """The expansion graph applies the warpers inside it: warpers with other settings must not reuse it."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper
    from dynaspec_hf.sampling import processors_key

    def key(*processors):
        return processors_key(LogitsProcessorList(processors))

    assert key(TopKLogitsWarper(2)) == key(TopKLogitsWarper(2))
    assert key(TopKLogitsWarper(2)) != key(TopKLogitsWarper(3))
    assert key(TemperatureLogitsWarper(0.7)) != key(TemperatureLogitsWarper(0.8))
    assert key(TemperatureLogitsWarper(0.7), TopKLogitsWarper(2)) != key(TemperatureLogitsWarper(0.7))


def test_sampled_children_stay_inside_a_truncated_q():
    """With top-k sampling a node has at most k children, each with q > 0, however wide the tree."""
    from transformers import LogitsProcessorList, TopKLogitsWarper

    _, drafter = tiny_pair("qwen2", seed=1)
    assistant = make_assistant(drafter, "routed")
    tree = TreeDrafter(assistant, 64, max_depth=3, width=4).draft(
        torch.arange(5), num_nodes=12, do_sample=True, processors=LogitsProcessorList([TopKLogitsWarper(2)]))
    assert max(map(len, tree.children)) == 2
    assert all(float(tree.probs[n][tree.tokens[c]]) > 0 for n, cs in enumerate(tree.children) for c in cs)


def check_nodes_against_plain_drafting(assistant, committed, tree, temperature: float, context=None) -> list[int]:
    """Every node with children must have been drafted from what the assistant computes from a plain forward of the
    drafter over the committed text and the node's path (cache, mask, positions, the router's previous state):
    sampled trees keep that q; greedy trees' children are its likeliest tokens, in order. Returns those nodes."""
    parents = [node for node in range(len(tree)) if tree.children[node]]
    for node in parents:
        path = torch.tensor([tree.tokens[n] for n in tree.paths[node]], dtype=torch.long)
        ids = torch.cat([committed, path])[None]
        states = assistant.drafter(input_ids=ids).last_hidden_state[0]
        q = assistant.next_token_logits(states[-1:], states[-2:-1], ids[:, -1], tree.depths[node],
                                        context_ids=context, temperature=temperature)[0].softmax(-1)
        if temperature:
            torch.testing.assert_close(tree.probs[node], q, atol=1e-5, rtol=1e-4)
        else:
            assert tree.probs[node] is None  # greedy trees build no vocabulary-sized q
            children = [tree.tokens[child] for child in tree.children[node]]
            assert children == q.topk(len(children)).indices.tolist()
    return parents


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("setting", ["routed", "context"])
def test_tree_drafter_follows_plain_drafting(setting, do_sample):
    _, drafter = tiny_pair("llama", seed=4)
    assistant = make_assistant(drafter, setting)
    committed = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(5))
    tree_drafter = TreeDrafter(assistant, 64, max_depth=4, width=3)
    temperature = 1.0 if do_sample else 0.0
    torch.manual_seed(0)
    tree_drafter.draft(committed[:8], num_nodes=6, do_sample=do_sample, temperature=temperature)  # a cached prefix
    # every candidate kept, so every forwarded node shows its children
    tree = tree_drafter.draft(committed, num_nodes=30, do_sample=do_sample, temperature=temperature)
    parents = check_nodes_against_plain_drafting(assistant, committed, tree, temperature,
                                                 assistant.context_tokens(committed[None]))
    assert len(parents) >= 3 and max(tree.depths[n] for n in parents) >= 2


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_tree_nodes_of_one_forward_get_their_own_positions_shortlists(do_sample):
    """A node forward holds nodes of several depths; under a schedule that changes with the position, each node
    must be drafted from the shortlist of its own draft position."""
    _, drafter = tiny_pair("llama", seed=4)
    assistant = make_assistant(drafter, "routed")
    schedule = dict(k_by_position=[6, 5, 4, 3, 2], core_by_position=[16, 12, 8, 4, 0])
    assistant.set_schedule(**schedule, temperature_bands=[dict(max_temperature=None, **schedule, num_context_tokens=0)])
    committed = torch.randint(0, VOCAB, (9,), generator=torch.Generator().manual_seed(6))
    tree_drafter = TreeDrafter(assistant, 64, max_depth=5, width=2)
    temperature = 1.0 if do_sample else 0.0
    # a node forward takes nodes of depths 1..4, whose draft positions use different shortlists
    assert len({assistant.config.shortlist_at(position, temperature) for position in range(1, 5)}) >= 3
    torch.manual_seed(0)
    tree = tree_drafter.draft(committed, num_nodes=18, do_sample=do_sample, temperature=temperature)  # all kept
    parents = check_nodes_against_plain_drafting(assistant, committed, tree, temperature)
    assert len({tree.depths[node] for node in parents if node}) >= 3


def test_tree_depth_costs_one_drafter_forward_per_level():
    """Leaves take no forward: a tree of depth d costs d drafter forwards however many nodes it has."""
    _, drafter = tiny_pair("llama", seed=4)
    assistant = make_assistant(drafter, "routed")
    tree_drafter = TreeDrafter(assistant, 64, max_depth=5, width=4)
    with count_forward_calls(assistant.drafter) as calls:
        chain = tree_drafter.draft(torch.arange(6), num_nodes=20, max_children=1, do_sample=False)
    assert len(chain) == 6 and max(chain.depths) == 5 and calls[0] == 5
    with count_forward_calls(assistant.drafter) as calls:
        tree = tree_drafter.draft(torch.arange(7), num_nodes=20, do_sample=False)
    assert len(tree) == 21 and calls[0] <= 5


def test_tree_drafter_context_slots_follow_the_committed_text():
    """The context slots are updated by each draft's new tokens, not rebuilt from the whole text: after drafts over
    growing texts (repeated tokens, re-read ones, a new generation) they equal those of the whole text."""
    _, drafter = tiny_pair("llama", seed=4)
    assistant = make_assistant(drafter, "context")
    tree_drafter = TreeDrafter(assistant, 64, max_depth=3, width=2)
    text = torch.randint(0, 12, (40,), generator=torch.Generator().manual_seed(2))  # a few tokens, often repeated
    for lengths in ([9, 10, 14, 15, 21, 30], [5, 8]):  # the second list: a new generation
        tree_drafter.start()
        for length in lengths:
            tree_drafter.draft(text[:length], num_nodes=4, do_sample=False)
            expected = assistant.context_tokens(text[None, :length], size=tree_drafter.context.shape[1])
            assert torch.equal(tree_drafter.context, expected), length


def test_sampled_tree_shape_does_not_depend_on_drafted_tokens():
    """Under sampling the shape comes from sibling acceptance rates, never from q of the drawn tokens (which would
    bias rejection sampling): trees drawn with different seeds differ in tokens, not in shape."""
    _, drafter = tiny_pair("qwen2", seed=1)
    assistant = make_assistant(drafter, "routed")
    rates = SiblingAcceptance(accepted=[60, 10, 3], reached=[100, 40, 30])
    shapes, token_sets = set(), set()
    for seed in range(6):
        torch.manual_seed(seed)
        tree = TreeDrafter(assistant, 64, max_depth=4, width=3).draft(torch.arange(5), num_nodes=10, do_sample=True,
                                                                      sibling_acceptance=rates)
        shapes.add(tuple(tree.parents))
        token_sets.add(tuple(tree.tokens))
    assert len(shapes) == 1 and len(token_sets) > 1


@pytest.mark.parametrize("do_sample", [False, True])
def test_tree_is_the_one_its_sibling_shares_price(do_sample):
    """A tree keeps the nodes of the highest chance of acceptance by its children's shares, greedy too (not by q,
    which a distilled drafter spreads thin): the drafted tree is the one `expected_drafts` prices. With a first
    child accepted at 0.7 and a second at 0.5 once the first failed (share 0.15), six nodes are a chain of five
    and the root's second child; valued by the second child's rate (0.5) instead, the tree would be wider."""
    from dynaspec_hf.budget import expected_drafts

    _, drafter = tiny_pair("llama", seed=3)
    assistant = make_assistant(drafter, "routed")
    rates = SiblingAcceptance(accepted=[0.7e6, 0.15e6], reached=[1e6, 0.3e6])
    shares = rates.shares(2)
    tree = TreeDrafter(assistant, 64, max_depth=6, width=2).draft(torch.arange(5), num_nodes=6, do_sample=do_sample,
                                                                  sibling_acceptance=rates)
    assert sorted(tree.depths[1:]) == [1, 1, 2, 3, 4, 5]
    chance = [1.0] + [0.0] * (len(tree) - 1)
    for node in range(1, len(tree)):
        parent = tree.parents[node]
        chance[node] = chance[parent] * shares[tree.children[parent].index(node)]
    assert sum(chance[1:]) == pytest.approx(expected_drafts(TreeConfig(6, 6, 2), rates), rel=1e-4)


def test_fixed_trees_learn_within_a_generation_from_the_prior():
    """A fixed tree is valued by its generation's rates, which its rounds update: where the drafter is usually
    right, later trees are deeper than the first, drafted at the prior (1/2 a child), and every generation's first
    tree is drafted at the prior again (an earlier text's rates would misprice this one's)."""
    target, drafter = tiny_pair("llama", noise=0.1)
    assistant = make_assistant(drafter, "full")
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    shape = TreeConfig(num_nodes=12, max_depth=6, width=3)
    depths = [dynaspec_hf.generate(target, assistant, ids, max_new_tokens=40, tree=shape, return_stats=True)[1].depths
              for _ in range(2)]
    assert depths[0] == depths[1] and max(depths[0][1:]) > depths[0][0]


def test_sibling_acceptance_counts_tried_children():
    rates = SiblingAcceptance()
    assert rates.rate(0) == rates.rate(3) == 0.5  # no evidence yet
    rates.record(3, 1)  # child 0 rejected, child 1 accepted, child 2 never tried
    rates.record(2, None)  # both rejected
    assert (rates.reached, rates.accepted) == ([2, 2], [0, 1])
    assert rates.rate(0) == 1 / 4 and rates.rate(1) == 2 / 4 and rates.rate(2) == 0.5
    # a child's share: the earlier ones rejected, it accepted; a later child's rate is capped by an earlier one's
    assert rates.shares(3) == [1 / 4, 3 / 4 * 1 / 4, 9 / 16 * 1 / 4]


def test_batch_rows_equal_their_own_generation():
    target, drafter = tiny_pair("llama", seed=6)
    assistant = make_assistant(drafter, "routed")
    rows = [torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 9, 6)]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, row in enumerate(rows):  # left padding
        ids[i, 9 - len(row) :], mask[i, 9 - len(row) :] = row, 1
    eos = int(target.generate(rows[0][None], do_sample=False, max_new_tokens=5)[0, -1])
    got = dynaspec_hf.generate(target, assistant, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos,
                               pad_token_id=0)
    for i, row in enumerate(rows):
        expected = target.generate(row[None], do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
        new = expected[0, len(row) :]
        assert torch.equal(got[i, : 9], ids[i])
        assert torch.equal(got[i, 9 : 9 + len(new)], new) and bool((got[i, 9 + len(new) :] == 0).all())


def test_timed_phases_cover_the_rounds_and_change_nothing():
    target, drafter = tiny_pair("llama", seed=6)
    assistant = make_assistant(drafter, "routed")
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    plain = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=20)
    start = time.perf_counter()
    timed, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=20, return_stats=True,
                                        time_phases=True)
    wall = time.perf_counter() - start
    assert torch.equal(plain, timed)
    phases = stats.phase_seconds
    assert set(phases) == {"draft", "verify", "accept", "commit"} and min(phases.values()) > 0
    assert 0.5 * wall < sum(phases.values()) <= wall  # the parts of every round of both rows, nothing twice
    assert dynaspec_hf.generate(target, assistant, ids, max_new_tokens=20, return_stats=True)[1].phase_seconds == {}


@pytest.mark.parametrize("shape", sorted(TREES))
@pytest.mark.parametrize("family", SLIDING)
def test_sliding_window_targets_far_beyond_their_window(family, shape):
    """Generations of 100+ tokens with an 8-token window (Gemma: local layers interleaved with global ones): the
    static caches keep every position for rollbacks, and the masks apply each layer type's window."""
    target, drafter = tiny_pair(family, seed=6, noise=0.3)
    assistant = make_assistant(drafter, "routed")
    generator = torch.Generator().manual_seed(6)
    for length in (5, 40):
        ids = torch.randint(0, VOCAB, (1, length), generator=generator)
        got = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=90, tree=TREES[shape])
        assert torch.equal(got, target.generate(ids, do_sample=False, max_new_tokens=90)), f"prompt of {length}"


def test_perfect_drafter_chain_is_fully_accepted():
    target, _ = tiny_pair("llama", seed=5)
    assistant = make_assistant(target, "full")
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(0))
    with count_forward_calls(target) as calls:
        got = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=30, tree=TreeConfig.chain(4))
    assert torch.equal(got, target.generate(ids, do_sample=False, max_new_tokens=30))
    assert calls[0] == 6, f"{calls[0]} target passes for 30 tokens in blocks of 4 + 1"


def test_own_loop_chain_drafts_with_the_graph_drafter():
    """Chains in the own loop come from the assistant's chain drafter (the CUDA-graph one on the GPU; here its
    static-cache steps run eagerly) and stay exact across rounds of the padded, static-cache verifier."""
    target, drafter = tiny_pair("qwen2", seed=9)
    assistant = make_assistant(drafter, "routed")
    engine = chain_drafter(assistant, 128)
    for ids, new_tokens in random_cases(8):
        got = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=new_tokens, tree=TreeConfig.chain(5))
        assert torch.equal(got, target.generate(ids, do_sample=False, max_new_tokens=new_tokens))
    assert engine.active is not None, "the chain was not drafted by the graph drafter"
    assert kept_engine(target, "verifier").size == TreeConfig.chain(5).verified_tokens == 11


def test_both_draft_paths_give_the_same_runner_ups():
    """Greedy runner-ups read from the shortlist's rows in the chain drafter's step equal those of the eager draft
    loop (`drafting.cuda_graphs=False`), which reads them from the logits, and both stay exact."""
    target, drafter = tiny_pair("qwen2", seed=9)
    assistant = make_assistant(drafter, "routed")
    trees = []
    for graphs in (True, False):
        assistant.drafting.cuda_graphs = graphs
        chain = ChainDrafter(assistant, 4, runner_ups=2)
        chain.draft_nodes(torch.arange(7), num_nodes=12, do_sample=False)
        trees.append(chain.tree())
        ids, new_tokens = next(iter(random_cases(1, seed=2)))
        got = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=new_tokens,
                                   tree=TreeConfig.chain(4, runner_ups=2))
        assert torch.equal(got, target.generate(ids, do_sample=False, max_new_tokens=new_tokens))
    assert trees[0].tokens == trees[1].tokens and trees[0].parents == trees[1].parents
    assert len(trees[0]) == 13


def test_compile_defaults_to_cuda_as_transformers_static_cache_decoding():
    """The own loop compiles by default where transformers compiles static-cache decoding and its passes replay
    CUDA graphs: on one GPU, unless the generation config sets `disable_compile`; an explicit `compile` wins."""
    config = GenerationConfig()
    assert compile_options_for(None, config, torch.device("cuda")) == {}
    assert compile_options_for(None, config, torch.device("cpu")) is None
    assert compile_options_for(None, config, torch.device("cuda"), one_device=False) is None  # a sharded target
    assert compile_options_for(None, GenerationConfig(disable_compile=True), torch.device("cuda")) is None
    assert compile_options_for(False, config, torch.device("cuda")) is None
    assert compile_options_for(True, config, torch.device("cpu")) == {}
    assert compile_options_for({"mode": "default"}, config, torch.device("cpu")) == {"mode": "default"}


@pytest.mark.parametrize("shape", sorted(TREES))
def test_compiled_fixed_shape_forwards_stay_exact(shape):
    """`compile=` sends the fixed-shape forwards (the padded verification pass, the tree's node and prefix
    forwards) through torch.compile, here with a backend that records each graph it gets, and never a prompt."""
    token_counts = []

    def recording_backend(graph_module, example_inputs):  # the token count of each compiled model forward
        for node in graph_module.graph.nodes:  # a model embeds `[1, tokens]` (a router embeds `[nodes]`)
            ids = node.args[0].meta["example_value"] if getattr(node.target, "__name__", "") == "embedding" else None
            if node.op == "call_function" and ids is not None and ids.ndim == 2:
                count = ids.shape[-1]  # a dynamic shape's: this call's length
                token_counts.append(count if isinstance(count, int) else count.node.hint)
        return graph_module.forward

    target, drafter = tiny_pair("llama", seed=4)
    assistant = make_assistant(drafter, "routed")
    verified = TREES[shape].verified_tokens
    for length in (verified + 2, verified + 5):  # longer than any fixed shape: a compiled prompt would show
        ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
        got = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=12, tree=TREES[shape],
                                   compile={"backend": recording_backend})
        assert torch.equal(got, target.generate(ids, do_sample=False, max_new_tokens=12))
    assert verified in token_counts, "the verification pass was not compiled"
    assert max(token_counts) == verified, f"a variable-length forward was compiled: {sorted(set(token_counts))}"
    if shape == "tree":
        assert TREES[shape].width in token_counts, "the tree's node forwards were not compiled"


@pytest.mark.parametrize("tree", [{"num_nodes": 8, "max_depth": 4, "width": 2}, TreeConfig.chain(4)])
def test_custom_generate_entry_point(tmp_path, tree):
    """`target.generate(custom_generate=dynaspec_hf.custom_generate_path())` runs the own loop (tree or chain),
    and passes `compile` on to it."""
    target, drafter = tiny_pair("mistral", seed=8, sliding_window=64)
    make_assistant(drafter, "routed").save_pretrained(tmp_path)
    assistant = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(4))
    compiled = []
    backend = lambda graph_module, example_inputs: compiled.append(graph_module) or graph_module.forward  # noqa: E731
    got = target.generate(ids, assistant_model=assistant, custom_generate=dynaspec_hf.custom_generate_path(),
                          trust_remote_code=True, max_new_tokens=20, tree=tree, compile={"backend": backend})
    assert torch.equal(got, target.generate(ids, do_sample=False, max_new_tokens=20))
    assert kept_engine(target, "verifier") is not None, "the own loop did not run"
    assert compiled, "`compile` did not reach the own loop"


def test_unsupported_options_are_refused():
    target, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed")
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="repetition_penalty"):
        dynaspec_hf.generate(target, assistant, ids, max_new_tokens=4, repetition_penalty=1.3)
    with pytest.raises(TypeError, match="unsupported arguments"):
        dynaspec_hf.generate(target, assistant, ids, max_new_tokens=4, frobnicate=True)
    with pytest.raises(ValueError, match="at least 1"):
        dynaspec_hf.generate(target, assistant, ids, max_new_tokens=4, tree=TreeConfig(num_nodes=0))
    with pytest.raises(TypeError, match="torch.compile options"):
        dynaspec_hf.generate(target, assistant, ids, max_new_tokens=4, compile="max-autotune")
    other, _ = tiny_pair("llama", vocab_size=VOCAB + 8)
    with pytest.raises(ValueError, match="vocabulary"):
        dynaspec_hf.generate(other, assistant, ids, max_new_tokens=4)
    windowed, windowed_drafter = tiny_pair("mistral", sliding_window=6)
    with pytest.raises(ValueError, match="sliding window of 6 tokens, and a tree of depth 7"):
        dynaspec_hf.generate(windowed, make_assistant(windowed_drafter, "routed"), ids, max_new_tokens=20,
                             tree=TreeConfig())


def test_recursive_rejection_sampling_is_exact():
    """Two candidates drawn without replacement from q, verified against p: the output must follow p. One row per
    draw, all verified at once, as the loop verifies every node of a tree at once."""
    torch.manual_seed(0)
    draws = 20000
    p = torch.tensor([0.5, 0.05, 0.05, 0.3, 0.1]).expand(draws, -1)
    q = torch.tensor([0.1, 0.4, 0.3, 0.1, 0.1]).expand(draws, -1)
    candidates = torch.multinomial(q, 2)  # without replacement, in the order drawn
    accepted, tokens = recursive_rejection_sample(p, q, candidates)
    assert chi_square_p_value(tokens, p[0]) > 1e-3
    took = accepted >= 0
    assert torch.equal(tokens[took], candidates[took.nonzero()[:, 0], accepted[took]])
    assert 0.5 < took.float().mean() < 0.9  # both outcomes occur


def test_recursive_rejection_sampling_skips_candidates_q_cannot_draw():
    """q has one token, so a runner-up beside it (`ChainDrafter`) has q = 0: no draw, never accepted. After the
    first candidate's rejection the token follows the residual, which splits evenly between tokens 1 and 2."""
    torch.manual_seed(0)
    draws = 20000
    p = torch.tensor([0.5, 0.25, 0.25]).expand(draws, -1)
    q = torch.tensor([1.0, 0.0, 0.0]).expand(draws, -1)
    accepted, tokens = recursive_rejection_sample(p, q, torch.tensor([0, 1]).expand(draws, -1))
    assert (accepted != 1).all()
    assert chi_square_p_value(tokens, p[0]) > 1e-3


def test_recursive_rejection_sampling_rows_are_independent():
    """Rows without candidates draw from their own p; a row's outcome does not depend on the other rows."""
    torch.manual_seed(0)
    draws = 20000
    p = torch.tensor([[0.0, 0.0, 1.0], [0.2, 0.3, 0.5]]).repeat(draws, 1)
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).repeat(draws, 1)
    candidates = torch.tensor([[0], [-1]]).repeat(draws, 1)
    accepted, tokens = recursive_rejection_sample(p, q, candidates)
    assert (accepted[0::2] == -1).all() and (tokens[0::2] == 2).all()  # p(0) = 0: always rejected, residual is 2
    assert (accepted[1::2] == -1).all()
    assert chi_square_p_value(tokens[1::2], p[1]) > 1e-3


def test_recursive_rejection_sampling_rows_past_the_candidates_draw_from_p():
    """Only the first rows have candidates (`TreeVerifier.sample` puts a tree's parents first): the rows after
    them are leaves, which draw from their own p, and their q is never read."""
    torch.manual_seed(0)
    draws = 20000
    p = torch.tensor([[0.0, 0.0, 1.0], [0.2, 0.3, 0.5]]).repeat_interleave(draws, 0)  # parents, then leaves
    q = torch.tensor([[1.0, 0.0, 0.0]]).repeat(draws, 1)
    candidates = torch.tensor([[0]]).repeat(draws, 1)
    accepted, tokens = recursive_rejection_sample(p, q, candidates)
    assert accepted.shape == tokens.shape == (2 * draws,)
    assert (accepted[:draws] == -1).all() and (tokens[:draws] == 2).all()
    assert (accepted[draws:] == -1).all()
    assert chi_square_p_value(tokens[draws:], p[-1]) > 1e-3


def test_sampled_verification_rejects_only_over_the_nodes_with_children(monkeypatch):
    """A tree of 7 nodes, 2 of them with children: the rejection passes run over 2 rows, the 8 rows' tokens come
    back in the tree's numbering (each parent's outcome is among its own children or a draw; leaves draw)."""
    target, _ = tiny_pair("llama", seed=2)
    verifier = TreeVerifier(target, max_length=64, size=16)
    tree = dynaspec_hf.tree.TokenTree(root_position=5)
    root = tree.add(3, -1)
    first = [tree.add(token, root) for token in (4, 5, 6)]
    for token in (7, 8, 9):
        tree.add(token, first[1])
    q = torch.zeros(VOCAB)
    q[4:10] = 1 / 6
    tree.probs = [q if children else None for children in tree.children]
    shapes = []

    def recorded(p, q, candidates):
        shapes.append((p.shape[0], candidates.shape[0]))
        return recursive_rejection_sample(p, q, candidates)

    monkeypatch.setattr(dynaspec_hf.verification, "recursive_rejection_sample", recorded)
    logits = torch.full((len(tree), VOCAB), -30.0)
    logits[:, 20] = 0.0  # the target takes token 20 after every node: every child is rejected
    logits[1, 4] = 30.0  # but after node 1, whose own rows say token 4
    accepted, tokens = verifier.sample(tree, logits, None)
    assert shapes == [(8, 2)]
    assert accepted == [-1] * len(tree) and tokens[1] == 4 and all(t == 20 for i, t in enumerate(tokens) if i != 1)


# --------------------------------------------------------------------------------------------------------------
# sampling through the whole loop (slow): first token and second-token marginal against the exact target


SAMPLING_SHAPES = {"tree": TreeConfig(num_nodes=6, max_depth=2, width=3), "chain": TreeConfig.chain(2),
                   "runner-ups": TreeConfig.chain(2, runner_ups=2), "automatic": TreeConfig(max_depth=2, width=3)}


def draw_tree(target, assistant, draws, tree=SAMPLING_SHAPES["tree"]):
    torch.manual_seed(4321)
    out = [dynaspec_hf.generate(target, assistant, SAMPLE_PROMPT, do_sample=True, max_new_tokens=3, tree=tree)
           for _ in range(draws)]
    return torch.cat(out)[:, SAMPLE_PROMPT.shape[1] : SAMPLE_PROMPT.shape[1] + 2]


@pytest.mark.slow
@pytest.mark.parametrize("setting,shape,tail", [("full", "tree", None), ("routed", "tree", None),
                                                ("routed", "chain", None), ("routed", "tree", 2),
                                                ("routed", "runner-ups", None), ("routed", "runner-ups", 0),
                                                ("routed", "automatic", None)])
def test_tree_sampling_keeps_target_distribution(sampling_pair, setting, shape, tail):
    """(`tail` not None: a sampling tail of that rank, 0 the router's mass by corpus counts.)"""
    target, drafter = sampling_pair
    assistant = make_assistant(drafter, setting, num_clusters=8, core_size=16, sampling_tail=0.0 if tail is None
                               else 0.5, sampling_tail_rank=tail or 0)
    if shape == "automatic":  # the probe tree's round, then chains: the switch happens inside the drawn tokens
        assistant.drafting.round_costs = VERIFICATION_BOUND
    first, second = exact_distributions(target)
    tokens = draw_tree(target, assistant, 3000, SAMPLING_SHAPES[shape])
    p_first, p_second = chi_square_p_value(tokens[:, 0], first), chi_square_p_value(tokens[:, 1], second)
    print(f"{shape} {setting}{'' if tail is None else f' + tail rank {tail}'}: p-value first token {p_first:.3g}, second token {p_second:.3g}")
    assert p_first > 1e-3 and p_second > 1e-3


@pytest.mark.slow
def test_tree_broken_acceptance_rule_is_detected(sampling_pair, monkeypatch):
    """Accepting the first child whenever there is one makes the first token follow q: the test must see it."""

    def accept_first_child(p, q, candidates):  # rows past the candidates' have none
        first = torch.cat([candidates[:, 0], candidates.new_full((p.shape[0] - candidates.shape[0],), -1)])
        return torch.where(first >= 0, 0, -1), torch.where(first >= 0, first, torch.multinomial(p, 1)[:, 0])

    monkeypatch.setattr(dynaspec_hf.verification, "recursive_rejection_sample", accept_first_child)
    target, drafter = sampling_pair
    assistant = make_assistant(drafter, "routed", num_clusters=8, core_size=16)
    first, _ = exact_distributions(target)
    p_first = chi_square_p_value(draw_tree(target, assistant, 800)[:, 0], first)
    print(f"broken rule: p-value first token {p_first:.3g}")
    assert p_first < 1e-6
