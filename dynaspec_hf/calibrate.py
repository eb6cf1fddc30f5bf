"""Calibration: build clusters, train the router and choose the shortlist schedule for a target/drafter pair.

Training pairs come from the drafter run teacher-forced over texts (and, optionally, over the target's own greedy
continuations of them, which is what verification accepts). At each position t the router sees what drafting
will have at that point, `(h_{t-1}, embed(x_t))`, and learns where the *target's* next token lies: by default the
probability mass the target puts on each cluster (soft cross-entropy), which serves sampling as well as greedy
decoding; `objective="argmax"` learns only the cluster of the target's greedy token.

Calibration also chooses, for every shortlist size, how to split it between the frequency core, routed clusters
and context tokens (the text's most recent distinct tokens), twice: by held-out greedy acceptance (the drafter's
best shortlist token is the target's) for greedy decoding, and by held-out sampled acceptance (the overlap
sum_x min(p(x), q_S(x)) of the target's distribution p with the drafter's q renormalized on the shortlist S, at
T = 1) for sampling. The calibrated assistant drafts with the first; the second becomes its sampling band
(`DynaSpecConfig.temperature_bands`), and the tail estimate (`DynaSpecConfig.sampling_tail` at the weight and
`sampling_tail_rank` with the best held-out sampled acceptance) is switched on, only where end-to-end τ at T = 1
confirms them. It also reports how much target mass the router's clusters cover against the best possible clusters
of the same number.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .clusters import TokenClusters, _frequency_order
from .compat import unrollable_window
from .configuration_dynaspec import Shortlist
from .context_tokens import recent_distinct_tokens
from .eager_draft import rollback_cache
from .measure import measure_generation
from .modeling_dynaspec import DynaSpecAssistant
from .router import ClusterRouter


_FEATURE_FIELDS = ("previous_hidden", "token_embedding", "hidden", "target_next", "target_mass", "domain", "token",
                   "sequence", "target_top_ids", "target_top_probs")
_MAX_POSITIONS = 1 << 24
OBJECTIVES = ("mass", "argmax")
SPLIT_FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # routed share of a shortlist's clusters tried by calibration
CONTEXT_SIZES = (0, 128, 256)  # context-token slots tried by calibration
TOP_TOKENS = 512  # the target's most probable tokens kept per held-out row, for sampled acceptance
TAIL_WEIGHTS = (0.0, 0.1, 0.3, 1.0, 2.0)  # sampling-tail weights calibration compares by exact sampled acceptance
TAIL_RANKS = (0, 16, 32)  # the tail's estimates: routed mass by corpus counts (0), or rank-r copies of the head
CRITERIA = ("acceptance", "sampled_acceptance")  # what a split is chosen by: greedy, or sampled (T = 1)
SPLIT_RULES = ("worst", "mean")  # over the held-out domains: the worst one's score (the mean breaks ties), or the mean
_SCORES = ("recall", *CRITERIA)  # the columns shortlist_curves scores every shortlist by


@dataclass
class RouterFeatures:
    """One row per (context, next position): what the router and head see, and what the target said.

    Rows are ordered by (sequence, position), so the result does not depend on batching or process count.
    """

    previous_hidden: torch.Tensor  # [N, d] drafter hidden state at t-1
    token_embedding: torch.Tensor  # [N, d] drafter embedding of x_t
    hidden: torch.Tensor  # [N, d] drafter hidden state at t (what the head scores)
    target_next: torch.Tensor  # [N] the target's greedy next token
    target_mass: torch.Tensor  # [N, C] the target's next-token probability per cluster ([N, 0] without clusters)
    domain: torch.Tensor  # [N] index into `domains`
    token: torch.Tensor  # [N] x_t: with `sequence`, the text before each row (its context tokens)
    sequence: torch.Tensor  # [N] which input sequence the row comes from
    target_top_ids: torch.Tensor  # [N, m] the target's m most probable next tokens (m = 0: not collected)
    target_top_probs: torch.Tensor  # [N, m] their probabilities (temperature 1)
    domains: list[str] = field(default_factory=list)

    def __len__(self):
        return self.target_next.numel()

    def select(self, rows: torch.Tensor) -> "RouterFeatures":
        """The rows `rows`. (`context_before` of a selection sees only the selected rows of each sequence.)"""
        return RouterFeatures(*(getattr(self, name)[rows] for name in _FEATURE_FIELDS), domains=self.domains)

    def context_before(self, rows: torch.Tensor, size: int, vocab_size: int, device=None) -> torch.Tensor:
        """`[n, size]` the most recent distinct tokens of each row's text up to x_t, what drafting at that
        position holds as context tokens (the sequence's very first token, which has no row, is not counted)."""
        first = torch.searchsorted(self.sequence, self.sequence[rows])  # rows are ordered by sequence
        width = int((rows - first).max()) + 1 if len(rows) else 1
        window = rows[:, None] - torch.arange(width - 1, -1, -1)[None]
        ids = self.token[window.clamp(min=0)].masked_fill(window < first[:, None], -1)
        return recent_distinct_tokens(ids.to(device), size, vocab_size)


@torch.no_grad()
def collect_features(
    target,
    drafter,
    sequences: list[torch.Tensor],
    domains: list[str] | None = None,
    *,
    continuation_tokens: int = 0,
    token_cluster: torch.Tensor | None = None,
    top_tokens: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    cache_file: str | Path | None = None,
    save_every: int = 16,
) -> RouterFeatures:
    """Run the drafter (teacher-forced) and the target over token sequences; keep every position t >= 1.

    With `token_cluster` (`[vocab]` cluster of each token), the target's next-token distribution (temperature 1)
    is kept as its mass per cluster; with `top_tokens`, its `top_tokens` most probable tokens and their
    probabilities are kept too (what sampled acceptance is measured on). With `continuation_tokens > 0`, each
    sequence's first half is extended by the
    target's greedy continuation, so the pairs also cover the target's own text. With `cache_file`, the rows of
    every `save_every` batches are saved to a part file next to it, and a later call with the same inputs resumes
    from them.
    """
    if not sequences:
        raise ValueError("No token sequences to calibrate on.")
    device = next(drafter.parameters()).device
    # Under `accelerate launch` / torchrun each process takes every n-th batch (gloo for CPU models, NCCL on GPUs).
    state = PartialState(cpu=device.type == "cpu")
    domains = domains or ["all"] * len(sequences)
    names = sorted(set(domains))
    rows = {key: [] for key in (*_FEATURE_FIELDS, "key")}
    finished, part_files = 0, []  # batches done; cache files, each with the rows of the batches since the last
    if cache_file is not None:
        cache_file = Path(cache_file)
        if state.num_processes > 1:
            cache_file = cache_file.with_name(f"{cache_file.stem}.rank{state.process_index}{cache_file.suffix}")
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        if cache_file.exists():
            index = torch.load(cache_file)
            if index.get("fields") == sorted(rows):  # a cache of other fields (an older version) is collected again
                finished, part_files = index["batches"], index["parts"]
                for name in part_files:
                    for key, value in torch.load(cache_file.with_name(name)).items():
                        rows[key].append(value)
    saved = len(rows["key"])  # row chunks already in part files
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # batch similar lengths together
    starts = range(0, len(order), batch_size)[state.process_index :: state.num_processes]
    show = progress and state.is_main_process
    for number, start in enumerate(tqdm(starts, desc="collecting router features", disable=not show)):
        if number < finished:
            continue
        chosen = order[start : start + batch_size]
        batch = [_with_continuation(target, sequences[i], continuation_tokens) for i in chosen]
        length = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), length, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = sequence.to(device)
            mask[row, : len(sequence)] = 1
        hidden = drafter.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = target(input_ids=ids.to(target.device), attention_mask=mask.to(target.device)).logits
        logits = logits[..., : drafter.get_output_embeddings().weight.shape[0]]  # a padded target's extra rows
        keep = mask.bool()
        keep[:, 0] = False  # position 0 has no previous hidden state
        kept_logits = logits[keep.to(logits.device)]
        rows["previous_hidden"].append(hidden[:, :-1][keep[:, 1:]].half().cpu())
        rows["token_embedding"].append(drafter.get_input_embeddings()(ids)[keep].half().cpu())
        rows["hidden"].append(hidden[keep].half().cpu())
        rows["target_next"].append(kept_logits.argmax(-1).cpu())
        rows["target_mass"].append(_cluster_mass(kept_logits, token_cluster).half().cpu())
        top = kept_logits.float().softmax(-1).topk(min(top_tokens, kept_logits.shape[-1]), dim=-1)
        rows["target_top_ids"].append(top.indices.int().cpu())
        rows["target_top_probs"].append(top.values.half().cpu())
        domain_ids = torch.tensor([names.index(domains[i]) for i in chosen], device=device)
        rows["domain"].append(domain_ids[:, None].expand_as(ids)[keep].cpu())
        rows["token"].append(ids[keep].cpu())
        rows["sequence"].append(torch.tensor(chosen, device=device)[:, None].expand_as(ids)[keep].cpu())
        # (sequence, position): the final order, whatever the batching or the number of processes
        sequence_ids = torch.tensor(chosen, device=device)[:, None] * _MAX_POSITIONS
        rows["key"].append((sequence_ids + torch.arange(length, device=device))[keep].cpu())
        if cache_file is not None and (number % save_every == save_every - 1 or number == len(starts) - 1):
            part_files.append(f"{cache_file.stem}.part{len(part_files)}{cache_file.suffix}")
            new_rows = {key: torch.cat(value[saved:]) for key, value in rows.items()}
            torch.save(new_rows, cache_file.with_name(part_files[-1]))
            saved = len(rows["key"])
            partial = cache_file.with_name(cache_file.name + ".partial")
            torch.save({"batches": number + 1, "parts": part_files, "fields": sorted(rows)}, partial)
            os.replace(partial, cache_file)  # atomic: the index names only part files written in full
    merged = {key: torch.cat(value) if value else torch.empty(0) for key, value in rows.items()}
    if state.num_processes > 1:
        parts = [part for part in gather_object([merged]) if part["key"].numel()]
        merged = {key: torch.cat([part[key] for part in parts]) for key in merged}
    order = merged.pop("key").argsort()
    return RouterFeatures(**{key: value[order] for key, value in merged.items()}, domains=names)


