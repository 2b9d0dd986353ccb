"""The compiled UNet on the tiny model (CPU): one graph, no recompile on hypernet swaps, flat op counts, same images.

``torch._dynamo`` runs with the ``eager`` backend (or ``aot_eager`` once, for the numerics of a traced graph), so the
checks see exactly the graph dynamo captures without paying for code generation.  Reference for "today's path":
``PerSampleHypernets(chains, batched=False)`` in the eager UNet (every net on its own group of rows).
Measured here: compiled (eager and aot_eager backends) and eager results are bit-identical; asserted <= 1e-5 of the
output's scale (other BLAS builds may round differently).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.hypernet import Hypernetwork, from_state_dict, load
from engine.hypernet.attention import PerSampleHypernets, install_hypernet_processors
from engine.hypernet.slot_pool import HypernetSlotPool
from engine.protocol import HypernetRef, Shutdown, WorkerConfig
from engine.worker.compile import CompileSettings, RowBuckets, auto_max_batch
from engine.worker.faults import Faults
from engine.worker.loop import Worker
from engine.worker.renderer import Renderer
from engine.worker.tiny import build_tiny
from engine.worker.unet_runner import UNetRunner, attention_dims
from tests.requests import request as make_request

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks" / "zoo"
TOL = 1e-5


def make_hn(name: str, seed: int, act: str = "relu", hidden: float = 0.5) -> Hypernetwork:
    gen = torch.Generator().manual_seed(seed)
    obj: dict = {"layer_structure": [1, hidden, 1], "activation_func": act, "activate_output": False}
    for dim in (320, 640, 768):
        h = int(dim * hidden)
        shapes = {"linear.0.weight": (h, dim), "linear.0.bias": (h,), "linear.2.weight": (dim, h), "linear.2.bias": (dim,)}
        obj[dim] = tuple(OrderedDict((k, torch.randn(s, generator=gen) * 0.05) for k, s in shapes.items()) for _ in "kv")
    return from_state_dict(obj, name)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    model = build_tiny().unet
    install_hypernet_processors(model)
    return model


@pytest.fixture(scope="module")
def nets() -> list[Hypernetwork]:
    return [make_hn(f"n{i}", i) for i in range(6)]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def inputs(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 4, 8, 8, generator=gen), torch.full((rows,), 400.0 + seed), torch.randn(rows, 77, 768,
                                                                                                     generator=gen)


def reference(unet, x, t, text, chains) -> torch.Tensor:
    hypernets = PerSampleHypernets(chains, batched=False)
    return unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"hypernets": hypernets}).sample


def scaled_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_per_row_hypernets_compile_to_one_graph_and_swaps_never_recompile(unet, nets) -> None:
    graphs: list[int] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    compiled = torch.compile(unet, backend=counting_backend, fullgraph=True, dynamic=False)  # fullgraph: no break
    pool = HypernetSlotPool("cpu", torch.float32, dims=attention_dims(unet), text_dim=768)
    a, b, c, d, e, f = nets
    batches = [  # same bucket (4 rows), different users, hypernets, multipliers, prompts and seeds
        [[(a, 1.0)], [(b, 0.5)], [], [(c, 1.0)]],
        [[(d, 1.0)], [(d, 0.7)], [(e, 1.0)], [(f, -1.0)]],
        [[], [], [], [(b, 1.3)]],
        [[(f, 0.2)], [(a, 0.9)], [(c, 1.1)], [(e, 0.4)]],
    ]
    ready: set[int] = set()
    with torch.no_grad():
        for n, chains in enumerate(batches):
            slots = pool.acquire(4, chains, ready=lambda s: id(s) in ready)
            ready.add(id(slots))
            x, t, text = inputs(4, seed=n)
            slots.prepare_text(text)
            with torch._dynamo.config.patch(error_on_recompile=n > 0):
                out = compiled(x, t, encoder_hidden_states=text, cross_attention_kwargs={"hypernets": slots}).sample
            assert scaled_error(out, reference(unet, x, t, text, chains)) <= TOL
    assert len(graphs) == 1 and len(ready) == 1
    assert graphs[0] > 100  # the whole UNet is in it


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(unet, hypernets, rows: int = 4) -> int:
    x, t, text = inputs(rows, seed=1)
    with torch.no_grad(), OpCounter() as counter:
        unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"hypernets": hypernets})
    return sum(counter.ops.values())


def test_dispatched_ops_per_pass_do_not_grow_with_distinct_hypernets(unet, nets) -> None:
    pool = HypernetSlotPool("cpu", torch.float32, dims=attention_dims(unet), text_dim=768)
    one = [[(nets[0], 1.0)]] * 4
    four = [[(nets[i], 0.5 + i / 4)] for i in range(4)]
    two = [[(nets[4], 1.0)], [(nets[5], 1.0)], [(nets[4], 0.3)], []]
    static = []
    for chains in (one, four, two):
        slots = pool.acquire(4, chains)
        slots.prepare_text(inputs(4, seed=1)[2])
        static.append(count_ops(unet, slots))
    assert static[0] == static[1] == static[2]
    stacked = [count_ops(unet, PerSampleHypernets(chains)) for chains in (one, four)]
    assert stacked[0] == stacked[1]
    per_net = [count_ops(unet, PerSampleHypernets(chains, batched=False)) for chains in (one, four)]
    assert per_net[1] > per_net[0]  # the old per-net loop grows: the counter sees it
    assert static[0] < per_net[1]


def test_runner_runs_a_new_layout_eagerly_until_compiled_when_idle(unet, nets) -> None:
    settings = CompileSettings(enabled=True, backend="eager", buckets=(2,))
    runner = UNetRunner(unet, device="cpu", hypernet_dtype=torch.float32, settings=settings)
    chains = [[(nets[0], 1.0)], [(nets[1], 1.0)]]
    with torch.no_grad():
        x, t, text = inputs(2, seed=4)
        first = runner(x, t, text, chains)  # nothing compiled yet: eager, queued
        assert runner.stats.pending_calls == 1 and len(runner.pending) == 1 and runner.stats.compiled_calls == 0
        assert runner.compile_pending() == 1 and not runner.pending
        swapped = [[(nets[2], 1.0)], [(nets[0], 0.5)]]
        second = runner(x, t, text, swapped)  # same layout: the compiled graph
        three = [[(nets[3], 1.0)], [], [(nets[4], 0.7)]]  # 3 rows: chunks of the 2-row bucket, same graph
        x3, t3, text3 = inputs(3, seed=6)
        chunked = runner(x3, t3, text3, three)
    assert runner.stats.compiled_calls == 3 and runner.stats.recompile_fallbacks == 0
    assert len(runner.stats.compiles) == 1 and runner.stats.padded_rows == 1
    assert scaled_error(first, reference(unet, x, t, text, chains)) <= TOL
    assert scaled_error(second, reference(unet, x, t, text, swapped)) <= TOL
    assert scaled_error(chunked, reference(unet, x3, t3, text3, three)) <= TOL


def test_runner_takes_the_exact_path_for_batch_dependent_nets_and_when_disabled(unet, nets) -> None:
    softmax = load(ZOO / "pub_zoo_softmax.pt")
    chains = [[(softmax, 1.0)], [(softmax, 0.5), (nets[0], 1.0)]]
    x, t, text = inputs(2, seed=5)
    enabled = UNetRunner(unet, device="cpu", hypernet_dtype=torch.float32,
                         settings=CompileSettings(enabled=True, backend="eager", buckets=(2,)))
    disabled = UNetRunner(unet, device="cpu", hypernet_dtype=torch.float32)
    with torch.no_grad():
        want = reference(unet, x, t, text, chains)
        for runner in (enabled, disabled):
            torch.testing.assert_close(runner(x, t, text, chains), want, atol=TOL, rtol=TOL)
    assert enabled.stats.exact_path_calls == 1 and enabled.stats.compiled_calls == 0
    assert disabled.stats.eager_calls == 1 and not disabled.settings.enabled


def test_rendered_images_are_the_same_compiled_and_eager() -> None:
    """The renderer as the worker runs it, its runner compiling with aot_eager (traced, decomposed graph)."""
    files = [ZOO / "pub_zoo_relu.pt", ZOO / "pub_zoo_tanh.pt"]
    nets = {hashlib.sha256(f.read_bytes()).hexdigest(): load(f) for f in files}
    refs = [HypernetRef(name=f.stem, sha256=d, multiplier=0.8) for f, d in zip(files, nets, strict=True)]
    batches = [[make_request(i + 1, 7, prompt=f"water elemental {i}", seed=seed + i, steps=2, width=64, height=64,
                             hypernets=(refs[k],) if k >= 0 else ()) for i, k in enumerate(order)]
               for order, seed in (([0, 1, -1], 40), ([1, -1, 0], 90))]  # the second batch swaps every assignment
    renderer = Renderer.load("tiny", device="cpu")
    eager = [renderer.generate(reqs, nets) for reqs in batches]
    runner = UNetRunner(renderer.unet, device="cpu", hypernet_dtype=renderer.hypernet_dtype,
                        settings=CompileSettings(enabled=True, backend="aot_eager"))
    layout = runner.layout_of([[(hn, 0.8)] for hn in nets.values()])  # the families these batches use
    with torch.no_grad():  # the worker's start-up: warm up, then serve without compiling
        warmed = runner.warm_up([(8, 8)], dtype=torch.float32, buckets=(8,), layouts=[layout])
    assert len(warmed) == 1
    renderer.unet_runner = runner  # what Renderer.load(compile="on") builds, with a CPU-friendly backend
    for reqs, before in zip(batches, eager, strict=True):
        for a, b in zip(before, renderer.generate(reqs, nets), strict=True):
            assert a.seeds == b.seeds
            for x, y in zip(a.images, b.images, strict=True):
                assert np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max() <= 1
    assert len(runner.stats.compiles) == 1  # 6 rows padded to the 8-row bucket, one layout: one graph for both
    assert runner.stats.compiled_calls == 4 and runner.stats.padded_rows == 8  # 2 steps x 2 batches, 2 pad rows each
    assert runner.stats.recompile_fallbacks == 0 and runner.stats.eager_calls == 0 and not runner.pending


def test_settings_and_buckets() -> None:
    assert not CompileSettings.from_option("auto", "cpu").enabled
    assert CompileSettings.from_option("auto", "cuda").enabled
    assert CompileSettings.from_option("cudagraphs", "cuda").cudagraph_rows == 4
    assert not CompileSettings.from_option("off", "cuda").enabled
    with pytest.raises(ValueError, match="compile option must be one of"):
        CompileSettings.from_option("fast", "cuda")
    with pytest.raises(ValueError, match="increasing positive"):
        CompileSettings(buckets=(4, 2))
    buckets = RowBuckets((2, 4, 8, 16))
    assert [buckets.bucket_for(n) for n in (1, 2, 3, 5, 16, 17)] == [2, 2, 4, 8, 16, None]
    assert list(buckets.chunks(35)) == [(0, 16), (16, 32), (32, 35)]


def test_environment_turns_compilation_off(monkeypatch) -> None:
    monkeypatch.setenv("HYPERCORD_COMPILE", "off")
    assert not CompileSettings.from_option("on", "cuda").enabled


def test_max_batch_auto_is_eight_on_cuda_and_four_elsewhere() -> None:
    assert [auto_max_batch(0, d) for d in ("cuda", "cuda:1", "cpu")] == [8, 8, 4]
    assert auto_max_batch(6, "cuda") == 6 and auto_max_batch(2, "cpu") == 2  # a configured size wins


def test_an_idle_worker_compiles_a_layout_that_ran_eager(unet, nets) -> None:
    """The worker loop's wait: no batch for a while and a layout pending -> it compiles it, then takes the work."""
    runner = UNetRunner(unet, device="cpu", hypernet_dtype=torch.float32,
                        settings=CompileSettings(enabled=True, backend="eager", buckets=(2,)))
    x, t, text = inputs(2, seed=5)
    with torch.no_grad():
        runner(x, t, text, [[(nets[0], 0.5)], []])  # a new layout: eager now, queued for later
    assert len(runner.pending) == 1 and runner.stats.pending_calls == 1
    worker = Worker(conn=None, config=WorkerConfig(), faults=Faults())  # type: ignore[arg-type]  # never sends here
    worker._runner = runner  # as after a batch on this checkpoint
    got: list[object] = []
    waiting = threading.Thread(target=lambda: got.append(worker._next_work()))
    with torch.no_grad():
        waiting.start()
        for _ in range(600):
            if not runner.pending:
                break
            time.sleep(0.05)
        worker._work.put(Shutdown())
        waiting.join(30)
    assert got == [Shutdown()] and not runner.pending and len(runner.stats.compiles) == 1


