"""Will a model fit, and if not, what is the cheapest change that makes it fit?

The budget follows how vLLM's v1 worker sizes its KV cache:

    KV pool   = VRAM x gpu_memory_utilization - weights - activations - non-torch memory
    KV tokens = KV pool / KV bytes per token
    KV bytes per token = 2 (K and V) x layers x KV heads x head_dim x KV dtype bytes

    weights      on the GPU: checkpoint bytes (halved for on-the-fly fp8) - cpu_offload_gb
    activations  max_num_batched_tokens x (4 x hidden + 2 x intermediate) x dtype bytes
                 + max_num_seqs x vocab x 4 (the sampler's fp32 logits); the profiling run's peak
    non-torch    0.5 GiB: CUDA context, cuBLAS workspaces, NCCL buffers

A model fits when the pool holds one request at max_model_len, which is what vLLM
checks at start. CUDA graphs are captured after the KV cache is allocated, so they come
out of the headroom VRAM x (1 - utilisation), not the pool: that is checked separately.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from animllm_cli.config import LoadedConfig, ModelView
from animllm_cli.errors import UsageError
from animllm_cli.gpu.model_cards import find_card
from animllm_cli.gpu.model_facts import ModelFacts, facts_for
from animllm_cli.gpu.nvml import GpuReport

from animllm_cli.units import GIB, gib

NON_TORCH_BYTES = GIB // 2
CUDA_GRAPH_BYTES = GIB // 2
# vLLM's defaults when a profile leaves these unset.
DEFAULT_BATCHED_TOKENS = 8192
DEFAULT_MAX_SEQS = 256
DEFAULT_UTILIZATION = 0.9
FORMULA = ("KV pool = VRAM x utilisation - weights - activations - 0.5 GiB non-torch; "
           "activations = max_num_batched_tokens x (4 x hidden + 2 x intermediate) x 2 B + max_num_seqs x vocab x 4 B; "
           "KV bytes/token = 2 x layers x KV heads x head_dim x KV dtype bytes; fits when KV pool >= max_model_len tokens")


@dataclass
class ModelPlan:
    model: str
    source: str
    verdict: str                      # fits | fits-partially | does-not-fit | unknown
    summary: str
    basis: str | None = None
    weights_present: bool | None = None  # on this machine (local or in the HF cache); None: unknown model
    utilization: float | None = None
    budget_bytes: int | None = None   # VRAM x utilisation
    checkpoint_bytes: int | None = None  # the weights as stored (what a download fetches)
    weight_bytes: int | None = None   # on the GPU
    activation_bytes: int | None = None
    non_torch_bytes: int | None = None
    kv_bytes_per_token: int | None = None
    kv_cache_dtype: str | None = None
    kv_pool_bytes: int | None = None
    kv_tokens: int | None = None
    max_model_len: int | None = None
    need_bytes: int | None = None     # everything at max_model_len, CUDA graphs included
    suggestion: str | None = None
    alternatives: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    startup: dict[str, Any] | None = None  # a cold start's cost, where `bench --startup` measured it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Budget:
    facts: ModelFacts
    utilization: float
    weights: int
    activations: int
    kv_per_token: int
    kv_dtype: str
    max_model_len: int
    graphs: int

    def pool(self, vram: int) -> int:
        return int(vram * self.utilization) - self.weights - self.activations - NON_TORCH_BYTES

    def tokens(self, vram: int) -> int:
        return max(0, self.pool(vram) // self.kv_per_token)

    def need(self) -> int:
        return self.weights + self.activations + NON_TORCH_BYTES + self.kv_per_token * self.max_model_len + self.graphs


def _budget(facts: ModelFacts, settings: dict[str, Any], notes: list[str]) -> Budget:
    quant = settings.get("quantization")
    weights = facts.weight_bytes
    if quant == "fp8" and facts.quantization is None:
        weights = weights // 2
        notes.append("fp8 weights quantised at load: about half of the 16-bit checkpoint")
    elif quant and facts.quantization is None and quant.split("_")[0] in ("awq", "gptq"):
        notes.append(f"quantization {quant} needs a pre-quantised checkpoint; this one is 16-bit")
    offload = int(float(settings.get("cpu_offload_gb") or 0) * GIB)
    if offload:
        notes.append(f"cpu_offload_gb {settings['cpu_offload_gb']}: {gib(offload)} of weights in CPU RAM, "
                     f"copied over PCIe every step (slow)")
    kv_dtype = str(settings.get("kv_cache_dtype") or "auto")
    kv_bytes = 1 if kv_dtype.startswith("fp8") else facts.dtype_bytes
    tokens = settings.get("max_num_batched_tokens") or DEFAULT_BATCHED_TOKENS
    seqs = settings.get("max_num_seqs") or DEFAULT_MAX_SEQS
    activations = tokens * (4 * facts.hidden + 2 * facts.intermediate) * facts.dtype_bytes + seqs * facts.vocab * 4
    return Budget(facts, settings.get("gpu_memory_utilization") or DEFAULT_UTILIZATION, max(0, weights - offload),
                  activations, 2 * facts.layers * facts.kv_heads * facts.head_dim * kv_bytes, kv_dtype,
                  settings.get("max_model_len") or facts.max_positions, 0 if settings.get("enforce_eager") else CUDA_GRAPH_BYTES)


def cached(loaded: LoadedConfig, view: ModelView) -> Path | None:
    """The model's complete snapshot where the engine (and `animllm pull`) keeps hub
    downloads, at its revision: what "present" means for pull, serve, plan and doctor."""
    from animllm_cli.pull.hub import cached_snapshot, hub_settings

    return cached_snapshot(view, hub_settings(loaded))


def plan_model(loaded: LoadedConfig, view: ModelView, vram: int) -> ModelPlan:
    facts = facts_for(view.engine_source, cached(loaded, view))
    if facts is None:
        return ModelPlan(view.name, view.engine_source, "unknown",
                         "no local copy, no Hugging Face cache entry and no shipped model card",
                         suggestion="download the model (or point `source` at a local copy) and run plan again")
    notes: list[str] = []
    budget = _budget(facts, view.settings, notes)
    spans = int(view.settings.get("tensor_parallel_size") or 1) * int(view.settings.get("pipeline_parallel_size") or 1)
    if spans > 1:
        where = "GPUs across machines (Ray places the pipeline stages)" if \
            view.settings.get("distributed_executor_backend") == "ray" else "GPUs"
        notes.append(f"runs over {spans} {where}: this verdict holds the whole model against one card; "
                     f"each GPU carries about 1/{spans} of the weights and KV cache")
    pool, tokens, length = budget.pool(vram), budget.tokens(vram), budget.max_model_len
    plan = ModelPlan(
        view.name, view.engine_source, "fits", "", basis=facts.basis, weights_present=facts.present,
        utilization=budget.utilization,
        budget_bytes=int(vram * budget.utilization), checkpoint_bytes=facts.weight_bytes, weight_bytes=budget.weights, activation_bytes=budget.activations,
        non_torch_bytes=NON_TORCH_BYTES, kv_bytes_per_token=budget.kv_per_token, kv_cache_dtype=budget.kv_dtype,
        kv_pool_bytes=pool, kv_tokens=tokens, max_model_len=length, need_bytes=budget.need(), notes=notes)
    if tokens >= length:
        plan.summary = f"fits: KV room for {tokens:,} tokens, {tokens / length:.1f}x max_model_len {length:,}"
    elif tokens >= 256:
        plan.verdict = "fits-partially"
        plan.summary = f"fits only up to {tokens:,} tokens (max_model_len {length:,})"
    else:
        plan.verdict = "does-not-fit"
        short = budget.weights + budget.activations + NON_TORCH_BYTES - int(vram * budget.utilization)
        plan.summary = (f"does not fit: weights {gib(budget.weights)} + activations {gib(budget.activations)} + "
                        f"non-torch {gib(NON_TORCH_BYTES)} exceed {gib(vram * budget.utilization)} "
                        f"({gib(vram, 0)} x {budget.utilization})" if short > 0 else
                        f"does not fit: only {tokens} tokens of KV cache remain")
    if plan.verdict != "fits":
        options = _fixes(budget, vram)
        plan.suggestion, plan.alternatives = (options[0], options[1:]) if options else (None, [])
    headroom = int(vram * (1 - budget.utilization))
    if budget.graphs and headroom < budget.graphs:
        plan.notes.append(f"CUDA graphs (~{gib(budget.graphs)}) are captured outside the budget and only "
                          f"{gib(headroom)} is left above it: lower gpu_memory_utilization or set enforce_eager")
    return plan


def _fixes(budget: Budget, vram: int) -> list[str]:
    """Changes that make the model fit, in the order: shorter context, fp8 KV cache,
    quantised weights, CPU offload. Each is checked with the same arithmetic."""
    fixes: list[str] = []
    tokens, length = budget.tokens(vram), budget.max_model_len
    if tokens >= 1024:
        fixes.append(f"max_model_len: {tokens // 1024 * 1024} (the longest context that fits)")
    if not budget.kv_dtype.startswith("fp8") and budget.kv_per_token > budget.pool(vram) / max(length, 1) / 2:
        halved = max(0, budget.pool(vram)) // (budget.kv_per_token // 2)
        if halved >= length:
            fixes.append(f"kv_cache_dtype: fp8 (halves KV bytes per token: {halved:,} tokens, keeps max_model_len {length:,})")
    facts = budget.facts
    variant = find_card(facts.awq_variant) if facts.awq_variant else None
    if variant and budget.weights > variant.weight_bytes:
        smaller = Budget(**{**budget.__dict__, "weights": variant.weight_bytes})
        if smaller.tokens(vram) >= min(length, 4096):
            fixes.append(f"source: {variant.repo} (AWQ weights, {gib(variant.weight_bytes)}; "
                         f"{_room(smaller.tokens(vram), length)})")
    if facts.quantization is None:
        fp8 = Budget(**{**budget.__dict__, "weights": budget.weights // 2})
        if fp8.tokens(vram) >= min(length, 4096):
            fixes.append(f"quantization: fp8 (weights quantised at load, ~{gib(fp8.weights)}; "
                         f"{_room(fp8.tokens(vram), length)})")
    want_tokens = min(length, 4096)
    short = budget.kv_per_token * want_tokens - budget.pool(vram)
    if short > 0 and budget.weights > 0:
        offload = math.ceil(short / GIB)
        fixes.append(f"cpu_offload_gb: {offload} (with max_model_len {want_tokens}; SLOW: offloaded weights "
                     f"cross PCIe every step)")
    return fixes


def _room(tokens: int, length: int) -> str:
    if tokens >= length:
        return f"room for {tokens:,} tokens"
    return f"room for {tokens:,} tokens, so also max_model_len: {tokens // 1024 * 1024}"


# The smallest share is the plan's need (without CUDA graphs, which vLLM captures outside
# its budget) with this much room on top: the arithmetic is an estimate, and a share that
# falls short fails the engine's start ("max model len ... larger than the KV cache").
SHARE_MARGIN = 1.05


@dataclass
class Share:
    """What one engine of a model takes of each card it runs on: the
    gpu_memory_utilization it is launched with, and once ready that much of the card
    plus its CUDA graphs."""
    model: str
    utilization: float
    graphs_bytes: int
    basis: str                        # share (the config's) | smallest (the planner's) | alone (its own utilization)
    tensor_parallel: int = 1          # how many GPUs it spans
    weight_bytes: int | None = None   # the plan's weights, all GPUs together (what level-1 sleep puts in host RAM)

    def bytes_on(self, card_bytes: int) -> int:
        return int(card_bytes * self.utilization) + self.graphs_bytes

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def model_quantization(loaded: LoadedConfig, model: str) -> str | None:
    """The format its weights load in: the `quantization` setting, else the checkpoint's own."""
    view = loaded.model(model)
    if view.settings.get("quantization"):
        return view.settings["quantization"]
    facts = facts_for(view.engine_source, cached(loaded, view))
    return facts.quantization if facts else None


