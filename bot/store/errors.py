"""The store's refusals.  Every one derives from :class:`StoreError`, whose ``str()`` is safe to show a Discord user.

Why a module of their own: both repositories raise them, and callers catch them by name (``from bot.store import
NameTaken``) without caring which repository spoke.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.db import DatabaseBusy, StoreError

if TYPE_CHECKING:
    from bot.store.hypernets import Hypernet

__all__ = ["DatabaseBusy", "DuplicateModel", "InvalidName", "NameTaken", "NotFound", "StoreError"]


class NotFound(StoreError):
    def __init__(self, what: str, key: object) -> None:
        self.what, self.key = what, key
        super().__init__(f"{what} #{key} was not found (it may have been deleted).")


class NameTaken(StoreError):
    def __init__(self, name: str, existing_name: str) -> None:
        self.name, self.existing_name = name, existing_name
        if name == existing_name:
            text = f"There is already a hypernetwork called “{name}” here. Please pick another name."
        else:
            text = (f"“{name}” clashes with the existing hypernetwork “{existing_name}”: names must differ by more "
                    f"than upper/lower case. Please pick another name.")
        super().__init__(text)


class InvalidName(StoreError):
    """A hypernetwork name that cannot be stored (empty, too long, padded, or with control characters)."""


class DuplicateModel(StoreError):
    def __init__(self, existing: Hypernet) -> None:
        self.existing = existing
        super().__init__(f"This file is already installed here as “{existing.name}”.")


# Their public home is the package (``bot.store.NameTaken``), which is what tracebacks and logs should name.
for _error in (NotFound, NameTaken, InvalidName, DuplicateModel):
    _error.__module__ = "bot.store"
del _error
