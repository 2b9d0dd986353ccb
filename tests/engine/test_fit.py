"""The one fit check: what a hypernetwork's sizes do on a checkpoint, worded once for results and listings."""

from __future__ import annotations

import pytest

from engine.fit import ModelShape, fit_note

SD1 = ModelShape(768, frozenset({320, 640, 1280}))
SD2 = ModelShape(1024, frozenset({320, 640, 1280}))
TINY = ModelShape(768, frozenset({320, 640}))


@pytest.mark.parametrize(("sizes", "shape", "note"), [
    ((768, 320, 640, 1280), SD1, None),
    ((320,), SD1, None),  # self-attention only: works on SD 1.x and SD 2.x
    ((320,), SD2, None),
    ((1280,), TINY, "made for other layer sizes (1280); this model's attention widths are 320/640/768, so it has no "
                    "effect here"),
    ((768, 1280), TINY, None),  # a missing 1280 layer is not a mismatch while others apply
    ((1024,), SD1, "made for SD 2.x (text context 1024) but this model is SD 1.x (text context 768), so it has no "
                   "effect here"),
    ((1024, 320, 640), SD1, "made for SD 2.x (text context 1024) but this model is SD 1.x (text context 768), so only "
                            "its 320/640 layers apply"),
    ((768,), SD2, "made for SD 1.x (text context 768) but this model is SD 2.x (text context 1024), so it has no "
                  "effect here"),
    ((512,), SD1, "made for other layer sizes (512); this model's attention widths are 320/640/768/1280, so it has "
                  "no effect here"),
    ((), SD1, "made with no layers, so it changes nothing"),
    ((1024,), None, None),  # engine not started: nothing known yet
])
def test_fit_note(sizes: tuple[int, ...], shape: ModelShape | None, note: str | None) -> None:
    assert fit_note(sizes, shape) == note