def test_a_parked_models_runner_gives_its_slots_back_and_queues_its_graphs_again(unet, nets) -> None:
    runner = UNetRunner(unet, device="cpu", hypernet_dtype=torch.float32,
                        settings=CompileSettings(enabled=True, backend="eager", buckets=(2,), compile_on_first_use=True))
    x, t, text = inputs(2, seed=9)
    chains = [[(nets[0], 0.5)], []]
    with torch.no_grad():
        before = runner(x, t, text, chains)
        assert len(runner.ready) == 1 and runner.pool._buckets
        runner.release()  # what Renderer.move(False) does
        assert not runner.ready and len(runner.pending) == 1 and not runner.pool._buckets
        assert runner.compile_pending(1) == 1 and len(runner.ready) == 1  # the idle worker, once the model is back
        torch.testing.assert_close(runner(x, t, text, chains), before, atol=0, rtol=0)


def test_a_compiler_that_fails_on_this_machine_turns_compiling_off_and_renders_eager(unet, nets, monkeypatch,
                                                                                     caplog) -> None:
    """Stands in for a GPU box whose Triton or driver cannot compile: the worker must render, not crash-loop."""
    import engine.worker.unet_runner as runner_module

    def broken_compiler(*_: object, **__: object):
        def fails(*_: object, **__: object):
            raise RuntimeError("triton: no usable compiler on this machine")
        return fails

    monkeypatch.setattr(runner_module, "compiled_unet", broken_compiler)
    runner = UNetRunner(unet, device="cpu", hypernet_dtype=torch.float32,
                        settings=CompileSettings(enabled=True, backend="eager", buckets=(2, 4)))
    x, t, text = inputs(2, seed=11)
    chains = [[(nets[0], 0.5)], []]
    with torch.no_grad():
        assert runner.warm_up([(8, 8)], dtype=torch.float32) == []  # the first compile fails: no others tried
        got = runner(x, t, text, chains)
        want = reference(unet, x, t, text, chains)
    assert not runner.settings.enabled and not runner.pending and runner.compile_pending(1) == 0
    assert runner.stats.compile_failure.startswith("compiling the UNet for 2 rows") and runner.stats.eager_calls == 1
    assert "the UNet runs eager from now on" in caplog.text
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
