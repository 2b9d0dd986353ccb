"""Logging, set up once, with a filter that redacts anything shaped like a Discord token.

Why a filter on the handlers and not care at call sites: tokens reach logs by accident (an
exception repr, a URL with a webhook token, a library's debug line). A filter on every handler
catches all of them, including third-party loggers such as discord.py's.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

# Bot tokens: base64 user id . timestamp . HMAC (the first part starts with M, N or O for modern ids,
# but any base64url segment of that shape is masked to be safe). Interaction/webhook tokens are long
# base64url strings after "aW50ZXJhY3Rpb246" ("interaction:") or in /webhooks/<id>/<token> paths.
TOKEN_PATTERNS = (
    re.compile(r"[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,40}"),
    re.compile(r"(?<=/webhooks/)(\d+)/[A-Za-z0-9_.-]{20,}"),
    re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_-]{20,}"),
)
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Mask token-shaped substrings."""
    text = TOKEN_PATTERNS[0].sub(REDACTED, text)
    text = TOKEN_PATTERNS[1].sub(lambda m: f"{m.group(1)}/{REDACTED}", text)
    return TOKEN_PATTERNS[2].sub(REDACTED, text)


class TokenRedactingFilter(logging.Filter):
    """Rewrites each record's final message with tokens masked (args are folded in first)."""

    def __init__(self, extra_secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in extra_secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        cleaned = self._mask(message)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        record.msg, record.args = cleaned, None
        return True

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return redact(text)


def setup_logging(level: str = "INFO", file: str = "", secrets: tuple[str, ...] = ()) -> None:
    """Configure the root logger once: stderr (and a rotating file if asked), all redacted."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_hypercord", False):
            root.removeHandler(handler)
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(file, maxBytes=10 * 1024 * 1024, backupCount=5,
                                                             encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(TokenRedactingFilter(secrets))
        handler._hypercord = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("discord.http").setLevel(max(logging.INFO, logging.getLevelName(level)))