def smallest_share(plan: ModelPlan, card: int, tensor_parallel: int = 1) -> float | None:
    """The least utilization whose KV pool still holds max_model_len (weights and KV
    split over `tensor_parallel` cards), or None when the model's facts are unknown."""
    if plan.verdict == "unknown" or plan.weight_bytes is None:
        return None
    budget = (plan.weight_bytes + (plan.kv_bytes_per_token or 0) * (plan.max_model_len or 0)) / tensor_parallel \
        + (plan.activation_bytes or 0) + (plan.non_torch_bytes or 0)
    return min(1.0, math.ceil(budget * SHARE_MARGIN / card * 100) / 100)


def model_share(view: ModelView, plan: ModelPlan, card: int, *, shareable: bool) -> Share:
    tp = int(view.settings.get("tensor_parallel_size") or len(view.spec.gpus or []) or 1)
    stages = int(view.settings.get("pipeline_parallel_size") or 1)  # each stage on other GPUs (Ray: other nodes)
    graphs = 0 if view.settings.get("enforce_eager") else CUDA_GRAPH_BYTES
    smallest = smallest_share(plan, card, tp * stages)
    weights = plan.weight_bytes
    if view.spec.share is not None:
        return Share(view.name, view.spec.share, graphs, "share", tp, weights)
    if shareable and smallest is not None:
        return Share(view.name, smallest, graphs, "smallest", tp, weights)
    return Share(view.name, view.settings.get("gpu_memory_utilization") or DEFAULT_UTILIZATION, graphs, "alone", tp,
                 weights)