def _cluster_mass(logits: torch.Tensor, token_cluster: torch.Tensor | None) -> torch.Tensor:
    """`[n, vocab]` logits -> `[n, C]` probability per cluster (`[n, 0]` without clusters)."""
    if token_cluster is None:
        return logits.new_zeros(logits.shape[0], 0)
    token_cluster = token_cluster.to(logits.device)
    mass = logits.new_zeros(logits.shape[0], int(token_cluster.max()) + 1, dtype=torch.float32)
    return mass.index_add_(1, token_cluster, logits.float().softmax(-1))


def _with_continuation(target, sequence: torch.Tensor, tokens: int) -> torch.Tensor:
    if tokens <= 0 or len(sequence) < 4:
        return sequence
    prompt = sequence[: len(sequence) // 2][None].to(target.device)
    return target.generate(prompt, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens)[0].cpu()


def train_router(
    features: RouterFeatures,
    token_cluster: torch.Tensor,
    num_clusters: int,
    router_hidden_size: int = 256,
    *,
    objective: str = "mass",
    epochs: int = 4,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    device=None,
    progress: bool = True,
) -> ClusterRouter:
    """AdamW on router scores against the target: soft cross-entropy with its mass per cluster (`"mass"`), or
    cross-entropy with the cluster of its greedy next token (`"argmax"`). Features move to `device` once."""
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown router objective {objective!r}; choose one of {OBJECTIVES}.")
    if len(features) == 0:
        raise ValueError("No router training pairs: the texts are too short (each needs at least 2 tokens).")
    if objective == "mass" and features.target_mass.shape[1] != num_clusters:
        raise ValueError(f"The 'mass' objective needs the target's mass over the {num_clusters} clusters; these "
                         f"features hold {features.target_mass.shape[1]} (collect them with `token_cluster`).")
    torch.manual_seed(seed)
    hidden_size, embed_size = features.previous_hidden.shape[1], features.token_embedding.shape[1]
    device = torch.device(device) if device is not None else features.previous_hidden.device
    router = ClusterRouter(hidden_size, embed_size, num_clusters, router_hidden_size).to(device)
    optimizer = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=0.01)
    previous, embedded = features.previous_hidden.to(device), features.token_embedding.to(device)
    if objective == "mass":
        labels = features.target_mass.to(device)
    else:
        labels = token_cluster.to(features.target_next.device)[features.target_next].to(device)
    steps = epochs * math.ceil(len(features) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    show = progress and PartialState().is_main_process
    with tqdm(total=steps, desc="training router", disable=not show) as bar:
        for _ in range(epochs):
            for rows in torch.randperm(len(features), generator=generator).split(batch_size):
                rows = rows.to(previous.device)
                scores = router(previous[rows].float(), embedded[rows].float())
                loss = F.cross_entropy(scores, labels[rows].float() if objective == "mass" else labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return router.eval()


@torch.no_grad()
def shortlist_curves(
    assistant: DynaSpecAssistant,
    features: RouterFeatures,
    static_order: torch.Tensor,
    ks: list[int],
    chunk: int = 256,
    context_sizes: tuple[int, ...] = CONTEXT_SIZES,
) -> dict:
    """Held-out recall and greedy acceptance of routed vs. static shortlists of equal size, per domain; the
    target mass covered by the routed clusters against the best k clusters; and every split of k clusters'
    worth of rows between the frequency core, routed clusters and context tokens (`SPLIT_FRACTIONS`,
    `context_sizes`, cores the head holds).

    recall: the target's next token is in the shortlist. acceptance: the drafter's best shortlist token *is* the
    target's next token (what greedy verification accepts at one position). sampled_acceptance (when the features
    hold the target's top tokens): sum_x min(p(x), q_S(x)) over those tokens, with p the target's distribution and
    q_S the drafter's renormalized on the shortlist, at T = 1 (what speculative sampling accepts at one position);
    `top_tokens_mass` says how much of p those tokens hold, the most the sum can miss.
    """
    config, device = assistant.config, assistant.device
    static_rank = torch.empty_like(static_order)
    static_rank[static_order] = torch.arange(static_order.numel())
    static_rank = static_rank.to(device)
    cluster_of = _token_cluster(assistant.lm_head.cluster_token_ids.cpu(), config.drafter_vocab_size).to(device)
    has_mass = features.target_mass.shape[1] == config.num_clusters
    splits = {k: _splits(k, config.cluster_size, assistant.lm_head.core_size, context_sizes) for k in ks}
    rows = {"routed": {k: [] for k in ks}, "static": {k: [] for k in ks}}
    split_rows = {(k, split): [] for k in ks for split in splits[k]}
    mass_rows = {k: [] for k in ks}
    full_accept, top_mass = [], []
    has_top = features.target_top_ids.shape[1] > 0
    # the drafter's vocabulary: a padded target's extra rows are never drafted
    vocab_size, most_context = config.drafter_vocab_size, max(context_sizes, default=0)
    for start in range(0, len(features), chunk):
        chunk_rows = torch.arange(start, min(start + chunk, len(features)))
        part = features.select(chunk_rows)
        recent = features.context_before(chunk_rows, most_context, vocab_size, device)  # most recent first
        in_context = {}
        for size in context_sizes:
            ids = recent[:, :size]
            marks = torch.zeros(len(part), vocab_size + 1, dtype=torch.bool, device=device)
            in_context[size] = marks.scatter_(1, ids.masked_fill(ids < 0, vocab_size), True)[:, :vocab_size]
        target = part.target_next.to(device)
        scores = assistant.router(
            part.previous_hidden.to(device, assistant.dtype), part.token_embedding.to(device, assistant.dtype)
        )
        cluster_rank = scores.argsort(dim=-1, descending=True).argsort(dim=-1)  # [n, C] rank of each cluster
        token_rank = cluster_rank.gather(1, cluster_of[None].expand(len(part), -1))  # [n, V]
        logits = assistant.full_vocabulary_logits(part.hidden.to(device, assistant.dtype))[:, :vocab_size].float()
        mass = part.target_mass.to(device).float() if has_mass else None
        top_ids, top_p = part.target_top_ids.to(device).long(), part.target_top_probs.to(device).float()
        top_mass.append(top_p.sum(-1).cpu())

        def hit_and_accept(allowed):
            """[n, 2 or 3]: recall, greedy acceptance (and sampled acceptance) with the shortlist `allowed`."""
            allowed = allowed.expand(len(part), -1)
            masked = logits.masked_fill(~allowed, float("-inf"))
            columns = [allowed.gather(1, target[:, None])[:, 0].float(), (masked.argmax(-1) == target).float()]
            if has_top:
                q = (logits.gather(1, top_ids) - masked.logsumexp(-1, keepdim=True)).exp() * allowed.gather(1, top_ids)
                columns.append(torch.minimum(q, top_p).sum(-1))
            return torch.stack(columns, 1).cpu()

        full_accept.append(hit_and_accept(torch.ones(1, vocab_size, dtype=torch.bool, device=device)))

        for k in ks:
            rows["routed"][k].append(hit_and_accept(token_rank < k))
            rows["static"][k].append(hit_and_accept((static_rank < k * config.cluster_size)[None]))
            for routed, core, context in splits[k]:
                allowed = (token_rank < routed) | (static_rank < core)[None] | in_context[context]
                split_rows[k, (routed, core, context)].append(hit_and_accept(allowed))
            if has_mass:
                covered = mass.masked_fill(cluster_rank >= k, 0).sum(-1)
                best = mass.topk(min(k, mass.shape[1]), dim=-1).values.sum(-1)
                mass_rows[k].append(torch.stack([covered, best], 1).cpu())
    full_accept, top_mass = torch.cat(full_accept), torch.cat(top_mass)
    curves = {"cluster_size": config.cluster_size, "vocab_size": vocab_size, "ks": ks, "domains": {}}
    for d, name in [(None, "all")] + list(enumerate(features.domains)):
        in_domain = torch.ones(len(features), dtype=torch.bool) if d is None else features.domain == d
        if not in_domain.any():
            continue
        entry = {"pairs": int(in_domain.sum()), "full_acceptance": float(full_accept[in_domain, 1].mean())}
        if has_top:
            entry["full_sampled_acceptance"] = float(full_accept[in_domain, 2].mean())
            entry["top_tokens_mass"] = float(top_mass[in_domain].mean())
        for method in ("routed", "static"):
            stats = {k: torch.cat(rows[method][k])[in_domain] for k in ks}
            entry[method] = {name: [float(stats[k][:, column].mean()) for k in ks]
                             for column, name in enumerate(_SCORES[: 3 if has_top else 2])}
        if has_mass:
            covered = {k: torch.cat(mass_rows[k])[in_domain] for k in ks}
            entry["routed"]["mass"] = [float(covered[k][:, 0].mean()) for k in ks]
            entry["routed"]["best_mass"] = [float(covered[k][:, 1].mean()) for k in ks]
        entry["splits"] = {
            str(k): [dict(routed=routed, core=core, context=context,
                          **{name: float(stats[:, column].mean())
                             for column, name in enumerate(_SCORES[: stats.shape[1]])})
                     for routed, core, context in splits[k]
                     for stats in [torch.cat(split_rows[k, (routed, core, context)])[in_domain]]]
            for k in ks
        }
        curves["domains"][name] = entry
    return curves


def _splits(k: int, cluster_size: int, core_size: int, context_sizes=CONTEXT_SIZES) -> list[tuple[int, int, int]]:
    """(routed clusters, core tokens, context tokens) that together hold k clusters' worth of rows, with at least
    one routed cluster and a core the head holds."""
    rows, out = k * cluster_size, []
    for context in context_sizes:
        for fraction in SPLIT_FRACTIONS:
            routed = max(1, int((rows - context) / cluster_size * fraction))
            core = rows - context - routed * cluster_size
            if 0 <= core <= core_size and (routed, core, context) not in out:
                out.append((routed, core, context))
    return out


def best_splits(curves: dict, contexts=None, criterion: str = "acceptance", rule: str = "worst"
                ) -> dict[str, dict[str, int]]:
    """Per shortlist size k, the split with the highest held-out `criterion` (`CRITERIA`: greedy or sampled
    acceptance), among those with a context size in `contexts` (None: any): `{str(k): {"k": routed clusters,
    "core": core tokens, "context": context tokens}}`, what `set_schedule` takes (`k_by_position=[k]`,
    `core_by_position=[core]`, `num_context_tokens=context`).

    `rule` (`SPLIT_RULES`): "worst" scores a split by its worst held-out domain, so no domain the calibration
    texts hold is given up for the others, and breaks ties by the mean over every domain; "mean" by the mean alone.
    Remaining ties go to the split routing more, then to the one with fewer context tokens."""
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown split criterion {criterion!r}; choose one of {CRITERIA}.")
    if rule not in SPLIT_RULES:
        raise ValueError(f"Unknown split rule {rule!r}; choose one of {SPLIT_RULES}.")
    domains = [entry for name, entry in curves["domains"].items() if name != "all"] or [curves["domains"]["all"]]
    chosen = {}
    for k, candidates in curves["domains"]["all"]["splits"].items():
        if criterion not in candidates[0]:
            raise ValueError(f"These curves have no {criterion!r}: collect the held-out features with `top_tokens`.")

        def score(index: int) -> tuple:
            split = candidates[index]
            worst = [min(round(d["splits"][k][index][criterion], 6) for d in domains)] if rule == "worst" else []
            return (*worst, round(split[criterion], 6), split["routed"], -split["context"])

        allowed = [i for i, c in enumerate(candidates) if contexts is None or c["context"] in contexts]
        best = candidates[max(allowed, key=score)]
        chosen[k] = {"k": best["routed"], "core": best["core"], "context": best["context"]}
    return chosen


def choose_schedule(acceptance: list[float], full_acceptance: float, ks: list[int], positions: int,
                    target_retention: float = 0.98) -> list[int]:
    """Position-aware shortlist sizes: the smallest k at each draft position that keeps the expected loss small.

    Position i is only reached when the i earlier drafts were accepted (probability about `full_acceptance ** i`),
    so a shortfall there costs less: k_i is the smallest k with
    `full_acceptance ** i * (full_acceptance - acceptance(k)) <= (1 - target_retention) * full_acceptance`.
    """
    schedule = []
    for position in range(positions):
        reach = full_acceptance**position
        allowed = (1 - target_retention) * full_acceptance
        fits = [k for k, a in zip(ks, acceptance) if reach * (full_acceptance - a) <= allowed]
        schedule.append(min(fits) if fits else max(ks))
    return schedule


def _token_cluster(cluster_token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[vocab] cluster index of every token."""
    cluster_of = torch.empty(vocab_size, dtype=torch.long)
    valid = cluster_token_ids >= 0
    cluster_of[cluster_token_ids[valid]] = torch.arange(cluster_token_ids.shape[0])[:, None].expand_as(
        cluster_token_ids)[valid]
    return cluster_of


@dataclass
class CalibrationConfig:
    """What `calibrate` does, in one place; its report keeps it, so an assistant says how it was calibrated."""

    num_clusters: int  # token clusters the vocabulary is partitioned into
    core_size: int = 0  # frequency-ranked tokens kept as an always-available core
    router_hidden_size: int = 256  # the router MLP's width (0: one linear layer)
    objective: str = "mass"  # what the router learns (`OBJECTIVES`; see `train_router`)
    epochs: int = 4
    continuation_tokens: int = 0  # target-greedy tokens appended to each sequence before collecting features
    heldout_fraction: float = 0.1  # sequences kept out of training, for the report and every choice
    shortlist_fraction: float = 1 / 16  # the size the assistant drafts with, as a share of the vocabulary
    positions: int = 6  # draft positions of the position-aware schedule
    target_retention: float = 0.98  # the acceptance share the position-aware schedule keeps
    context_sizes: tuple[int, ...] = CONTEXT_SIZES  # context-token slots tried
    top_tokens: int = TOP_TOKENS  # the target's most probable tokens kept per held-out row (sampled acceptance)
    check_prompts: int = 32  # held-out prompts of the end-to-end τ check at T = 1
    check_tokens: int = 128  # new tokens per check prompt
    tail_weights: tuple[float, ...] = TAIL_WEIGHTS  # sampling-tail weights compared
    tail_ranks: tuple[int, ...] = TAIL_RANKS  # sampling-tail ranks compared (above the drafter's width: skipped)
    seed: int = 0


def calibrate(
    target,
    drafter,
    sequences: list[torch.Tensor],
    config: CalibrationConfig | None = None,
    *,
    domains: list[str] | None = None,
    frequency_counts: torch.Tensor | None = None,
    features: RouterFeatures | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **options,
) -> tuple[DynaSpecAssistant, dict]:
    """Turn a target, a drafter and token sequences into a calibrated `DynaSpecAssistant` and a report.

    `frequency_counts` (token counts of a corpus, FR-Spec's source) ranks the static baseline and the optional
    frequency core; it defaults to the counts of `sequences`. Held-out sequences (a seeded split) are only used
    for the report and the core/routed/context splits of every size (`report["splits"]` by greedy acceptance,
    `report["sampled_splits"]` by sampled acceptance over the target's `top_tokens` most probable tokens; the
    context sizes tried are `context_sizes`). The assistant drafts greedily with the split of the size nearest
    `shortlist_fraction` of the vocabulary; the sampled split becomes its sampling band, and the tail is switched
    on, if end-to-end τ at T = 1 on `check_prompts` held-out prompts (`check_tokens` new tokens each) confirms
    them (`check_sampling_schedule`; `report["sampling_check"]`). The router learns `objective` (see
    `train_router`). With
    `cache_dir`, collected features are kept there (keyed by the caller: use one folder per target/drafter/data
    combination) so an interrupted run resumes. `options` are `CalibrationConfig` fields, over `config`'s.
    """
    config = CalibrationConfig(**options) if config is None else replace(config, **options)
    num_clusters, seed, objective = config.num_clusters, config.seed, config.objective
    vocab_size = drafter.get_output_embeddings().weight.shape[0]
    target_vocab = target.config.get_text_config().vocab_size
    if target_vocab < vocab_size:
        raise ValueError(f"The target's vocabulary has {target_vocab} tokens but the drafter's has {vocab_size}: "
                         f"they do not share a tokenizer.")
    domains = domains or ["all"] * len(sequences)
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(len(sequences), generator=generator).tolist()
    heldout_count = max(1, int(round(config.heldout_fraction * len(sequences)))) if len(sequences) > 1 else 0
    heldout, train = permutation[:heldout_count], permutation[heldout_count:]
    if frequency_counts is None:
        frequency_counts = torch.bincount(torch.cat([sequences[i] for i in train]).long(), minlength=vocab_size)
    clusters = TokenClusters.from_embeddings(drafter.get_output_embeddings().weight, num_clusters, seed=seed)
    clusters = clusters.with_core(frequency_counts, config.core_size)
    token_cluster = _token_cluster(clusters.cluster_token_ids, vocab_size)
    if features is None:
        features = collect_features(
            target, drafter, [sequences[i] for i in train], [domains[i] for i in train],
            continuation_tokens=config.continuation_tokens, token_cluster=token_cluster, progress=progress,
            cache_file=None if cache_dir is None else Path(cache_dir) / "train_features.pt",
        )
    router = train_router(features, token_cluster, num_clusters, config.router_hidden_size, objective=objective,
                          epochs=config.epochs, seed=seed, device=next(drafter.parameters()).device, progress=progress)
    assistant = DynaSpecAssistant.from_drafter(drafter, clusters, router.to(next(drafter.parameters()).dtype),
                                               vocab_size=target_vocab)  # may pad the drafter's
    assistant.lm_head.set_token_shares(frequency_counts)
    text_config = target.config.get_text_config()
    report = {"target": {"name_or_path": target.config.name_or_path or None,
                         "revision": getattr(target.config, "_commit_hash", None),
                         "vocab_size": text_config.vocab_size},
              "train_pairs": len(features), "objective": objective, "config": asdict(config)}
    assistant.calibration_report = report
    if heldout:
        heldout_features = collect_features(
            target, drafter, [sequences[i] for i in heldout], [domains[i] for i in heldout],
            continuation_tokens=config.continuation_tokens, token_cluster=token_cluster, top_tokens=config.top_tokens,
            progress=progress, cache_file=None if cache_dir is None else Path(cache_dir) / "heldout_features.pt",
        )
        ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k < num_clusters} | {num_clusters})
        static_order = _frequency_order(torch.as_tensor(frequency_counts).double())
        curves = shortlist_curves(assistant, heldout_features, static_order, ks, context_sizes=config.context_sizes)
        overall = curves["domains"]["all"]
        position_aware = choose_schedule(overall["routed"]["acceptance"], overall["full_acceptance"], ks,
                                         config.positions, config.target_retention)
        splits, sampled_splits = best_splits(curves), best_splits(curves, criterion="sampled_acceptance")
        by_mean = {"splits": best_splits(curves, rule="mean"),  # what the mean alone would choose, for the report
                   "sampled_splits": best_splits(curves, criterion="sampled_acceptance", rule="mean")}
        size = str(min(ks, key=lambda k: abs(k - config.shortlist_fraction * num_clusters)))
        check = check_sampling_schedule(target, assistant, splits[size], sampled_splits[size],
                                        [sequences[i] for i in heldout[: config.check_prompts]], config.check_tokens,
                                        tail_weights=config.tail_weights, tail_ranks=config.tail_ranks)
        report.update(heldout_pairs=len(heldout_features), curves=curves, k_by_position=position_aware,
                      splits=splits, sampled_splits=sampled_splits, splits_by_mean=by_mean, sampling_check=check,
                      heldout=heldout)
    return assistant, report


def split_schedule(split: dict) -> dict:
    """`set_schedule` arguments for a split of `best_splits`."""
    return dict(k_by_position=[split["k"]], core_by_position=[split["core"]], num_context_tokens=split["context"])


@torch.no_grad()
def check_sampling_schedule(target, assistant: DynaSpecAssistant, greedy_split: dict, sampled_split: dict,
                            sequences: list[torch.Tensor], new_tokens: int, seed: int = 0,
                            tail_weights: tuple[float, ...] = TAIL_WEIGHTS,
                            tail_ranks: tuple[int, ...] = TAIL_RANKS) -> dict:
    """Set `assistant`'s schedule to `greedy_split` and choose what sampling drafts with, by end-to-end τ at T = 1
    from the first halves of held-out `sequences` (the same seed for every measurement):

    1. `sampled_split` as the band for every temperature, when it differs, if its τ is at least that of drafting
       with `greedy_split` when sampling too (a tolerance of 1 % kept a band that lost 0.8 points of recovery on
       the benchmark: BENCHMARKS.md);
    2. then the tail (`sampling_tail`, `sampling_tail_rank`) at the weight among `tail_weights` and the rank among
       `tail_ranks` with the highest exact sampled acceptance on `sequences` (`sampled_acceptance`; rank 0's in
       `check["acceptance"]`, every rank's tail in `check["acceptance_by_rank"]`; ties go to the lower weight,
       then the lower rank), if it raises τ above that of the schedule of step 1 (the tail costs O(vocabulary)
       work per draft step, so a tie leaves it off).
    """
    assistant.set_schedule(**split_schedule(greedy_split), temperature_bands=[], sampling_tail=0.0,
                           sampling_tail_rank=0)
    prompts = [s[: max(len(s) // 2, 1)] for s in sequences]
    if not prompts:
        return {"kept": False, "tail_kept": False, "reason": "no prompts"}
    longest = max(len(p) for p in prompts) + new_tokens
    window = unrollable_window(rollback_cache(assistant.config.drafter_config), longest)
    if window is not None:  # the stock loop refuses such drafts (check_rollback_possible): nothing to measure
        return {"kept": False, "tail_kept": False,
                "reason": f"transformers {transformers.__version__} cannot roll back the drafter's {window}-token "
                          f"sliding window after the {longest} positions of a check"}
    options = dict(max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)

    def tau() -> float:
        torch.manual_seed(seed)
        return measure_generation(target, [p.to(target.device) for p in prompts], assistant, **options)["tau"]

    check = {"prompts": len(prompts), "new_tokens": new_tokens, "tau_greedy_split": tau()}
    if sampled_split == greedy_split:
        check.update(kept=False, reason="the sampled split is the greedy one")
    else:
        band = [dict(max_temperature=None, **split_schedule(sampled_split))]
        assistant.set_schedule(temperature_bands=band)
        check["tau_sampled_split"] = tau()
        check["kept"] = check["tau_sampled_split"] >= check["tau_greedy_split"]
        assistant.set_schedule(temperature_bands=band if check["kept"] else [])
    without_tail = check["tau_sampled_split"] if check["kept"] else check["tau_greedy_split"]
    by_rank = {}
    for rank in sorted({0, *(r for r in tail_ranks if r <= assistant.config.hidden_size)}):
        assistant.set_schedule(sampling_tail_rank=rank)
        by_rank[rank] = sampled_acceptance(target, assistant, sequences, tail_weights)
    check["acceptance"] = by_rank[0]
    check["acceptance_by_rank"] = {str(rank): acceptance["tail"] for rank, acceptance in by_rank.items()}
    rank, weight = max(((r, w) for r in by_rank for w in tail_weights),
                       key=lambda rw: (by_rank[rw[0]]["tail"][str(rw[1])], -rw[1], -rw[0]))
    check.update(tail_weight=weight, tail_rank=rank, tail_kept=False)
    if weight > 0:
        assistant.set_schedule(sampling_tail=weight, sampling_tail_rank=rank)
        check["tau_tail"] = tau()
        check["tail_kept"] = check["tau_tail"] > without_tail
    kept = check["tail_kept"]
    assistant.set_schedule(sampling_tail=weight if kept else 0.0, sampling_tail_rank=rank if kept else 0)
    return check


@torch.no_grad()
def sampled_acceptance(target, assistant: DynaSpecAssistant, sequences: list[torch.Tensor],
                       tail_weights: tuple[float, ...] = TAIL_WEIGHTS, temperature: float = 1.0) -> dict:
    """Exact per-token sampled acceptance, sum_x min(p(x), q(x)) over the whole vocabulary (what speculative
    sampling accepts at one position), teacher-forced over `sequences` at `temperature`, for q:

    - `tail`: drafting with the assistant's sampling schedule (draft position 0), at each of `tail_weights`;
    - `full`: the drafter's full head;
    - `best_shortlist`: the full head renormalized on the best possible shortlist of the schedule's size (the
      target's own most probable tokens), which no routing can beat without a tail.

    Also `target_mass_in_shortlist` (the schedule's) and `target_mass_in_best_shortlist`. Means over positions.
    """
    device, vocab_size = assistant.device, assistant.config.vocab_size
    core, k, context, _ = assistant.config.shortlist_at(0, temperature)
    size = min(core + k * assistant.config.cluster_size + context, vocab_size)
    index = assistant.lm_head.index()
    sums, positions = {}, 0

    def add(name, values):
        sums[name] = sums.get(name, 0.0) + float(values.sum())

    for sequence in sequences:
        ids = sequence.to(device).long()
        if ids.numel() < 3:
            continue
        # row i: the drafter at token ids[i + 1] (router input: the state at ids[i]) predicts ids[i + 2]
        logits = target(input_ids=ids[None].to(target.device)).logits[0, 1:-1].to(device).float()
        p = (logits / temperature).softmax(-1)
        states = assistant.drafter(input_ids=ids[None]).last_hidden_state[0]
        hidden, previous, tokens = states[1:-1], states[:-2], ids[1:-1]
        steps = torch.arange(ids.numel(), device=device)
        later = steps[None] > steps[1:-1, None]  # row i's text is ids[: i + 2]
        context_ids = assistant.context_tokens(ids[None].expand(len(tokens), -1).masked_fill(later, -1))
        cluster_ids, log_mass = assistant.routing(previous, tokens, k, tail=1.0)  # one router pass for every weight
        for weight in tail_weights:  # the step's own head, at each weight (no schedule change, no graph released)
            tail = weight if 0 < k < assistant.config.num_clusters else 0.0  # as `shortlist_at`: routed clusters only
            q = assistant.draft_step(hidden, previous, tokens, Shortlist(core, k, context, tail), index, context_ids,
                                     routing=(cluster_ids, log_mass))
            q = (q / temperature).softmax(-1)
            add(f"tail/{weight}", torch.minimum(p, q).sum(-1))
            if weight == 0:
                add("target_mass_in_shortlist", (p * (q > 0)).sum(-1))
        full = assistant.full_vocabulary_logits(hidden).float() / temperature
        add("full", torch.minimum(p, full.softmax(-1)).sum(-1))
        best = torch.zeros_like(p, dtype=torch.bool).scatter_(1, p.topk(size, dim=-1).indices, True)
        add("best_shortlist", torch.minimum(p, full.masked_fill(~best, float("-inf")).softmax(-1)).sum(-1))
        add("target_mass_in_best_shortlist", (p * best).sum(-1))
        positions += len(tokens)
    means = {name: value / max(positions, 1) for name, value in sums.items()}
    out = {"positions": positions, "shortlist_size": size, "tail": {}}
    for name, value in means.items():
        if name.startswith("tail/"):
            out["tail"][name[5:]] = value
        else:
            out[name] = value
    return out


@torch.no_grad()
def drafter_output_counts(drafter, sequences: list[torch.Tensor], *, prompt_tokens: int = 64, new_tokens: int = 128,
                          batch_size: int = 32) -> torch.Tensor:
    """Token counts of the drafter's own greedy continuations: the frequencies a VocabTrim shortlist ranks by.

    Pass them as `TokenClusters.with_core(counts, size)` (or `calibrate(frequency_counts=...)`) for a static
    shortlist of what the drafter actually proposes, rather than of what the corpus contains (FR-Spec).
    """
    vocab_size = drafter.config.get_text_config().vocab_size
    counts = torch.zeros(vocab_size, dtype=torch.long)
    prompts = [s[:prompt_tokens] for s in sequences if s.numel() >= prompt_tokens]
    for start in range(0, len(prompts), batch_size):
        batch = torch.stack(prompts[start : start + batch_size]).to(drafter.device)
        out = drafter.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        counts += torch.bincount(out[:, prompt_tokens:].reshape(-1).cpu(), minlength=vocab_size)
    return counts
