"""The torch-free name table (engine/samplers.py): every A1111 1.8 sampler name, schedule types, infotext rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.samplers import (
    SAMPLER_NAMES,
    SAMPLERS,
    SCHEDULE_TYPES,
    UNSUPPORTED_A1111_SAMPLERS,
    UnknownSampler,
    UnknownSchedule,
    UnsupportedSampler,
    resolve_sampler,
    resolve_sampler_and_schedule,
    resolve_schedule,
)

# A1111 1.8's sampler menu (sd_samplers_kdiffusion / _timesteps), less the four it lists that we do not implement.
A1111_18_NAMES = [
    "DPM++ 2M Karras", "DPM++ SDE Karras", "DPM++ 2M SDE Exponential", "DPM++ 2M SDE Karras", "Euler a", "Euler", "LMS",
    "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun",
    "DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun Exponential", "DPM++ 3M SDE", "DPM++ 3M SDE Karras",
    "DPM++ 3M SDE Exponential", "LMS Karras", "DPM2 Karras", "DPM2 a Karras", "DPM++ 2S a Karras", "DDIM", "PLMS",
    "UniPC",
]


def test_every_a1111_18_name_resolves_to_itself():
    assert sorted(SAMPLER_NAMES) == sorted(A1111_18_NAMES)
    for name in A1111_18_NAMES:
        spec = resolve_sampler(name)
        assert spec.name == name and spec.algorithm and spec.base_name
        assert resolve_sampler(f"  {name.upper()} ") is spec


@pytest.mark.parametrize(("name", "base", "algorithm", "schedule"), [
    ("DPM++ 2M Karras", "DPM++ 2M", "dpmpp_2m", "Karras"),
    ("DPM++ 2M SDE Heun Exponential", "DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun", "Exponential"),
    ("DPM2 a Karras", "DPM2 a", "dpm_2_ancestral", "Karras"),
    ("Euler a", "Euler a", "euler_ancestral", "Uniform"),
    ("LMS", "LMS", "lms", "Uniform"),
])
def test_combined_names_are_a_base_sampler_plus_a_schedule(name, base, algorithm, schedule):
    spec = resolve_sampler(name)
    assert (spec.base_name, spec.algorithm, spec.default_schedule) == (base, algorithm, schedule)
    assert resolve_sampler(base).algorithm == algorithm


def test_a1111_flags():
    discarding = {n for n, s in SAMPLERS.items() if s.discard_penultimate_sigma}
    assert {s.base_name for s in map(resolve_sampler, discarding)} == {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
    second = {s.base_name for s in SAMPLERS.values() if s.second_order}
    assert second == {"Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE"}
    assert {s.base_name for s in SAMPLERS.values() if s.uses_ensd} == {"Euler a", "DPM2 a", "DPM++ 2S a"}
    assert {n for n, s in SAMPLERS.items() if s.family == "timesteps"} == {"DDIM", "PLMS", "UniPC"}


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownSampler, match="unknown sampler 'Euler b'") as err:
        resolve_sampler("Euler b")
    assert all(name in str(err.value) for name in SAMPLER_NAMES)
    with pytest.raises(UnknownSchedule, match="Karras, Exponential"):
        resolve_schedule("Simple")


@pytest.mark.parametrize("name", UNSUPPORTED_A1111_SAMPLERS)
def test_a1111_samplers_we_lack_say_so(name):
    with pytest.raises(UnsupportedSampler, match=f"'{name}' is not supported") as err:
        resolve_sampler(name.lower())
    assert isinstance(err.value, UnknownSampler) and "Euler a" in str(err.value)


@pytest.mark.parametrize(("name", "field", "expected"), [
    ("DPM++ 2M Karras", None, "Karras"),           # 1.8 names carry the schedule
    ("DPM++ 2M", None, "Uniform"),                 # no field, no suffix: Uniform
    ("DPM++ 2M", "Karras", "Karras"),              # 1.9+ infotexts: base name + Schedule type
    ("DPM++ 2M Karras", "exponential", "Exponential"),   # 1.8's lower-case override wins over the suffix
    ("Euler a", "sgm_uniform", "SGM Uniform"),
    ("Euler", "Automatic", "Uniform"),
    ("UniPC", "Karras", "Automatic"),              # the timestep samplers have no sigma schedule
])
def test_infotext_sampler_and_schedule_type(name, field, expected):
    spec, schedule = resolve_sampler_and_schedule(name, field)
    assert schedule == expected and spec is resolve_sampler(name)


def test_schedule_labels():
    assert SCHEDULE_TYPES == ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform")
    assert [resolve_schedule(label.lower()) for label in SCHEDULE_TYPES] == list(SCHEDULE_TYPES)


def test_name_table_imports_without_torch_or_numpy():
    script = ("import sys\nfor heavy in ('torch', 'numpy', 'diffusers'):\n    sys.modules[heavy] = None\n"
              "import engine.samplers as s\nprint(len(s.SAMPLER_NAMES))\n")
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(len(A1111_18_NAMES))
