"""The model the sampler calls: the UNet over a batch whose rows each carry their own conditioning and hypernets.

Why our own model function: one batch mixes users, so every model row (a row's AND part, or its negative prompt)
has its own text conditioning — which prompt editing and alternation switch at that row's own evaluations — and its
own hypernet chain.  :mod:`engine.sampling` decides which model rows an evaluation needs (A1111's order); this
module gathers their contexts and runs the UNet on them.

Contexts of different lengths (a 150-token prompt next to a 75-token negative prompt) cannot share one UNet call.
A1111 (with its default "pad prompt/negative prompt" off) then runs the cond and uncond rows as separate UNet calls,
each at its own length, rather than padding one of them — padding changes the cross-attention softmax, so the image.
We do the same over the whole batch: model rows are grouped by context length and each group is one UNet call, so
a row sees exactly the context it would see alone.

LoRAs: each model row carries its batch row's LoRA list (UNet multipliers) through :mod:`engine.lora`'s per-row
hooks, active for that UNet call only; rows without one are untouched bit for bit.  Those hooks are registered per
call, which a compiled graph cannot follow, so a UNet call with LoRAs runs eager (``UNetRunner(..., eager=True)``).

The UNet itself is called through :class:`engine.worker.unet_runner.UNetRunner`: eager, or compiled per batch-size
bucket with the hypernets in static slots (``docs/performance.md``); it keeps the per-batch hypernet plans.

Context tensors, hypernet plans and LoRA batches are reused across evaluations while a row's schedule entry stays
the same, so the hypernets' cross-attention results stay cached (they are keyed on the context tensor).

v-prediction checkpoints (SD 2.x 768-v): the UNet predicts v; it is turned into eps (``eps = c_in * (v + sigma *
x_in)``, the same conversion A1111's v denoiser implies) so that the samplers and CFG stay eps-based.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from engine.conditioning import ScheduledCond, WeightedSchedule
from engine.lora import LoraBatch, build_lora_batch, lora_batch_active
from engine.sampling import Evaluation, ModelRows
from engine.sampling.schedules import DiscreteSigmas
from engine.worker.batch_rows import BatchRows
from engine.worker.unet_runner import UNetRunner

__all__ = ["BatchUNet", "entry_at"]

_CACHE_ENTRIES = 8  # distinct (rows, schedule entries) contexts kept: alternation cycles through a few


def entry_at(schedule: Sequence[ScheduledCond], evaluation: int) -> int:
    """The index of the schedule entry for evaluation ``evaluation`` (from 0).

    A1111's rule: the first entry whose ``end_at_step`` is at least the evaluation index; past the end (a sampler
    that evaluates more often than the schedule's step count, e.g. PLMS's extra start-up call) it falls back to the
    first entry, and so do we.
    """
    for k, entry in enumerate(schedule):
        if evaluation <= entry.end_at_step:
            return k
    return 0


class BatchUNet:
    """``ModelFn`` for :class:`engine.sampling.GuidedModel` over one batch.

    ``conds[p]`` is the encoded prompt request ``p`` of ``rows.prompts`` (its AND parts; a negative prompt has one).
    """

    def __init__(self, runner: UNetRunner, rows: BatchRows, conds: Sequence[Sequence[WeightedSchedule]], *,
                 dtype: torch.dtype, view: DiscreteSigmas, v_prediction: bool = False) -> None:
        self.runner = runner
        self.unet = runner.unet
        self.rows = rows
        self.conds = conds
        self.dtype = dtype
        self.view = view
        self.v_prediction = v_prediction
        self.unet_calls = 0
        self._contexts: OrderedDict[tuple[tuple[int, int, int], ...], torch.Tensor] = OrderedDict()
        self._loras: dict[tuple[int, ...], LoraBatch | None] = {}
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}
        self.lora_skipped: dict[str, set[str]] = {}  # LoRA name -> modules its update did not fit (A1111 skips them)

    def schedule_of(self, row: int, part: int) -> Sequence[ScheduledCond]:
        """The schedule of batch row ``row``'s AND part ``part`` (-1: its negative prompt)."""
        image = self.rows.rows[row]
        if part < 0:
            return self.conds[image.negative][0].schedule
        return self.conds[image.prompt][part].schedule

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, layout: ModelRows, at: Evaluation) -> torch.Tensor:
        keys = []
        for row, part in zip(layout.rows, layout.parts, strict=True):
            schedule = self.schedule_of(row, part)
            keys.append((row, part, entry_at(schedule, at.index)))
        lengths = [self.schedule_of(row, part)[k].cond.shape[0] for row, part, k in keys]
        if len(set(lengths)) == 1:
            return self._unet(x_in, t, keys, list(range(len(keys))))
        out = torch.empty_like(x_in, dtype=torch.float32)
        for length in dict.fromkeys(lengths):  # in order of first appearance: conds before unconds, as A1111
            members = tuple(k for k, n in enumerate(lengths) if n == length)
            index = self._index_of(members, x_in.device)
            out[index] = self._unet(x_in.index_select(0, index), t.index_select(0, index), keys, members).float()
        return out

    def _index_of(self, members: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The rows of one length group as a device tensor, built once per batch (no host-to-device copy per step)."""
        index = self._indices.get(members)
        if index is None:
            index = self._indices[members] = torch.tensor(members, device=device)
        return index

    def _unet(self, x: torch.Tensor, t: torch.Tensor, keys: Sequence[tuple[int, int, int]],
              members: Sequence[int]) -> torch.Tensor:
        group = tuple(keys[k] for k in members)
        context = self._context(group, x.device)
        batch_rows = tuple(key[0] for key in group)
        chains = [self.rows.rows[r].chain for r in batch_rows]
        loras = self._loras_of(batch_rows)
        self.unet_calls += 1
        with lora_batch_active(self.unet, loras):
            out = self.runner(x.to(self.dtype), t, context, chains, eager=loras is not None)
        if self.v_prediction:
            sigma = self.view.t_to_sigma(t.cpu()).to(x.device).view(-1, 1, 1, 1)
            c_in = 1 / (sigma ** 2 + 1) ** 0.5
            return c_in * (out.float() + sigma * x.float())
        return out

    def _context(self, group: tuple[tuple[int, int, int], ...], device: torch.device) -> torch.Tensor:
        cached = self._contexts.get(group)
        if cached is not None:
            self._contexts.move_to_end(group)
            return cached
        context = torch.stack([self.schedule_of(row, part)[k].cond for row, part, k in group]).to(device, self.dtype)
        self._contexts[group] = context
        if len(self._contexts) > _CACHE_ENTRIES:
            self._contexts.popitem(last=False)
        return context

    def _loras_of(self, batch_rows: tuple[int, ...]) -> LoraBatch | None:
        """The UNet LoRA batch of these model rows (their rows' LoRAs at the UNet multipliers), built once."""
        if batch_rows not in self._loras:
            uses = [self.rows.rows[r].loras for r in batch_rows]
            batch = build_lora_batch(self.unet, "unet", uses) if any(uses) else None
            for name, module in batch.skipped if batch is not None else ():
                self.lora_skipped.setdefault(name, set()).add(module)
            self._loras[batch_rows] = batch
        return self._loras[batch_rows]