def card_shares(loaded: LoadedConfig, card: int) -> dict[str, Share]:
    """Each model's share of a card of `card` bytes: the share its config gives, if any;
    else, for a model that can stay loaded beside another (in a co-resident group), the
    planner's smallest; else (a model that can only run alone, or a pool of one engine)
    its own utilization, so a card that holds one model at a time works as it always has."""
    views = {name: loaded.model(name) for name in loaded.local_model_names()}  # a remote model takes no VRAM here
    plans = {name: plan_model(loaded, view, card) for name, view in views.items()}
    candidates = [model_share(views[name], plans[name], card, shareable=True) for name in views]
    together = {name for group in groups_of(candidates, card, loaded.config.limits.vram_threshold) for name in group}
    if loaded.config.pool.max_engines == 1:  # one at a time: each model keeps its own utilization
        together = set()
    return {name: model_share(view, plans[name], card, shareable=name in together) for name, view in views.items()}


def groups_of(shares: list[Share], card: int, threshold: float) -> list[list[str]]:
    """Largest groups of models whose shares of one card add up to at most card x threshold."""
    groups: list[list[str]] = []
    for size in range(len(shares), 1, -1):
        for combo in itertools.combinations(shares, size):
            names = [s.model for s in combo]
            if sum(s.bytes_on(card) for s in combo) <= card * threshold and \
                    not any(set(names) <= set(g) for g in groups):
                groups.append(names)
    return groups


