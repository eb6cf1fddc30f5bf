"""`dynaspec_hf.generate`: speculative decoding with DySpec token trees, one target pass per tree.

transformers' assisted loop verifies one chain of drafts on the target's dynamic cache; this loop drafts a token
tree (`tree.TreeDrafter`; a chain is drafted by the assistant's own, CUDA-graph, chain drafter) and verifies all of
it in a single target pass on a static cache, replayed from a CUDA graph (`verification.py`).

Acceptance walks down the tree. Greedy: follow the child equal to the target's argmax, so the output is the
target's own greedy output. Sampling: recursive rejection sampling over the children, drawn without replacement
from q (Jeon et al., 2024; as in SpecInfer and DySpec), so each token follows the target's distribution exactly.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessorList

from .budget import RoundCosts, automatic_drafter
from .sampling import drafting_temperature, sampling_processors
from .tree import DEFAULT_TREE, TokenTree, TreeConfig, drafter_for
from .verification import tree_verifier

# Generation options that would change the target's distribution in ways this loop does not reproduce.
_UNSUPPORTED_OPTIONS = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "typical_p": 1.0,
    "min_p": None,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "watermarking_config": None,
    "stop_strings": None,
    "return_dict_in_generate": False,
    "output_scores": False,
    "output_logits": False,
}
_CUSTOM_MASK_FREE_ATTENTION = ("flash_attention_2", "flash_attention_3")


@dataclass
class GenerationStats:
    """What one `generate(..., return_stats=True)` call did, over the batch's rows. Per round (one target pass;
    the first also reads the prompt): the shape drafted, the draft tokens verified, the longest draft path, the
    drafts accepted. `costs`: the round costs an automatic shape was chosen by. `phase_seconds` (with
    `time_phases=True`): seconds spent in each part of the rounds, summed ("draft", "verify", "accept", and
    "commit", the loop's own bookkeeping)."""

    new_tokens: int = 0
    shapes: list[TreeConfig] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    costs: RoundCosts | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def target_passes(self) -> int:
        """Verification passes, the prompt's included: one per round."""
        return len(self.drafted)

    @property
    def drafted_tokens(self) -> int:
        """Draft tokens the target verified."""
        return sum(self.drafted)

    @property
    def tau(self) -> float:
        """Mean accepted length: new tokens per target pass (1.0 for plain decoding)."""
        return self.new_tokens / max(self.target_passes, 1)

    def record(self, shape: TreeConfig, tree: TokenTree, accepted: int) -> None:
        self.shapes.append(shape)
        self.drafted.append(len(tree) - 1)
        self.depths.append(max(tree.depths))
        self.accepted.append(accepted)


class PhaseClock:
    """Marks where each part of a round begins on the device's own timeline: CUDA events, which the host does not
    wait for, so timing the parts keeps the loop's overlap of host and device work (off CUDA, the host's clock).
    `add_to` waits for the device once and adds each part's spans up."""

    def __init__(self, device: torch.device):
        self.device, self.marks = device, []

    def mark(self, part: str | None) -> None:
        """Part `part` begins now (None: nothing that counts)."""
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
        else:
            event = time.perf_counter()
        self.marks.append((part, event))

    def add_to(self, totals: dict[str, float]) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        spans = defaultdict(float, totals)
        for (part, start), (_, end) in zip(self.marks, self.marks[1:]):
            if part is not None:
                spans[part] += start.elapsed_time(end) / 1e3 if self.device.type == "cuda" else end - start
        totals.update(spans)
        self.marks.clear()


@torch.no_grad()
def generate(
    target,
    assistant,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    tree: TreeConfig | None = None,
    compile: bool | dict | None = None,
    return_stats: bool = False,
    time_phases: bool = False,
    **kwargs,
) -> torch.LongTensor | tuple[torch.LongTensor, GenerationStats]:
    """The package's own speculative loop: `target.generate(input_ids, ...)`'s output, drafted by a DynaSpec
    `assistant` (a chain, or a DySpec token tree).

    Takes the usual generation options (`max_new_tokens`, `do_sample`, `temperature`, `top_k`, `top_p`,
    `eos_token_id`, `pad_token_id`, ...). Rows of a batch are decoded one after another (left padding is read
    from `attention_mask`) and returned as `target.generate` would: prompt, new tokens, right padding.

    `compile` runs the target's verification pass and the drafter's steps through `torch.compile` inside their CUDA
    graphs: by default (None) for a target on one GPU, as transformers compiles decoding on a static cache, unless
    the generation config sets `disable_compile`; True or a dict of `torch.compile` options forces it, False turns
    it off. The first generation compiles, which takes tens of seconds; prompts stay eager and the models
    themselves are not changed. Exact in float32; in bf16 the fused kernels round differently from eager ones, so a near tie may break
    the other way than in eager decoding.

    `tree` defaults to a chain of 6 drafts (`DEFAULT_TREE`); a `TreeConfig` with `num_nodes` drafts a DySpec tree,
    and `TreeConfig()` picks the chain or tree with the most expected tokens per second for this pair on this
    device (`budget.py`). With `return_stats=True` it returns `(sequences, GenerationStats)`; `time_phases=True` also
    times each part of the rounds into the stats (on CUDA with events, which leave the loop's pace as it is).
    """
    generation_config, model_kwargs = target._prepare_generation_config(generation_config, **kwargs)
    model_kwargs = {key: value for key, value in model_kwargs.items() if value is not None}
    model_kwargs.pop("use_cache", None)
    if model_kwargs:
        raise TypeError(f"dynaspec_hf.generate got unsupported arguments: {sorted(model_kwargs)}.")
    tree = tree or DEFAULT_TREE
    tree.validate()
    one_device = len(set(getattr(target, "hf_device_map", {}).values())) <= 1
    compile_options = compile_options_for(compile, generation_config, target.device, one_device)
    _check_supported(target, assistant, generation_config, input_ids, tree)

    eos = generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    max_new_tokens = generation_config.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = generation_config.max_length - input_ids.shape[1]
    do_sample = bool(generation_config.do_sample)
    processors = sampling_processors(generation_config) if do_sample else LogitsProcessorList()

    rows, stats = [], GenerationStats()
    clock = PhaseClock(target.device) if time_phases else None
    for row in range(input_ids.shape[0]):
        prompt = input_ids[row] if attention_mask is None else input_ids[row][attention_mask[row].bool()]
        rows.append(_generate_row(target, assistant, prompt, max_new_tokens, eos, do_sample, processors, tree,
                                  drafting_temperature(generation_config), compile_options, stats, clock))
    if clock is not None:
        clock.add_to(stats.phase_seconds)
    longest = max(len(r) for r in rows)
    if any(len(r) < longest for r in rows) and generation_config.pad_token_id is None and not eos:
        raise ValueError("Rows finished at different lengths: set `pad_token_id` (or `eos_token_id`) to pad them.")
    pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else (eos[0] if eos else 0)
    new = torch.full((len(rows), longest), pad, dtype=input_ids.dtype, device=input_ids.device)
    for row, tokens in enumerate(rows):
        new[row, : len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
    sequences = torch.cat([input_ids, new], dim=1)
    return (sequences, stats) if return_stats else sequences


def _generate_row(target, assistant, prompt, max_new_tokens, eos, do_sample, processors, shape: TreeConfig,
                  temperature, compile_options, stats: GenerationStats, clock: PhaseClock | None = None) -> list[int]:
    """New tokens for one unpadded prompt (counted into `stats`); `temperature` picks the assistant's schedule."""
    length = prompt.shape[0] + max_new_tokens
    verifier = tree_verifier(target, length + shape.verified_tokens, shape.verified_tokens, compile_options)
    if shape.is_automatic:
        drafter = automatic_drafter(target, assistant, verifier, length, shape, do_sample, processors, temperature,
                                    compile_options)
        stats.costs = drafter.costs
    else:
        drafter = drafter_for(assistant, length, shape, compile_options)
    assistant.check_token_ids(prompt)
    committed = prompt.to(target.device)
    produced: list[int] = []
    while len(produced) < max_new_tokens:
        drafted = drafter.shape  # an automatic drafter's changes as its rates come in
        budget = min(drafted.num_nodes, max(max_new_tokens - len(produced) - 1, 1))
        new, tree = speculative_round(drafter, verifier, committed, budget, do_sample, processors, temperature, clock)
        if clock is not None:
            clock.mark("commit")
        stats.record(drafted, tree, len(new) - 1)
        new = new[: max_new_tokens - len(produced)]
        assistant.check_token_ids(new)  # the target may emit a padding row the drafter cannot read
        stop = next((i for i, token in enumerate(new) if token in eos), None)
        new = new if stop is None else new[: stop + 1]
        produced += new
        committed = torch.cat([committed, torch.tensor(new, dtype=committed.dtype, device=committed.device)])
        if stop is not None:
            break
    if clock is not None:
        clock.mark(None)
    stats.new_tokens += len(produced)
    return produced


def speculative_round(drafter, verifier, committed: torch.Tensor, budget: int, do_sample: bool, processors,
                      temperature: float, clock: PhaseClock | None = None) -> tuple[list[int], TokenTree]:
    """One round: draft a tree of the drafter's shape with at most `budget` tokens after `committed`, verify it in
    one target pass, accept along it. Returns the new tokens (the accepted drafts, then the target's own) and the
    tree. `clock` marks where each part begins."""
    mark = clock.mark if clock is not None else lambda part: None
    shape = drafter.shape
    mark("draft")
    nodes = drafter.draft_nodes(committed.to(drafter.assistant.device), num_nodes=budget, do_sample=do_sample,
                                processors=processors, temperature=temperature)
    mark("verify")
    logits = verifier.verify(committed, nodes, shape.verified_tokens)
    tree = drafter.tree()  # read while the target's pass runs
    logits = logits[: len(tree)]
    mark("accept")
    new, trials = accept(tree, logits, verifier.sample(tree, logits, processors) if do_sample else None)
    drafter.update(trials)
    return new, tree


def accept(tree: TokenTree, logits: torch.Tensor, outcomes: tuple[list[int], list[int]] | None = None
           ) -> tuple[list[int], list[tuple[int, int | None]]]:
    """Walk the tree with the target's `logits`: the accepted draft tokens, then one token from the target.

    Greedy (`outcomes` None): follow the child equal to the target's argmax, read in one device sync. Sampling:
    `outcomes` are every node's recursive rejection sampling outcome (`TreeVerifier.sample`: the index of the
    accepted child or -1, and the node's token). Also returns the trials of the visited nodes with children: how
    many children each had and which was accepted (None: none), what later trees' children are valued by and the
    automatic shape's choice."""
    accepted, tokens = outcomes if outcomes is not None else (None, logits.argmax(-1).tolist())
    node, out, trials = 0, [], []
    while True:
        children = tree.children[node]
        if accepted is not None:
            index = accepted[node] if accepted[node] >= 0 else None
        else:
            index = next((i for i, c in enumerate(children) if tree.tokens[c] == tokens[node]), None)
        if children:
            trials.append((len(children), index))
        child = None if index is None else children[index]
        out.append(tokens[node])
        if child is None:
            return out, trials
        node = child


def compile_options_for(compile: bool | dict | None, generation_config: GenerationConfig, device: torch.device,
                        one_device: bool = True) -> dict | None:
    """`torch.compile` options of the loop's fixed-shape forwards, or None for eager kernels. By default they are
    compiled where they replay CUDA graphs: a target on one GPU (`one_device`), unless `disable_compile`."""
    if compile is None:
        compile = device.type == "cuda" and one_device and not getattr(generation_config, "disable_compile", False)
    if not isinstance(compile, (bool, dict)):
        raise TypeError(f"`compile` takes None, True, False or a dict of torch.compile options, got {compile!r}.")
    return ({} if compile else None) if isinstance(compile, bool) else compile


def _check_supported(target, assistant, generation_config, input_ids, tree: TreeConfig) -> None:
    if input_ids.ndim != 2:
        raise ValueError(f"`input_ids` must be [batch, length], got shape {tuple(input_ids.shape)}.")
    if assistant.config.vocab_size != target.config.get_text_config().vocab_size:
        raise ValueError(
            f"The assistant's vocabulary ({assistant.config.vocab_size}) differs from the target's "
            f"({target.config.get_text_config().vocab_size}): both must share one tokenizer."
        )
    for name, default in _UNSUPPORTED_OPTIONS.items():
        value = getattr(generation_config, name, default)
        if value is not None and value != default:
            raise ValueError(f"dynaspec_hf.generate does not support `{name}={value!r}` (tree drafting would change it).")
    for model in (target, assistant.drafter):
        implementation = model.config._attn_implementation
        if implementation in _CUSTOM_MASK_FREE_ATTENTION:
            raise ValueError(
                f"Tree verification needs a custom attention mask, which {implementation} cannot take: load "
                f"{type(model).__name__} with attn_implementation='sdpa' or 'eager'."
            )
    for model in (target, assistant.drafter):
        window = getattr(model.config.get_text_config(), "sliding_window", None)
        if window is not None and tree.max_depth >= window:
            raise ValueError(
                f"{type(model).__name__} attends within a sliding window of {window} tokens, and a tree of depth "
                f"{tree.max_depth} would let a node see ancestors beyond it (the tree mask applies the window by "
                f"cache slot): use `max_depth` below {window}."
            )
