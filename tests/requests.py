"""Render settings, engine requests and new jobs for tests, with the settings' invariant taken care of.

A :class:`RenderSettings` value must carry one hypernet tag in its prompt per hypernet it applies; tests that only
care about the images pass ``hypernets`` and a plain prompt, and :func:`settings` appends the tags.
"""

from __future__ import annotations

from typing import Any

from bot.store import NewJob
from engine.prompt import format_tag, parse_hypernet_tags
from engine.protocol import GenerateRequest, HypernetRef, RenderSettings


def settings(prompt: str = "a cat", *, hypernets: tuple[HypernetRef, ...] = (), **fields: Any) -> RenderSettings:
    """Settings with ``fields``; a ``prompt`` without tags gets one per hypernet appended, in order."""
    if hypernets and not parse_hypernet_tags(prompt)[1]:
        prompt = " ".join([prompt, *(format_tag(h.name, h.multiplier) for h in hypernets)])
    return RenderSettings(prompt=prompt, hypernets=hypernets, **fields)


def request(job_id: int, user_id: int = 1, prompt: str = "a cat", **fields: Any) -> GenerateRequest:
    return GenerateRequest(job_id=job_id, user_id=user_id, settings=settings(prompt, **fields))


_JOB_FIELDS = ("origin", "parent_job_id", "interaction_token", "interaction_created_at", "notes")


def new_job(user_id: int = 1, guild_id: int | None = 10, channel_id: int = 20, **fields: Any) -> NewJob:
    """A job to store: ``origin``, ``parent_job_id`` and the interaction fields go to the job, the rest (prompt,
    hypernets, seed, ...) to its settings."""
    job_fields = {k: fields.pop(k) for k in _JOB_FIELDS if k in fields}
    return NewJob(user_id=user_id, guild_id=guild_id, channel_id=channel_id,
                  settings=settings(fields.pop("prompt", "a cat"), **fields), **job_fields)