@dataclass
class Card:
    """One GPU as placement sees it: its size, and the room left on it below the threshold."""
    index: int
    total_bytes: int
    room_bytes: int


def place(need: Callable[[Card], int], tensor_parallel: int, cards: list[Card],
          wanted: list[int] | None) -> tuple[int, ...] | None:
    """The GPUs an engine goes on: the ones the model names if each has room for it, else
    the `tensor_parallel` GPUs with the most room. None: it does not fit now."""
    by_index = {card.index: card for card in cards}
    if wanted is not None:
        chosen = [by_index.get(i) for i in wanted]
        return tuple(wanted) if all(c is not None and c.room_bytes >= need(c) for c in chosen) else None
    fitting = sorted((c for c in cards if c.room_bytes >= need(c)), key=lambda c: (-c.room_bytes, c.index))
    if len(fitting) < tensor_parallel:
        return None
    return tuple(sorted(c.index for c in fitting[:tensor_parallel]))


def place_share(share_on: Callable[[Card], Share], cards: list[Card], wanted: list[int] | None) -> tuple[int, ...] | None:
    """`place` for a model whose share of each card is `share_on(card)` (shares are
    fractions: cards of other sizes hold other byte counts)."""
    return place(lambda card: share_on(card).bytes_on(card.total_bytes), share_on(cards[0]).tensor_parallel,
                 cards, wanted)


@dataclass
class Placement:
    model: str
    gpus: tuple[int, ...] | None      # None: it does not fit
    utilization: float
    bytes_per_gpu: int
    basis: str


@dataclass
class TogetherReport:
    """`plan --together`: whether a set of models fits the cards at once, and how."""
    cards: list[Card]
    card_basis: str
    placements: list[Placement]
    fits: bool
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "card_basis": self.card_basis, "fits": self.fits, "summary": self.summary,
                "cards": [asdict(c) for c in self.cards], "placements": [asdict(p) for p in self.placements]}


