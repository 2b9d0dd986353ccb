"""Per-sample hypernets in a real diffusers UNet (the tiny SD1-width model) through HypernetAttnProcessor."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from engine.hypernet import Hypernetwork, apply, from_state_dict
from engine.hypernet.attention import HypernetAttnProcessor, PerSampleHypernets, install_hypernet_processors
from engine.worker.tiny import build_tiny


def make_hn(name: str, seed: int, sizes=(320, 640, 768), act: str | None = "relu") -> Hypernetwork:
    """A [1, 0.5, 1] hypernet with random weights for each size: a clear effect, but not so large that it
    drowns the UNet in amplified rounding (weights 4x larger make batch-vs-alone differ by 1e-5)."""
    gen = torch.Generator().manual_seed(seed)
    obj: dict = {"layer_structure": [1, 0.5, 1], "activation_func": act, "activate_output": False}
    for dim in sizes:
        h = dim // 2
        shapes = {"linear.0.weight": (h, dim), "linear.0.bias": (h,), "linear.2.weight": (dim, h), "linear.2.bias": (dim,)}
        if act is None:
            shapes = {k.replace("linear.2", "linear.1"): s for k, s in shapes.items()}
        obj[dim] = tuple(OrderedDict((k, torch.randn(s, generator=gen) * 0.05) for k, s in shapes.items()) for _ in "kv")
    return from_state_dict(obj, name)


@pytest.fixture(scope="module")
def unet():
    model = build_tiny().unet
    install_hypernet_processors(model)
    return model


@pytest.fixture(scope="module")
def nets() -> dict[str, Hypernetwork]:
    return {"a": make_hn("a", 1), "b": make_hn("b", 2), "c768": make_hn("c768", 3, sizes=(768,), act=None)}


def inputs(rows: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 4, 8, 8, generator=gen), torch.tensor(500),
            torch.randn(rows, 5, 768, generator=gen))


def run(unet, sample, t, text, hypernets=None):
    kwargs = None if hypernets is None else {"hypernets": hypernets}
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=text, cross_attention_kwargs=kwargs).sample


def test_installed_on_every_unet_attention_layer_and_nothing_else() -> None:
    parts = build_tiny()
    attention_layers = [m for m in parts.unet.modules() if isinstance(m, Attention)]
    assert install_hypernet_processors(parts.unet) == len(attention_layers) == 4  # attn1 + attn2 in 2 transformer blocks
    assert all(isinstance(p, HypernetAttnProcessor) for p in parts.unet.attn_processors.values())
    assert not any(isinstance(p, HypernetAttnProcessor) for p in parts.vae.attn_processors.values())
    with pytest.raises(TypeError, match="needs a diffusers UNet"):
        install_hypernet_processors(parts.vae)


def test_without_hypernets_equals_stock_processor(unet) -> None:
    sample, t, text = inputs(2)
    ours = run(unet, sample, t, text)
    ours_none = run(unet, sample, t, text, hypernets=None)
    unet.set_attn_processor(AttnProcessor2_0())
    try:
        stock = run(unet, sample, t, text)
    finally:
        install_hypernet_processors(unet)
    assert torch.equal(ours, stock) and torch.equal(ours_none, stock)


def test_rows_with_different_chains_equal_each_row_alone(unet, nets) -> None:
    a, b, c = nets["a"], nets["b"], nets["c768"]
    chains = [[(a, 1.0)], [(b, 0.7), (a, 1.0)], [], [(a, 0.5)], [(c, 1.3), (a, 1.0)]]
    sample, t, text = inputs(len(chains))
    together = run(unet, sample, t, text, PerSampleHypernets(chains))
    plain = run(unet, sample, t, text)
    for row, chain in enumerate(chains):
        alone = run(unet, sample[row:row + 1], t, text[row:row + 1], PerSampleHypernets([chain]))
        torch.testing.assert_close(together[row:row + 1], alone, atol=1e-5, rtol=1e-5)
        if chain:  # the kwarg reached the processor: the hypernet changed this row
            assert (together[row] - plain[row]).abs().max() > 1e-3
    assert torch.equal(together[2], plain[2])  # the row without hypernets is untouched


def test_multiplier_zero_is_bit_identical_to_no_hypernet(unet, nets) -> None:
    sample, t, text = inputs(2)
    zero = run(unet, sample, t, text, PerSampleHypernets([[(nets["a"], 0.0)], [(nets["b"], 0.0), (nets["a"], 0.0)]]))
    assert torch.equal(zero, run(unet, sample, t, text))


def test_chain_order_matters(unet, nets) -> None:
    a, b = nets["a"], nets["b"]
    sample, t, text = inputs(1)
    ab = run(unet, sample, t, text, PerSampleHypernets([[(a, 1.0), (b, 1.0)]]))
    ba = run(unet, sample, t, text, PerSampleHypernets([[(b, 1.0), (a, 1.0)]]))
    assert (ab - ba).abs().max() > 1e-4


def test_cross_attention_hypernets_are_computed_once_per_call(unet, nets) -> None:
    phn = PerSampleHypernets([[(nets["a"], 1.0)], [(nets["b"], 0.5)]])
    sample, t, text = inputs(2)
    first = run(unet, sample, t, text, phn)
    second = run(unet, sample, t, text, phn)  # a second denoising step with the same text context
    assert torch.equal(first, second)
    assert phn.compute_counts[768] == 1 and phn.cache_hits == 3  # 2 cross-attention layers x 2 steps
    assert phn.compute_counts[320] == 2 and phn.compute_counts[640] == 2  # self-attention: every layer, every step
    other_text = text + 1.0  # a new context tensor is not served from the cache
    phn.transform(other_text, 768, cacheable=True)
    assert phn.compute_counts[768] == 2


def test_transform_matches_apply_per_row_and_leaves_other_rows_alone(nets) -> None:
    a, b = nets["a"], nets["b"]
    chains = [[(a, 1.0), (b, -0.3)], [], [(b, 2.0)], [(a, 1.0), (b, -0.3)]]
    x = torch.randn(4, 6, 640, generator=torch.Generator().manual_seed(3))
    x_copy = x.clone()
    phn = PerSampleHypernets(chains)
    k, v = phn.transform(x, 640, cacheable=False)
    assert torch.equal(x, x_copy)
    for row, chain in enumerate(chains):
        rk, rv = apply(chain, x[row:row + 1], 640)
        torch.testing.assert_close(k[row:row + 1], rk, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(v[row:row + 1], rv, atol=1e-6, rtol=1e-6)
    assert torch.equal(k[1], x[1]) and torch.equal(v[1], x[1])
    nothing = PerSampleHypernets([[(nets["c768"], 1.0)], []])  # no module for 640, so nothing applies
    two = x[:2]
    same_k, same_v = nothing.transform(two, 640)
    assert same_k is two and same_v is two  # no copy when nothing applies


def test_cpu_computes_in_fp32_and_returns_the_input_dtype(nets) -> None:
    x = torch.randn(2, 4, 320, generator=torch.Generator().manual_seed(4)).half()
    chains = [[(nets["a"], 1.0), (nets["b"], 0.5)], [(nets["b"], 1.0)]]
    k, v = PerSampleHypernets(chains).transform(x, 320)
    assert k.dtype == v.dtype == torch.float16
    for row, chain in enumerate(chains):  # the upcast rule of apply(): fp32 per hypernet, cast back after each
        rk, rv = apply(chain, x[row:row + 1], 320)
        torch.testing.assert_close(k[row:row + 1], rk, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(v[row:row + 1], rv, atol=1e-3, rtol=1e-3)
    k32, _ = PerSampleHypernets(chains).transform(x.float(), 320)
    k64, _ = PerSampleHypernets(chains, compute_dtype=torch.float64).transform(x.float(), 320)
    assert k64.dtype == torch.float32  # computed in fp64, returned in the context's dtype
    assert not torch.equal(k64, k32)
    torch.testing.assert_close(k64, k32, atol=1e-5, rtol=1e-5)


def test_processor_transforms_key_and_value_inputs_only(nets) -> None:
    torch.manual_seed(0)
    attn = Attention(query_dim=320, cross_attention_dim=768, heads=4, dim_head=16).eval()
    hidden = torch.randn(2, 9, 320)
    text = torch.randn(2, 5, 768)
    chains = [[(nets["a"], 1.0)], [(nets["c768"], 0.8)]]
    with torch.no_grad():
        got = HypernetAttnProcessor()(attn, hidden, text, hypernets=PerSampleHypernets(chains))
        rows = []
        for row, chain in enumerate(chains):
            ck, cv = apply(chain, text[row:row + 1], 768)
            q = attn.to_q(hidden[row:row + 1]).view(1, -1, 4, 16).transpose(1, 2)
            k = attn.to_k(ck).view(1, -1, 4, 16).transpose(1, 2)
            v = attn.to_v(cv).view(1, -1, 4, 16).transpose(1, 2)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, -1, 64)
            rows.append(attn.to_out[0](o))
    torch.testing.assert_close(got, torch.cat(rows), atol=1e-5, rtol=1e-5)


def test_wrong_row_count_is_refused(nets) -> None:
    with pytest.raises(ValueError, match="3 rows but 2 hypernet chains"):
        PerSampleHypernets([[(nets["a"], 1.0)], []]).transform(torch.zeros(3, 2, 320), 320)


def test_cache_works_in_inference_mode_and_misses_after_in_place_change(nets) -> None:
    phn = PerSampleHypernets([[(nets["c768"], 1.0)]])
    with torch.inference_mode():
        text = torch.randn(1, 5, 768)
        first = phn.transform(text, 768, cacheable=True)
        assert phn.transform(text, 768, cacheable=True)[0] is first[0]
    assert phn.compute_counts[768] == 1 and phn.cache_hits == 1
    grad_text = torch.randn(1, 5, 768)
    k1, _ = phn.transform(grad_text, 768, cacheable=True)
    grad_text.add_(1.0)  # same tensor, new data: must be recomputed
    k2, _ = phn.transform(grad_text, 768, cacheable=True)
    assert phn.compute_counts[768] == 3 and not torch.equal(k1, k2)
