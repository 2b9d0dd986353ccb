"""The sampler's model over the UNet: per-row schedule entries, UNet calls grouped by context length, v-prediction.

A recording module stands in for the UNet (the real one runs in test_renderer.py): these tests are about which
context each model row gets and how the calls are split, which the recorder sees exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from engine.conditioning import PromptRequest, ScheduledCond, WeightedSchedule
from engine.sampling import Evaluation, RowGuidance, RowSeed, model_rows
from engine.sampling.plan import sd_alphas_cumprod
from engine.sampling.schedules import DiscreteSigmas
from engine.worker.batch_rows import BatchRows, ImageRow
from engine.worker.unet_model import BatchUNet, entry_at
from engine.worker.unet_runner import UNetRunner


class RecordingUNet(torch.nn.Module):
    """Returns ``x * 2 + mean(context)`` per row and records every call's context."""

    def __init__(self, output: str = "eps") -> None:
        super().__init__()
        self.calls: list[torch.Tensor] = []
        self.output = output
        self.config = SimpleNamespace(cross_attention_dim=4)  # what the runner reads

    def forward(self, x, t, encoder_hidden_states, cross_attention_kwargs):
        self.calls.append(encoder_hidden_states)
        out = x * 2 + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=out)


def cond(value: float, chunks: int = 1) -> torch.Tensor:
    return torch.full((77 * chunks, 4), value)


def schedule(*entries: tuple[int, torch.Tensor]) -> list[WeightedSchedule]:
    return [WeightedSchedule(1.0, [ScheduledCond(end, c) for end, c in entries])]


def rows_of(*pairs: tuple[int, int]) -> BatchRows:
    rows = tuple(ImageRow(job, RowSeed(job), 7.0, prompt, negative, ()) for job, (prompt, negative) in
                 enumerate(pairs))
    return BatchRows(rows, tuple(PromptRequest(f"p{i}", 4) for i in range(4)))


def model(unet: torch.nn.Module, rows: BatchRows, conds: list[list[WeightedSchedule]], **kw) -> BatchUNet:
    runner = UNetRunner(unet, device="cpu", hypernet_dtype=torch.float32, dims=())  # eager: the worker's CPU path
    return BatchUNet(runner, rows, conds, dtype=torch.float32, view=DiscreteSigmas(sd_alphas_cumprod()), **kw)


def test_entry_at_follows_a1111_and_falls_back_to_the_first_entry():
    entries = [ScheduledCond(2, cond(0)), ScheduledCond(4, cond(1))]
    assert [entry_at(entries, i) for i in range(6)] == [0, 0, 0, 1, 1, 0]


def test_each_row_switches_at_its_own_evaluation():
    # Row 0's prompt switches after evaluation 1, row 1's never; both share negative prompt 2.
    conds = [schedule((1, cond(1.0)), (4, cond(5.0))), schedule((4, cond(3.0))), schedule((4, cond(-1.0))), []]
    unet = RecordingUNet()
    fn = model(unet, rows_of((0, 2), (1, 2)), conds)
    layout = model_rows([RowGuidance(7.0), RowGuidance(7.0)], [0, 1])
    x = torch.zeros(4, 4, 2, 2)
    for index in range(3):
        fn(x, torch.zeros(4), layout, Evaluation(index, index))
    firsts = [call[:, 0, 0].tolist() for call in unet.calls]
    assert firsts == [[1.0, 3.0, -1.0, -1.0], [1.0, 3.0, -1.0, -1.0], [5.0, 3.0, -1.0, -1.0]]
    assert unet.calls[0] is unet.calls[1]  # same entries: the same context tensor, so hypernet results stay cached


def test_contexts_of_different_lengths_run_as_separate_unet_calls():
    conds = [schedule((4, cond(1.0, chunks=2))), schedule((4, cond(2.0))), schedule((4, cond(0.0))), []]
    unet = RecordingUNet()
    fn = model(unet, rows_of((0, 2), (1, 2)), conds)
    layout = model_rows([RowGuidance(7.0), RowGuidance(7.0)], [0, 1])
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 4, 2, 2).contiguous()
    out = fn(x, torch.zeros(4), layout, Evaluation(0, 0))
    assert [tuple(c.shape[:2]) for c in unet.calls] == [(1, 154), (3, 77)]  # cond 0 alone, then the 77-token rows
    expected = torch.tensor([0 * 2 + 1.0, 1 * 2 + 2.0, 2 * 2 + 0.0, 3 * 2 + 0.0]).view(4, 1, 1, 1).expand(4, 4, 2, 2)
    assert torch.equal(out, expected)  # each row's result lands back in its own place


def test_v_prediction_is_turned_into_eps():
    view = DiscreteSigmas(sd_alphas_cumprod())
    sigma = torch.tensor(3.0)
    t = view.sigma_to_t(sigma).expand(2)
    x0, eps = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    alpha = 1 / (1 + sigma ** 2)
    x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps  # what the sampler hands the model (x * c_in)

    class VUNet(torch.nn.Module):
        config = SimpleNamespace(cross_attention_dim=4)

        def forward(self, x, t, encoder_hidden_states, cross_attention_kwargs):
            return SimpleNamespace(sample=alpha.sqrt() * eps - (1 - alpha).sqrt() * x0)

    conds = [schedule((4, cond(1.0))), [], schedule((4, cond(0.0))), []]
    rows = BatchRows((ImageRow(0, RowSeed(0), 7.0, 0, 2, ()),), ())
    runner = UNetRunner(VUNet(), device="cpu", hypernet_dtype=torch.float32, dims=())
    fn = BatchUNet(runner, rows, conds, dtype=torch.float32, view=view, v_prediction=True)
    layout = model_rows([RowGuidance(7.0)], [0])
    assert torch.allclose(fn(x_t, t, layout, Evaluation(0, 0)), eps, atol=1e-4)