def cards_now(loaded: LoadedConfig, gpus: GpuReport, vram_gib: float | None) -> tuple[list[Card], str]:
    """The cards to place on, with their room now: --vram (one empty card), else every GPU
    NVML sees with what other processes hold taken off, else the config's gpu.vram_gib."""
    threshold = loaded.config.limits.vram_threshold
    if gpus.gpus and not vram_gib:
        return ([Card(g.index, g.total_bytes, int(g.total_bytes * threshold) - g.used_bytes) for g in gpus.gpus],
                f"{len(gpus.gpus)} detected GPU(s), as NVML sees them now")
    size, basis = vram_basis(loaded, gpus, vram_gib)
    return [Card(0, size, int(size * threshold))], basis


def plan_together(loaded: LoadedConfig, names: list[str], cards: list[Card], card_basis: str) -> TogetherReport:
    """Place the models one after another, in the given order, as the pool would."""
    threshold = loaded.config.limits.vram_threshold
    views = {name: loaded.model(name) for name in names}
    shares = {card.total_bytes: {name: model_share(view, plan_model(loaded, view, card.total_bytes), card.total_bytes,
                                                   shareable=True) for name, view in views.items()}
              for card in cards}
    left = [Card(c.index, c.total_bytes, c.room_bytes) for c in cards]
    placements: list[Placement] = []
    for name in names:
        share_on = lambda card, name=name: shares[card.total_bytes][name]
        first = share_on(left[0])
        gpus = place_share(share_on, left, loaded.config.models[name].gpus)
        on = [c for c in left if gpus and c.index in gpus]
        for card in on:
            card.room_bytes -= share_on(card).bytes_on(card.total_bytes)
        shown = share_on(on[0]) if on else first
        placements.append(Placement(name, gpus, shown.utilization,
                                    shown.bytes_on((on[0] if on else left[0]).total_bytes), shown.basis))
    missing = [p.model for p in placements if p.gpus is None]
    summary = (f"{', '.join(names)} fit together" if not missing else
               f"{', '.join(missing)} do{'es' if len(missing) == 1 else ''} not fit beside the others "
               f"(threshold {threshold:.0%} of each card)")
    return TogetherReport(cards, card_basis, placements, not missing, summary)


@dataclass
class RemotePlan:
    """A model served elsewhere (`upstream`): nothing of it is planned on this machine."""
    model: str
    urls: list[str]


@dataclass
class PlanReport:
    vram_bytes: int
    vram_basis: str
    models: list[ModelPlan]
    co_resident: list[list[str]]      # groups that can stay loaded together, each engine at its share
    shares: dict[str, Share] = field(default_factory=dict)
    formula: str = FORMULA
    remote: list[RemotePlan] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "vram_bytes": self.vram_bytes, "vram_gib": round(self.vram_bytes / GIB, 2),
                "vram_basis": self.vram_basis, "models": [m.to_json() for m in self.models],
                "co_resident": self.co_resident, "shares": {k: v.to_json() for k, v in self.shares.items()},
                "formula": self.formula, "remote": [asdict(r) for r in self.remote]}


def vram_basis(loaded: LoadedConfig, gpus: GpuReport, vram_gib: float | None) -> tuple[int, str]:
    """Which card to plan for: --vram, else the detected GPU 0, else the config's gpu.vram_gib."""
    if vram_gib:
        return int(vram_gib * GIB), f"--vram {vram_gib:g}"
    if gpus.gpus:
        return gpus.gpus[0].total_bytes, f"detected GPU 0 ({gpus.gpus[0].name})"
    if loaded.config.gpu.vram_gib:
        return int(loaded.config.gpu.vram_gib * GIB), f"config gpu.vram_gib ({loaded.config.gpu.vram_gib:g})"
    raise UsageError("no GPU detected and the config sets no gpu.vram_gib", hint="pass --vram GiB")


def plan_models(loaded: LoadedConfig, names: list[str], vram: int, basis: str) -> PlanReport:
    """The plan of each local model in `names`; the remote ones are only listed, with their URLs."""
    specs = loaded.config.models
    local = [name for name in names if specs[name].upstream is None]
    remote = [RemotePlan(name, list(specs[name].upstream.urls)) for name in names if specs[name].upstream]
    plans = [plan_model(loaded, loaded.model(name), vram) for name in local]
    shares = card_shares(loaded, vram)
    fitting = [shares[p.model] for p in plans if p.verdict == "fits"]
    return PlanReport(vram, basis, plans, groups_of(fitting, vram, loaded.config.limits.vram_threshold),
                      {name: shares[name] for name in local}, remote=remote)
