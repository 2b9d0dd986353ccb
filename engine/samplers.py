"""A1111 1.8 sampler names and schedule types, and what each name means to :mod:`engine.sampling`.

Torch-free on purpose: the bot imports this to offer the sampler choices and to reject unknown names before a job is
queued.  A :class:`SamplerSpec` records the facts A1111's sampler table records for each name: the update rule
(``algorithm``), its family, the schedule the name implies, and the flags that change step and evaluation counts.

Names are A1111 1.8's, including the names that carry the schedule ("DPM++ 2M Karras" = DPM++ 2M with the Karras
schedule); A1111 1.9+ still reads those when an image's parameters are pasted, and writes the base name plus a
"Schedule type" field instead, which :func:`resolve_sampler_and_schedule` combines the same way.
A1111 1.8 also lists DPM fast, DPM adaptive, Restart and LCM; they are not implemented here (see
``UNSUPPORTED_A1111_SAMPLERS``) and resolve to a clear error rather than to a different sampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = [
    "DEFAULT_SAMPLER",
    "NOISE_SOURCES",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SCHEDULE_TYPES",
    "UNSUPPORTED_A1111_SAMPLERS",
    "SamplerSpec",
    "UnknownSampler",
    "UnknownSchedule",
    "UnsupportedSampler",
    "resolve_sampler",
    "resolve_sampler_and_schedule",
    "resolve_schedule",
]

Family = Literal["k-diffusion", "timesteps"]

#: A1111's schedule types ("Automatic" = the one the sampler name implies, Uniform for names without a suffix).
SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform")
#: A1111's "RNG" setting: ``GPU`` (its default; an infotext without ``RNG`` means it), ``NV`` (A1111's CPU
#: emulation of CUDA's generator) and ``CPU`` (torch's CPU generator).
NOISE_SOURCES: tuple[str, ...] = ("GPU", "NV", "CPU")
#: Names A1111 1.8 lists that this project does not implement (their maths is not in docs/a1111-sampling.md).
UNSUPPORTED_A1111_SAMPLERS: tuple[str, ...] = ("DPM fast", "DPM adaptive", "Restart", "LCM")


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    """One A1111 sampler name and what it means.

    ``algorithm`` names the update rule (k-diffusion's function name without ``sample_``, or
    ``ddim``/``plms``/``unipc``); ``family`` is "k-diffusion" (sigma schedule, CFG on the denoised prediction) or
    "timesteps" (DDIM/PLMS/UniPC: A1111's own timestep grid, CFG on eps); ``schedule_type`` is the schedule a
    combined name carries ("Karras" for "DPM++ 2M Karras", None for a base name) and :attr:`default_schedule` what
    "Automatic" means for the name.  ``discard_penultimate_sigma`` and ``second_order`` are A1111's flags of the
    same meaning (second order: a step costs two model evaluations, and A1111 resolves prompt-editing steps against
    ``2 * steps``).  ``uses_ensd``: the sampler draws step noise, so A1111's eta noise seed delta changes its images
    and A1111 writes ``ENSD`` into their infotext.  ``base_name`` is the name without its schedule suffix.
    """

    name: str
    algorithm: str
    family: Family = "k-diffusion"
    schedule_type: str | None = None
    discard_penultimate_sigma: bool = False
    second_order: bool = False
    uses_ensd: bool = False
    base_name: str = ""

    @property
    def default_schedule(self) -> str:
        """The schedule "Automatic" stands for: the name's suffix, else Uniform (A1111 1.8's rule)."""
        return self.schedule_type or "Uniform"


def _k(base: str, algorithm: str, *, schedules: tuple[str | None, ...] = (None,), ancestral: bool = False,
       second_order: bool = False, discard: bool = False) -> list[SamplerSpec]:
    """The k-diffusion names of one base sampler: the base name and its "... Karras" / "... Exponential" names."""
    return [SamplerSpec(f"{base} {schedule}" if schedule else base, algorithm, schedule_type=schedule,
                        discard_penultimate_sigma=discard, second_order=second_order, uses_ensd=ancestral,
                        base_name=base)
            for schedule in schedules]


def _t(name: str, algorithm: str) -> SamplerSpec:
    return SamplerSpec(name, algorithm, family="timesteps", base_name=name)


_PLAIN_KARRAS = (None, "Karras")
_ALL_THREE = (None, "Karras", "Exponential")
_SPECS = (
    *_k("Euler a", "euler_ancestral", ancestral=True),
    *_k("Euler", "euler"),
    *_k("LMS", "lms", schedules=_PLAIN_KARRAS),
    *_k("Heun", "heun", second_order=True),
    *_k("DPM2", "dpm_2", schedules=_PLAIN_KARRAS, second_order=True, discard=True),
    *_k("DPM2 a", "dpm_2_ancestral", schedules=_PLAIN_KARRAS, ancestral=True, second_order=True, discard=True),
    *_k("DPM++ 2S a", "dpmpp_2s_ancestral", schedules=_PLAIN_KARRAS, ancestral=True, second_order=True),
    *_k("DPM++ 2M", "dpmpp_2m", schedules=_PLAIN_KARRAS),
    *_k("DPM++ SDE", "dpmpp_sde", schedules=_PLAIN_KARRAS, second_order=True),
    *_k("DPM++ 2M SDE", "dpmpp_2m_sde", schedules=_ALL_THREE),
    *_k("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun", schedules=_ALL_THREE),
    *_k("DPM++ 3M SDE", "dpmpp_3m_sde", schedules=_ALL_THREE, discard=True),
    _t("DDIM", "ddim"),
    _t("PLMS", "plms"),
    _t("UniPC", "unipc"),
)

#: Every accepted name, in the order a menu should show them.
SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in _SPECS})
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
DEFAULT_SAMPLER = "Euler a"
_BY_FOLDED = {name.casefold(): spec for name, spec in SAMPLERS.items()}
_UNSUPPORTED_FOLDED = {name.casefold(): name for name in UNSUPPORTED_A1111_SAMPLERS}
# A1111 1.8 writes "Schedule type" lower-case ("karras") when its global override is set; 1.9+ writes the label.
_SCHEDULES_FOLDED = {label.casefold(): label for label in SCHEDULE_TYPES} | {"sgm_uniform": "SGM Uniform"}


class UnknownSampler(ValueError):
    """A sampler name we do not know; the message lists the valid ones."""

    def __init__(self, name: str, reason: str | None = None) -> None:
        shown = name if len(name) <= 40 else name[:40] + "…"
        super().__init__(f"{reason or f'unknown sampler {shown!r}'}; valid samplers: {', '.join(SAMPLER_NAMES)}")
        self.name = name


class UnsupportedSampler(UnknownSampler):
    """An A1111 sampler name this project does not implement (DPM fast, DPM adaptive, Restart, LCM)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, f"A1111's sampler {name!r} is not supported here")


