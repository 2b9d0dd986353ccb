"""Classifier-free guidance as A1111 combines it, over rows that each carry their own scale and AND parts (docs §3).

Why the engine and the checker share this: one batch mixes users, so every row has its own CFG scale and its own
prompt, possibly several weighted AND parts, and rows may be dropped mid-run.  The model function stays the
caller's (it knows the text conditioning, prompt-editing schedules and hypernets); this module decides which model
rows one evaluation needs — A1111's order: every active row's cond parts row by row, then the active rows' unconds
— and combines the outputs per row: ``uncond + (cond_p - uncond) * (weight_p * scale)``, part after part.

k-diffusion samplers get the combination of denoised predictions ``D = x + eps(x * c_in, t(sigma)) * (-sigma)``,
DDIM/PLMS/UniPC the combination of eps (A1111 does the same).  Model outputs are upcast to float32 first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.sampling.control import Evaluation, ShouldStop, apply_stop
from engine.sampling.schedules import DiscreteSigmas

__all__ = ["GuidedModel", "ModelFn", "ModelRows", "RowGuidance", "combine_guidance", "model_rows"]


@dataclass(frozen=True, slots=True)
class RowGuidance:
    """One batch row's guidance: its CFG scale and the weights of its prompt's AND parts (A1111: ``a AND b :0.5``)."""

    scale: float
    weights: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError("a row's prompt has at least one part (weights must not be empty)")


@dataclass(frozen=True, eq=False)
class ModelRows:
    """The rows of one model call.  Model row k is part ``parts[k]`` (-1: the negative prompt) of batch row
    ``rows[k]``; the first ``conds`` model rows are cond parts.  ``index`` is ``rows`` as a device tensor."""

    rows: tuple[int, ...]
    parts: tuple[int, ...]
    conds: int
    index: torch.Tensor
    active: torch.Tensor               # the batch rows evaluated (device tensor), in the order of the results
    # Per AND part: (its model rows, their rows' positions among the unconds or None for "all, in order",
    # weight * scale per model row as float32 of the Python-float product, A1111's rounding).
    groups: tuple[tuple[torch.Tensor | slice, torch.Tensor | None, torch.Tensor], ...]


#: The caller's model: eps for ``x_in`` (N, C, H, W) at timesteps ``t`` (N,) float32, for the model rows named by
#: ``rows`` at evaluation ``at`` (prompt-editing schedules switch on ``at.index``).
ModelFn = Callable[[torch.Tensor, torch.Tensor, ModelRows, Evaluation], torch.Tensor]


def model_rows(guidance: Sequence[RowGuidance], active: Sequence[int], device: torch.device | str = "cpu") -> ModelRows:
    """The model rows for the ``active`` batch rows (A1111's order), with what :func:`combine_guidance` needs."""
    device = torch.device(device)
    rows, parts, factors = [], [], []
    for row in active:
        for part, weight in enumerate(guidance[row].weights):
            rows.append(row)
            parts.append(part)
            factors.append(weight * guidance[row].scale)
    conds = len(rows)
    position = {row: k for k, row in enumerate(active)}
    groups = []
    for part in range(max(len(guidance[row].weights) for row in active)):
        picked = [k for k in range(conds) if parts[k] == part]
        owners = [position[rows[k]] for k in picked]
        factor = torch.tensor([factors[k] for k in picked], dtype=torch.float32, device=device).view(-1, 1, 1, 1)
        if owners == list(range(len(active))) and picked == list(range(picked[0], picked[0] + len(picked))):
            groups.append((slice(picked[0], picked[0] + len(picked)), None, factor))
        else:
            groups.append((torch.tensor(picked, device=device), torch.tensor(owners, device=device), factor))
    all_rows = tuple(rows) + tuple(active)
    return ModelRows(all_rows, tuple(parts) + (-1,) * len(active), conds, torch.tensor(all_rows, device=device),
                     torch.tensor(list(active), device=device), tuple(groups))


def combine_guidance(out: torch.Tensor, layout: ModelRows) -> torch.Tensor:
    """A1111's ``combine_denoised``: one result per active row from the model rows' outputs (denoised or eps)."""
    uncond = out[layout.conds:]
    result = uncond
    for picked, owners, factor in layout.groups:
        if owners is None:
            result = result + (out[picked] - uncond) * factor
        else:
            result = result.clone() if result is uncond else result
            result[owners] = result[owners] + (out[picked] - uncond[owners]) * factor
    return result


def _filled(n: int, value: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """(n,) float32 on ``device`` holding a host scalar: filled there, so no host-to-device copy per evaluation."""
    return torch.full((n,), float(torch.as_tensor(value, dtype=torch.float32)), dtype=torch.float32, device=device)


class GuidedModel:
    """The guided model the samplers call: :meth:`denoised` (k-diffusion) or :meth:`eps` (DDIM/PLMS/UniPC).

    ``guidance`` has one entry per batch row; ``should_stop`` is asked before every evaluation.  ``evaluations``
    counts the evaluations made (A1111's CFG-denoiser step counter).  Results are full-batch; rows dropped
    earlier get ``x`` back as their denoised prediction (zero eps), which keeps their arithmetic finite.
    """

    def __init__(self, model: ModelFn, guidance: Sequence[RowGuidance], *, should_stop: ShouldStop | None = None,
                 view: DiscreteSigmas | None = None) -> None:
        if not guidance:
            raise ValueError("a batch needs at least one row")
        self.model = model
        self.guidance = list(guidance)
        self.should_stop = should_stop
        self.view = view
        self.active = list(range(len(self.guidance)))
        self.evaluations = 0
        self._layouts: dict[tuple[tuple[int, ...], torch.device], ModelRows] = {}

    def _begin(self, step: int, device: torch.device) -> tuple[Evaluation, ModelRows]:
        at = Evaluation(step, self.evaluations)
        if self.should_stop is not None:
            self.active = apply_stop(self.should_stop(at), self.active)
        key = (tuple(self.active), device)
        if key not in self._layouts:
            self._layouts[key] = model_rows(self.guidance, self.active, device)
        return at, self._layouts[key]

    def _finish(self, x: torch.Tensor, layout: ModelRows, combined: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        self.evaluations += 1
        if len(self.active) == x.shape[0]:
            return combined
        full = fill.clone()
        full[layout.active] = combined
        return full

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        """CFG-combined D(x, sigma) for every row; ``sigma`` is a 0-dim float32 tensor."""
        if self.view is None:
            raise ValueError("denoised() needs the model's DiscreteSigmas view")
        at, layout = self._begin(step, x.device)
        x_rows = x.index_select(0, layout.index)
        n = x_rows.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        t = _filled(n, self.view.sigma_to_t(sigma), x.device)
        eps = self.model(x_rows * self.view.c_in(sigma), t, layout, at).float()
        out = x_rows + eps * -sigma
        return self._finish(x, layout, combine_guidance(out, layout), x)

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, step: int) -> torch.Tensor:
        """CFG-combined eps(x, t) for every row; ``t`` is the model timestep (a float or 0-dim tensor)."""
        at, layout = self._begin(step, x.device)
        x_rows = x.index_select(0, layout.index)
        out = self.model(x_rows, _filled(x_rows.shape[0], t, x.device), layout, at).float()
        return self._finish(x, layout, combine_guidance(out, layout), torch.zeros_like(x))
