"""The worker's resident checkpoints: LRU on the device within a byte budget, a host tier, loads counted."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.worker.resident import ResidentModels


@dataclass
class Model:
    name: str
    nbytes: int
    where: list[str] = field(default_factory=list)


def residents(device_bytes: int, host_bytes: int = 0, size: int = 10) -> tuple[ResidentModels[Model], list[str]]:
    loaded: list[str] = []

    def load(name: str) -> Model:
        loaded.append(name)
        return Model(name, size, ["device"])

    def move(model: Model, on_device: bool) -> None:
        model.where.append("device" if on_device else "host")

    return ResidentModels(load, move, device_bytes=device_bytes, host_bytes=host_bytes), loaded


def test_room_for_two_a_third_evicts_the_least_recently_used_and_it_is_loaded_again_when_needed():
    models, loaded = residents(device_bytes=20)
    a = models.get("a")
    models.get("b")
    assert models.get("a") is a  # a used again: b is now the oldest
    models.get("c")
    assert models.on_device == ("a", "c") and loaded == ["a", "b", "c"]
    models.get("b")
    assert loaded == ["a", "b", "c", "b"] and models.on_device == ("c", "b") and models.counts().dropped == 2


def test_a_host_tier_parks_evicted_models_and_brings_them_back_without_loading():
    models, loaded = residents(device_bytes=20, host_bytes=10)
    a = models.get("a")
    models.get("b")
    models.get("c")
    assert models.on_host == ("a",) and a.where == ["device", "host"]
    assert models.get("a") is a and a.where == ["device", "host", "device"] and loaded == ["a", "b", "c"]
    assert models.on_device == ("c", "a") and models.on_host == ("b",)
    models.get("d")  # c goes to the host, b (older there) is dropped
    assert models.on_host == ("c",) and models.counts().dropped == 1


def test_one_model_bigger_than_the_budget_still_runs_alone():
    models, _ = residents(device_bytes=5, size=10)
    models.get("huge")
    assert models.on_device == ("huge",) and models.device_used == 10
    models.get("other")
    assert models.on_device == ("other",)


def test_forget_drops_a_model_from_both_tiers():
    models, loaded = residents(device_bytes=20)
    models.get("a")
    models.forget("a")
    models.get("a")
    assert loaded == ["a", "a"]


def test_evict_all_empties_the_device_parking_what_fits_on_the_host():
    models, _ = residents(device_bytes=30, host_bytes=10)
    models.get("a")
    models.get("b")
    models.evict_all()
    assert models.on_device == () and models.on_host == ("b",) and models.counts().dropped == 1
    assert models.nbytes_of("b") == 10 and models.nbytes_of("a") == 0
