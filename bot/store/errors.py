"""The store's refusals.  Every one derives from :class:`StoreError`, whose ``str()`` is safe to show a Discord user.

Why a module of their own: both repositories raise them, and callers catch them by name (``from bot.store import
NameTaken``) without caring which repository spoke.  The texts are the ones admins see, so the model service shows
``str(error)`` instead of writing its own version.
"""

from __future__ import annotations

from bot.db import DatabaseBusy, StoreError

__all__ = ["DatabaseBusy", "DuplicateModel", "InvalidName", "NameTaken", "NotFound", "StoreError"]


class NotFound(StoreError):
    def __init__(self, what: str, key: object) -> None:
        self.what, self.key = what, key
        super().__init__(f"{what} #{key} was not found (it may have been deleted).")


class NameTaken(StoreError):
    """A name that clashes (ignoring case) with a model this guild already sees."""

    def __init__(self, name: str, existing_name: str) -> None:
        self.name, self.existing_name = name, existing_name
        if name == existing_name:
            text = f"A model named `{name}` already exists here."
        else:
            text = (f"A model named `{existing_name}` already exists here; names must differ by more than upper/lower "
                    f"case, so pick another name than `{name}`.")
        super().__init__(text)


class InvalidName(StoreError):
    """A model name that breaks the name rule (:mod:`engine.names`); the message says which part."""


class DuplicateModel(StoreError):
    """The same file (sha256) is already installed in this scope."""

    def __init__(self, existing_name: str) -> None:
        self.existing_name = existing_name
        super().__init__(f"This file is already installed here as `{existing_name}`.")


# Their public home is the package (``bot.store.NameTaken``), which is what tracebacks and logs should name.
for _error in (NotFound, NameTaken, InvalidName, DuplicateModel):
    _error.__module__ = "bot.store"
del _error
