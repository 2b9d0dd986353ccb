"""The wire codec: every protocol message round-trips field for field; other versions, types and fields are refused."""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any

import msgpack
import pytest

from engine.codec import CodecError, decode, decode_as, encode, message_types
from engine.protocol import (
    PROTOCOL_VERSION,
    Envelope,
    Failure,
    FailureKind,
    FleetConfig,
    GenerateRequest,
    HypernetRef,
    RenderSettings,
    Result,
    SubmitBatch,
    WorkerConfig,
)


def sample(hint: Any, seed: int) -> Any:
    """A non-default value of type ``hint``, built from the type alone (so new fields are covered unseen)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if hint is RenderSettings:  # its invariant ties the prompt's tags to its hypernets
            ref = HypernetRef(name=f"net{seed}", sha256=f"{seed:064x}", multiplier=0.5 + seed)
            return RenderSettings(prompt=f"a cat <hypernet:net{seed}:{0.5 + seed}>", hypernets=(ref,), seed=seed,
                                  steps=3 + seed, width=64, height=72, count=2)
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: sample(hints[f.name], seed + i) for i, f in enumerate(dataclasses.fields(hint))})
    if origin is tuple:
        item = args[0]
        return (sample(item, seed), sample(item, seed + 1))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[seed % len(hint)]
    return {int: 7 + seed, float: 1.5 + seed, str: f"text-{seed}", bool: True, bytes: bytes([seed % 256]) * 3}[hint]


@pytest.mark.parametrize("name", sorted(message_types()))
def test_every_message_round_trips_with_every_field_set(name: str) -> None:
    cls = message_types()[name]
    value = sample(cls, 3)
    assert decode(encode(value)) == value


def test_message_types_are_the_protocols_dataclasses_without_the_pickle_envelope() -> None:
    types = message_types()
    assert {"SubmitBatch", "Result", "Failure", "WorkerConfig", "FleetConfig", "WorkerInfo", "RenderSettings"} <= set(types)
    assert Envelope not in types.values()
    with pytest.raises(CodecError, match="not a protocol message"):
        encode(Envelope(PROTOCOL_VERSION, None))


def test_nested_values_come_back_typed() -> None:
    batch = SubmitBatch(9, (GenerateRequest(1, 2, sample(RenderSettings, 1)),))
    back = decode(encode(batch))
    assert isinstance(back, SubmitBatch) and isinstance(back.requests, tuple)
    assert isinstance(back.requests[0].settings.hypernets[0], HypernetRef)
    failure = decode(encode(Failure(1, FailureKind.TIMEOUT, "m")))
    assert isinstance(failure, Failure) and failure.kind is FailureKind.TIMEOUT
    fleet = decode(encode(FleetConfig(WorkerConfig(max_batch=8), lease_s=5)))
    assert isinstance(fleet, FleetConfig) and fleet.worker.max_batch == 8 and fleet.lease_s == 5.0


def raw(message: dict[str, Any], version: int = PROTOCOL_VERSION, kind: str = "Result") -> bytes:
    return msgpack.packb({"v": version, "t": kind, "m": message}, use_bin_type=True)


RESULT = {"job_id": 1, "images": [b"png"], "seeds": [4], "duration_s": 1.0}


def test_a_result_decodes_from_plain_msgpack() -> None:
    assert decode(raw(RESULT)) == Result(1, (b"png",), (4,), 1.0)


@pytest.mark.parametrize(("data", "error"), [
    (raw(RESULT, version=PROTOCOL_VERSION + 1), f"protocol version {PROTOCOL_VERSION + 1} received, this build speaks"),
    (raw(RESULT, kind="Popen"), "unknown message type 'Popen'"),
    (raw({**RESULT, "extra": 1}), r"unknown fields \['extra'\]"),
    (raw({**RESULT, "job_id": "1"}), "Result.job_id: expected int, got str"),
    (raw({**RESULT, "job_id": True}), "Result.job_id: expected int, got bool"),
    (raw({**RESULT, "images": ["png"]}), r"Result.images\[0\]: expected bytes, got str"),
    (raw({"job_id": 1}), "Result: .*missing"),
    (raw({"job_id": 1, "kind": "exploded", "message": "m"}, kind="Failure"), "'exploded' is not a FailureKind"),
    (b"\xc1", "not a msgpack message"),
    (msgpack.packb([1, 2]), "expected the keys v, t, m"),
], ids=["version", "type", "unknown-field", "str-for-int", "bool-for-int", "str-for-bytes", "missing-field", "enum",
        "not-msgpack", "not-a-map"])
def test_refusals_say_what_is_wrong(data: bytes, error: str) -> None:
    """Each bad input is refused with a message naming the field and the problem."""
    with pytest.raises(CodecError, match=error):
        decode(data)


def test_the_settings_invariant_still_holds_on_decode() -> None:
    settings = dataclasses.asdict(sample(RenderSettings, 1))
    settings["prompt"] = "no tags here"
    request = {"job_id": 1, "user_id": 2, "settings": settings}
    with pytest.raises(CodecError, match="hypernet tags"):
        decode(raw(request, kind="GenerateRequest"))


def test_decode_as_gives_the_message_only_when_it_is_of_that_type() -> None:
    blob = encode(Result(1, (b"png",), (4,), 1.0))
    assert decode_as(blob, Result) == Result(1, (b"png",), (4,), 1.0)
    assert decode_as(blob, Failure) is None
    assert decode_as(raw(RESULT, version=PROTOCOL_VERSION + 1), Result) is None
    assert decode_as(None, Result) is None
