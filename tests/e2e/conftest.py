"""Fixtures for the fake Discord server's self-tests (the lead may merge these with the e2e suite's)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.e2e.fake_discord import FakeDiscord


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """A started fake; at teardown no unknown route may have been hit."""
    async with FakeDiscord() as server:
        yield server
        assert server.unhandled == [], f"unknown routes were called: {server.unhandled}"
