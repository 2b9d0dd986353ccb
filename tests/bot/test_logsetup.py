"""The logging filter masks token-shaped strings wherever they appear in a record."""

from __future__ import annotations

import logging

import pytest

from bot.logsetup import REDACTED, TokenRedactingFilter, redact, setup_logging

BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTA.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"


def test_redact_masks_bot_and_webhook_tokens() -> None:
    text = f"login with {BOT_TOKEN} then POST /webhooks/1234/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpxd2VydHl1aW9w/messages"
    cleaned = redact(text)
    assert BOT_TOKEN not in cleaned and "aW50ZXJhY3Rpb246" not in cleaned
    assert cleaned == f"login with {REDACTED} then POST /webhooks/1234/{REDACTED}/messages"


def test_plain_text_is_untouched() -> None:
    assert redact("job 42 finished in 1.5 s: water elemental woman") == "job 42 finished in 1.5 s: water elemental woman"


def test_filter_masks_args_exceptions_and_explicit_secrets(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("hypercord.test.redact")
    handler_filter = TokenRedactingFilter(extra_secrets=("short-secret",))
    logger.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("token=%s other=%s", BOT_TOKEN, "short-secret")
            try:
                raise RuntimeError(f"bad token {BOT_TOKEN}")
            except RuntimeError:
                logger.exception("failed")
    finally:
        logger.removeFilter(handler_filter)
    text = caplog.text
    assert BOT_TOKEN not in text and "short-secret" not in text
    assert text.count(REDACTED) >= 3


def test_setup_logging_installs_once() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging("INFO")
        setup_logging("INFO")
        ours = [h for h in root.handlers if getattr(h, "_hypercord", False)]
        assert len(ours) == 1
        assert any(isinstance(f, TokenRedactingFilter) for f in ours[0].filters)
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
