"""The model service's refusal: one line for the admin, and nothing written when it is raised.

Why beside the service: intake refusals (:class:`engine.intake.IntakeRefused`), name-rule refusals
(:class:`engine.names.InvalidModelName`) and the store's (name taken, duplicate file) all reach the admin as a
:class:`ModelError`, phrased by :func:`refused` and :func:`bad_name` so every path words them the same way.
"""

from __future__ import annotations

from bot.errors import UserFacingError
from engine.intake import IntakeRefused
from engine.names import InvalidModelName

__all__ = ["ModelError", "bad_name", "refused"]


class ModelError(UserFacingError):
    """A refusal whose one-line message is shown to the admin; nothing was written when it is raised."""


def refused(error: IntakeRefused) -> ModelError:
    """Intake's reason as the admin reads it: ``Refused: <reason>.``"""
    text = str(error).strip()
    return ModelError(f"Refused: {text}" + ("" if text.endswith((".", "!", "?")) else "."))


def bad_name(name: str, error: InvalidModelName, *, from_file: bool = False) -> ModelError:
    """Why ``name`` cannot be a model name; for a file stem, how to name the model instead."""
    if from_file:
        return ModelError(f"The file name `{name[:80]}` cannot be a model name ({error}); give one with the `name` "
                          f"option.")
    return ModelError(f"`{name[:80]}` cannot be a model name: {error}.")
