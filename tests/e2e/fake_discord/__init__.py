"""A loopback fake Discord (REST + gateway) that the unmodified discord.py 2.7.1 client talks to.

See docs/testing-e2e.md. Entry point: :class:`FakeDiscord`.
"""

from .limits import DEFAULT_UPLOAD_LIMIT, DiscordError
from .server import FakeDiscord, Injection
from .state import FakeAttachment, FakeChannel, FakeMember, FakeUser, InteractionRecord, StoredMessage

__all__ = [
    "DEFAULT_UPLOAD_LIMIT",
    "DiscordError",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeMember",
    "FakeUser",
    "Injection",
    "InteractionRecord",
    "StoredMessage",
]
