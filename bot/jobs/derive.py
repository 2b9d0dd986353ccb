"""A new job made from an old one: a reroll (new seed) or a multiplier button (same seed, new multipliers).

Why its own function: the result buttons, the multiplier modal and ``/show``'s buttons all make jobs this way, and
the rules are few but easy to get subtly wrong: the new job belongs to whoever pressed the button, posts in the
channel the button was pressed in, keeps every setting of its parent (the exact hypernet files included) except
the one the button changes, and records its parent for the history.
"""

from __future__ import annotations

from bot.store import Job, NewJob
from engine.render_settings import RenderSettings

__all__ = ["derived_job"]


def derived_job(parent: Job, settings: RenderSettings, *, user_id: int, channel_id: int, guild_id: int | None,
                origin: str, interaction_token: str | None, interaction_created_at: float | None) -> NewJob:
    """A job with ``settings`` (the parent's, changed with ``dataclasses.replace`` or ``with_multipliers``)."""
    return NewJob(user_id=user_id, guild_id=guild_id, channel_id=channel_id, settings=settings, origin=origin,
                  parent_job_id=parent.id, interaction_token=interaction_token,
                  interaction_created_at=interaction_created_at)
