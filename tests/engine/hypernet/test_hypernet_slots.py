"""Hypernets as stacked per-row slots: families, exactness against the per-net path and A1111, static refills.

Reference for "today's computation": ``PerSampleHypernets(chains, batched=False)`` — every net computed on its own
group of rows, as before the slots.  Measured (fp32, CPU, one thread): the largest difference, relative to the
values' scale, is 4.9e-7 for a fixture alone (stacked or zero-padded static slots), 1.1e-7 in the mixed batch of
every 320 fixture, 0 with LayerNorm/deeper/mixed families; asserted: <= 1e-6.  Rows without a hypernet come back
bit for bit.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.hypernet import Hypernetwork, apply, from_state_dict, load
from engine.hypernet.attention import PerSampleHypernets, apply_stacked
from engine.hypernet.slot_plan import assign, minimal_layout, plan_dim, standard_layout
from engine.hypernet.slot_pool import HypernetSlotPool, StaticHypernets, apply_static
from engine.hypernet.slots import family_of, widens

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
TOL = 1e-6


def _loadable() -> dict[str, Hypernetwork]:
    out = {}
    for path in sorted([*FIXTURES.glob("*.pt"), *(FIXTURES / "zoo").glob("*.pt")]):
        try:
            out[path.stem] = load(path)
        except ValueError:
            continue  # the refused fixture
    return out


NETS = _loadable()


def synthetic(name: str, seed: int, structure=(1, 2, 1), act: str | None = "relu", dims=(320, 640, 768),
              **meta) -> Hypernetwork:
    """A hypernet built from A1111's metadata with random weights (``meta``: e.g. is_layer_norm, dropout_structure)."""
    from engine.hypernet.layout import build_sequential, resolve_metadata

    gen = torch.Generator().manual_seed(seed)
    obj: dict = {"layer_structure": list(structure), "activation_func": act, "activate_output": False, **meta}
    resolved = resolve_metadata(obj, name)
    for dim in dims:
        keys = build_sequential(dim, resolved).state_dict(keep_vars=True)
        obj[dim] = tuple(OrderedDict((f"linear.{k}", torch.randn(v.shape, generator=gen) * 0.05) for k, v in keys.items())
                         for _ in "kv")
    return from_state_dict(obj, name)


def context(rows: int, dim: int, seed: int = 0, tokens: int = 6) -> torch.Tensor:
    return torch.randn(rows, tokens, dim, generator=torch.Generator().manual_seed(seed))


