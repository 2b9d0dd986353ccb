"""The one exception type the LoRA package raises for a file it will not use.

Why a ValueError subclass: callers (the intake sandbox, the worker) already treat ValueError as "bad
input, tell the user", and a dedicated type lets them tell a refused LoRA from a programming error.
The message is always one line that names the file and the reason, so it can go straight into a reply.
"""

from __future__ import annotations

__all__ = ["LoraFormatError"]


class LoraFormatError(ValueError):
    """A LoRA-family file that cannot be applied as A1111 would (or that we refuse on purpose)."""