class UnknownSchedule(ValueError):
    """A schedule type we do not know; the message lists the valid ones."""

    def __init__(self, label: str) -> None:
        shown = label if len(label) <= 40 else label[:40] + "…"
        super().__init__(f"unknown schedule type {shown!r}; valid schedule types: {', '.join(SCHEDULE_TYPES)}")
        self.label = label


def resolve_sampler(name: str) -> SamplerSpec:
    """The spec for an A1111 sampler name (exact, or differing only in letter case / surrounding spaces)."""
    spec = SAMPLERS.get(name) or _BY_FOLDED.get(name.strip().casefold())
    if spec is None:
        unsupported = _UNSUPPORTED_FOLDED.get(name.strip().casefold())
        raise UnsupportedSampler(unsupported) if unsupported else UnknownSampler(name)
    return spec


def resolve_schedule(label: str) -> str:
    """A schedule type label in A1111's spelling ("Karras"), from any letter case or 1.8's "sgm_uniform"."""
    found = _SCHEDULES_FOLDED.get(label.strip().casefold())
    if found is None:
        raise UnknownSchedule(label)
    return found


def resolve_sampler_and_schedule(name: str, schedule_type: str | None = None) -> tuple[SamplerSpec, str]:
    """An infotext's ``Sampler`` and optional ``Schedule type`` as (spec, concrete schedule).

    A1111's rule: a ``Schedule type`` field wins (unless "Automatic"); else the name's suffix; else Uniform.  For
    DDIM, PLMS and UniPC the schedule is reported as "Automatic": they use A1111's own timestep grid.
    """
    spec = resolve_sampler(name)
    schedule = resolve_schedule(schedule_type) if schedule_type else "Automatic"
    if spec.family == "timesteps":
        return spec, "Automatic"
    return spec, spec.default_schedule if schedule == "Automatic" else schedule
