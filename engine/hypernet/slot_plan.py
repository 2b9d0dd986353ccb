"""Which rows' hypernets go into which stage: plain-Python planning over a batch's chains, done before the UNet runs.

Why separate from the tensors (:mod:`engine.hypernet.slots`): planning is all Python decisions (chain lengths,
families, who shares what), and none of it may happen inside a compiled UNet.  Both users plan here — the eager
:class:`engine.hypernet.attention.PerSampleHypernets` (a plan per batch) and the static slots of
:mod:`engine.hypernet.slot_pool` (a fixed *layout* per batch-size bucket that later batches are fitted into).

A row's chain at one size is its hypernets that have a module for that size and a non-zero multiplier, in prompt
order (A1111 skips the others: ``x + y·0 = x``).  Position ``p`` of every row's chain is applied before position
``p + 1``; within a position the rows are disjoint, so the stages of one position can run in any order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.hypernet.layout import resolve_metadata
from engine.hypernet.model import Hypernetwork
from engine.hypernet.slots import SlotFamily, family_for_metadata, family_of, module_widths

__all__ = ["Chain", "ExactGroup", "Layout", "StagePlan", "StageSpec", "assign", "effective", "layout_cost",
           "minimal_layout", "plan_dim", "standard_layout"]

Chain = Sequence[tuple[Hypernetwork, float]]
Member = tuple[int, Hypernetwork, float]  # (row, hypernet, multiplier)


@dataclass(frozen=True, slots=True)
class StageSpec:
    """A stage's shape: its family and hidden-layer capacities."""

    family: SlotFamily
    hidden: tuple[int, ...]

    def takes(self, family: SlotFamily, widths: Sequence[int]) -> bool:
        return family == self.family and all(w <= c for w, c in zip(widths, self.hidden, strict=True))


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One stage of a batch: the rows whose net at this position belongs to ``spec.family``."""

    spec: StageSpec
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class ExactGroup:
    """Rows applying one non-foldable net at one position, computed together as today (A1111's batch semantics)."""

    hn: Hypernetwork
    rows: tuple[int, ...]
    multipliers: tuple[float, ...]


#: A bucket's fixed stage sequence per size: ``((dim, (StageSpec, ...)), ...)`` sorted by size; hashable.
Layout = tuple[tuple[int, tuple[StageSpec, ...]], ...]


def effective(chain: Chain, dim: int) -> list[tuple[Hypernetwork, float]]:
    """The entries of ``chain`` that do something at ``dim``."""
    return [(hn, m) for hn, m in chain if dim in hn.layers and m != 0.0]


def _family(hn: Hypernetwork, dim: int) -> SlotFamily | None:
    k_mod, v_mod = hn.layers[dim]
    family = family_of(k_mod)
    return family if family is not None and family_of(v_mod) == family else None


def _capacity(spec_family: SlotFamily, widths: Iterable[Sequence[int]], dim: int, min_hidden_ratio: float
              ) -> tuple[int, ...]:
    """Hidden capacities: the widest member per layer, at least ``min_hidden_ratio · dim`` where no LayerNorm pins it."""
    rows = list(widths)
    pinned = spec_family.pinned_widths()
    floor = int(dim * min_hidden_ratio)
    out = []
    for layer in range(spec_family.linear_count - 1):
        need = max(w[layer] for w in rows)
        out.append(pinned.get(layer, max(need, floor)))
    return tuple(out)


def plan_dim(chains: Sequence[Chain], dim: int, *, batched: bool = True, min_hidden_ratio: float = 0.0
             ) -> list[list[StagePlan | ExactGroup]]:
    """Per chain position, its stages (foldable nets grouped by family) and exact groups (by net object).

    ``batched=False`` puts every net in an exact group: the per-net computation, kept as the reference.
    """
    chains_here = [effective(chain, dim) for chain in chains]
    depth = max((len(c) for c in chains_here), default=0)
    families: dict[int, SlotFamily | None] = {}
    plan: list[list[StagePlan | ExactGroup]] = []
    for pos in range(depth):
        stages: dict[SlotFamily, list[Member]] = {}
        groups: dict[int, tuple[Hypernetwork, list[int], list[float]]] = {}
        for row, chain in enumerate(chains_here):
            if pos >= len(chain):
                continue
            hn, m = chain[pos]
            if id(hn) not in families:
                families[id(hn)] = _family(hn, dim) if batched else None
            family = families[id(hn)]
            if family is None:
                group = groups.setdefault(id(hn), (hn, [], []))
                group[1].append(row)
                group[2].append(m)
            else:
                stages.setdefault(family, []).append((row, hn, m))
        entries: list[StagePlan | ExactGroup] = []
        for family, members in sorted(stages.items(), key=lambda item: str(item[0].ops)):
            hidden = _capacity(family, (module_widths(hn.layers[dim][0]) for _, hn, _ in members), dim, min_hidden_ratio)
            entries.append(StagePlan(StageSpec(family, hidden), tuple(members)))
        entries += [ExactGroup(hn, tuple(rows), tuple(ms)) for hn, rows, ms in groups.values()]
        plan.append(entries)
    return plan


def minimal_layout(chains: Sequence[Chain], dims: Iterable[int], *, min_hidden_ratio: float = 2.0) -> Layout | None:
    """The smallest layout the batch fits: per size, its positions' stages in order; None when a net must take the
    exact path (softmax family, PReLU)."""
    layout = []
    for dim in sorted(set(dims)):
        specs: list[StageSpec] = []
        for position in plan_dim(chains, dim, min_hidden_ratio=min_hidden_ratio):
            for entry in position:
                if isinstance(entry, ExactGroup):
                    return None
                specs.append(entry.spec)
        if specs:
            layout.append((dim, tuple(specs)))
    return tuple(layout)


def assign(layout: Layout, chains: Sequence[Chain], dims: Iterable[int]) -> dict[int, list[list[Member]]] | None:
    """Fit a batch into ``layout``: per size, the members of each stage; None when it does not fit.

    Each row's nets take, in order, the earliest following stage of their family and capacity (greedy matching is
    exact for "is this sequence a subsequence").  Stages a row skips leave it unchanged (multiplier 0).
    """
    by_dim = dict(layout)
    out: dict[int, list[list[Member]]] = {dim: [[] for _ in specs] for dim, specs in layout}
    for dim in set(dims):
        specs = by_dim.get(dim, ())
        for row, chain in enumerate(chains):
            stage = 0
            for hn, m in effective(chain, dim):
                family = _family(hn, dim)
                if family is None:
                    return None
                widths = module_widths(hn.layers[dim][0])
                while stage < len(specs) and not specs[stage].takes(family, widths):
                    stage += 1
                if stage == len(specs):
                    return None
                out[dim][stage].append((row, hn, m))
                stage += 1
    return out


def layout_cost(layout: Layout) -> int:
    """A proxy for a layout's work per row and token: the weights its stages multiply by."""
    total = 0
    for dim, specs in layout:
        for spec in specs:
            widths = [dim, *spec.hidden, dim]
            total += sum(a * b for a, b in itertools.pairwise(widths))
    return total


def standard_layout(dims: Iterable[int], activation: str, *, structure: Sequence[float] = (1, 2, 1),
                    activate_output: bool = False, min_hidden_ratio: float = 2.0) -> Layout:
    """One stage per size for nets of A1111 shape ``structure`` with ``activation`` and no LayerNorm (A1111's
    "Create hypernetwork" writes ``activate_output`` False): what a worker compiles at warm-up, before any such net
    was loaded."""
    meta = resolve_metadata({"layer_structure": list(structure), "activation_func": activation,
                             "activate_output": activate_output}, "warm-up")
    layout = []
    for dim in sorted(set(dims)):
        family = family_for_metadata(meta, dim)
        if family is None:
            raise ValueError(f"activation {activation!r} cannot be stacked into static slots")
        widths = [int(dim * x) for x in structure][1:-1]
        layout.append((dim, (StageSpec(family, _capacity(family, [widths], dim, min_hidden_ratio)),)))
    return tuple(layout)