def close(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest difference relative to the values' scale (k and v)."""
    return max(float((g.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1.0))
               for g, w in zip(got, want, strict=True))


def test_families_say_what_can_be_stacked() -> None:
    relu = family_of(NETS["pub_zoo_relu"].layers[320][0])
    assert relu is not None and str(relu) == "Linear-ReLU-Linear-ReLU"
    for name in ("pub_zoo_softmax", "pub_zoo_softmin", "pub_zoo_logsoftmax", "pub_zoo_softmax2d", "pub_zoo_prelu"):
        assert family_of(NETS[name].layers[320][0]) is None, name  # batch-dependent or with a parameter
    ln = family_of(NETS["pub_relu_11_320_ln"].layers[320][0])
    assert ln is not None and ln.pinned_widths() == {0: 320}
    plain = family_of(synthetic("p", 1).layers[320][0])
    dropped = family_of(synthetic("d", 1, dropout_structure=[0, 0.3, 0]).layers[320][0])
    assert plain == dropped  # dropout is the identity in eval mode
    assert widens(torch.float32, torch.float16) and not widens(torch.float16, torch.float32)


@pytest.mark.parametrize("name", sorted(NETS))
def test_each_fixture_alone_equals_the_per_net_path(name: str) -> None:
    hn = NETS[name]
    for dim in hn.sizes:
        x = context(3, dim, seed=dim)
        for chains in ([[(hn, 1.0)]] * 3, [[(hn, 0.5)], [], [(hn, -1.7)]]):
            want = PerSampleHypernets(chains, batched=False).transform(x, dim)
            assert close(PerSampleHypernets(chains).transform(x, dim), want) <= TOL
            layout = minimal_layout(chains, [dim])
            if layout is None:
                assert family_of(hn.layers[dim][0]) is None
                continue
            slots = StaticHypernets(layout, 4, "cpu", torch.float32, model_dims=[dim])  # one padding row
            slots.load(chains)
            got = slots.transform(torch.cat([x, x[:1]]), dim)
            assert close((got[0][:3], got[1][:3]), want) <= TOL
            assert torch.equal(got[0][3], x[0]) and torch.equal(got[1][3], x[0])  # the padding row is untouched


def test_mixed_batch_of_every_320_fixture_equals_each_row_alone() -> None:
    nets = [hn for hn in NETS.values() if 320 in hn.layers]
    chains = [[(hn, 0.3 + 0.1 * i)] for i, hn in enumerate(nets)]
    chains += [[(nets[0], 1.0), (nets[5], 0.7)], [], [(nets[3], 1.0), (nets[3], -0.5), (nets[8], 1.2)]]
    x = context(len(chains), 320, seed=7)
    got = PerSampleHypernets(chains).transform(x, 320)
    want = PerSampleHypernets(chains, batched=False).transform(x, 320)
    assert close(got, want) <= TOL
    for row, chain in enumerate(chains):
        if not any(hn.batch_dependent for hn, _ in chain):  # softmax rows normalise over their group, by design
            alone = apply(chain, x[row:row + 1], 320)
            assert close((got[0][row:row + 1], got[1][row:row + 1]), alone) <= TOL
    empty = chains.index([])
    assert torch.equal(got[0][empty], x[empty]) and torch.equal(got[1][empty], x[empty])
    plan = plan_dim(chains, 320)
    families = {str(e.spec.family) for e in plan[0] if hasattr(e, "spec")}
    assert len(plan[0]) < len(nets)  # stacked by family, not one computation per net
    assert "Linear-ReLU-Linear-ReLU" in families


def test_static_slots_mix_families_depths_and_layer_norm() -> None:
    a, b = synthetic("a", 1), synthetic("b", 2, structure=(1, 1.5, 1))
    deep = synthetic("deep", 3, structure=(1, 0.5, 0.5, 1), act="mish", is_layer_norm=True,
                     dropout_structure=[0, 0.1, 0.2, 0])
    tanh = synthetic("tanh", 4, act="tanh")
    chains = [[(a, 1.0)], [(b, 0.6), (deep, 1.0)], [], [(tanh, 1.0), (a, 0.5)], [(deep, -0.4)]]
    for dim in (320, 768):
        x = context(len(chains), dim, seed=dim)
        want = PerSampleHypernets(chains, batched=False).transform(x, dim)
        slots = StaticHypernets(minimal_layout(chains, [320, 640, 768]), len(chains), "cpu", torch.float32,
                                model_dims=[320, 640, 768])
        slots.load(chains)
        assert close(slots.transform(x, dim), want) <= TOL
        assert close(PerSampleHypernets(chains).transform(x, dim), want) <= TOL


def test_fp16_context_with_fp32_math_matches_the_per_net_path() -> None:
    a, tanh = synthetic("a", 1), synthetic("t", 2, act="tanh")
    chains = [[(a, 1.0), (tanh, 0.5)], [(tanh, 1.0)], []]
    x = context(3, 640, seed=3).half()
    want = PerSampleHypernets(chains, batched=False).transform(x, 640)
    got = PerSampleHypernets(chains).transform(x, 640)
    assert got[0].dtype == torch.float16
    assert close(got, want) <= 1e-3  # one fp16 rounding
    narrow = PerSampleHypernets(chains, compute_dtype=torch.float16).transform(x.float(), 640)
    assert torch.equal(narrow[0][2], x.float()[2])  # fp16 math never rounds a row it does not touch


def test_refill_keeps_addresses_and_follows_the_new_chains() -> None:
    a, b, c = synthetic("a", 1), synthetic("b", 2), synthetic("c", 3, structure=(1, 0.5, 1))
    first = [[(a, 1.0)], [(b, 0.5)], [], []]
    slots = StaticHypernets(minimal_layout(first, [320]), 4, "cpu", torch.float32, model_dims=[320])
    slots.load(first)
    addresses = [t.data_ptr() for t in slots.tensors()]
    x = context(4, 320, seed=5)
    for chains in ([[(c, 1.0)], [], [(a, 0.2)], [(b, 1.0)]], [[(c, 0.4)], [], [(a, 0.2)], [(b, 1.0)]], first):
        slots.load(chains)
        assert close(slots.transform(x, 320), PerSampleHypernets(chains, batched=False).transform(x, 320)) <= TOL
    assert [t.data_ptr() for t in slots.tensors()] == addresses
    with pytest.raises(ValueError, match="do not fit"):
        slots.load([[(a, 1.0), (b, 1.0)], [], [], []])  # two positions: the layout has one stage


def test_layouts_fit_what_they_can_hold_and_the_pool_prefers_ready_ones() -> None:
    a, wide, tanh = synthetic("a", 1), synthetic("w", 2, structure=(1, 3, 1)), synthetic("t", 3, act="tanh")
    std = standard_layout([320, 640, 768], "relu")
    assert std == minimal_layout([[(a, 1.0)]], [320, 640, 768])
    dims = [320, 640, 768]
    assert assign(std, [[(a, 1.0)], [], [(a, 0.5)]], dims) is not None
    assert assign(std, [[(wide, 1.0)]], dims) is None  # hidden 3x is over the 2x capacity
    assert assign(std, [[(tanh, 1.0)]], dims) is None  # another family
    assert minimal_layout([[(NETS["pub_zoo_softmax"], 1.0)]], [320]) is None  # exact path
    pool = HypernetSlotPool("cpu", torch.float32, dims=dims, text_dim=768)
    two = pool.acquire(4, [[(a, 1.0), (a, 1.0)], [(tanh, 1.0)]])
    assert two is not None and len(two.stages[320]) == 3
    ready = {id(two)}
    again = pool.acquire(4, [[(a, 1.0)], []], ready=lambda s: id(s) in ready)
    assert again is two  # fits the ready layout rather than compiling its own
    assert pool.acquire(4, [[(a, 1.0)], []]) is not two  # with nothing ready, its own minimal layout


def test_prepared_text_is_used_only_for_its_context() -> None:
    a = synthetic("a", 1)
    chains = [[(a, 1.0)], []]
    slots = StaticHypernets(minimal_layout(chains, [768]), 2, "cpu", torch.float32, text_dim=768, model_dims=[768])
    slots.load(chains)
    text, other = context(2, 768, seed=1, tokens=77), context(2, 768, seed=2, tokens=77)
    slots.prepare_text(text)
    prepared = slots.transform(text, 768, cacheable=True)
    assert prepared[0] is slots.transform(text, 768, cacheable=True)[0]
    assert close(prepared, apply_stacked_rows(chains, text)) <= TOL
    assert close(slots.transform(other, 768, cacheable=True), apply_stacked_rows(chains, other)) <= TOL
    slots.load([[], [(a, 1.0)]])
    assert slots.text_tokens is None  # new contents: the prepared result is stale


def apply_stacked_rows(chains, x):
    return PerSampleHypernets(chains, batched=False).transform(x, x.shape[-1])


VALUE_CASES = [c for c in MANIFEST["cases"] if c["expect"] == "values"
               and all((FIXTURES / h["file"]).exists() for h in c["hypernets"])]
TENSORS = {**load_file(FIXTURES / "inputs.safetensors"), **load_file(FIXTURES / "expected.safetensors")}


@pytest.mark.parametrize("case", VALUE_CASES, ids=[c["id"] for c in VALUE_CASES])
def test_stacked_and_static_slots_match_a1111(case: dict) -> None:
    tensors = TENSORS
    x = tensors[case["input"]]
    chain = [(NETS[Path(h["file"]).stem], h["multiplier"]) for h in case["hypernets"]]
    for fn in (apply_stacked, apply_static):
        k, v = fn(chain, x.clone(), case["dim"])
        for got, key in ((k, case["expected_k"]), (v, case["expected_v"])):
            exp = tensors[key]
            assert got.dtype == exp.dtype and got.shape == exp.shape
            assert torch.allclose(got.float(), exp.float(), atol=case["atol"], rtol=case["rtol"]), fn.__name__
