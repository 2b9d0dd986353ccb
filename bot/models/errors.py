"""The model service's refusal: one line for the admin, and nothing written when it is raised.

Why beside the service: intake refusals (:class:`engine.intake.IntakeRefused`), name-rule refusals
(:class:`engine.names.InvalidModelName`) and the store's (name taken, duplicate file) all reach the admin as a
:class:`ModelError`, phrased by :func:`refused` and :func:`bad_name` so every path words them the same way.  Names
and texts that came with a file pass through :func:`engine.intake.clean_text` / :func:`engine.intake.quote_text`
here, so no reply or log line carries a stranger's newlines, terminal escapes or bidi overrides.
"""

from __future__ import annotations

from bot.errors import UserFacingError
from bot.models.kinds import ModelKind, kind_for_file
from engine.intake import INSTALLABLE, FileIdentity, IntakeRefused, clean_text, quote_text, what_it_is
from engine.intake.identify import runnable
from engine.names import InvalidModelName

__all__ = ["ModelError", "bad_name", "refused"]


class ModelError(UserFacingError):
    """A refusal whose one-line message is shown to the admin; nothing was written when it is raised.

    ``identity``: what intake found the file to be, when the refusal came from intake (a LoRA, a web page...).
    """

    def __init__(self, message: str, identity: FileIdentity | None = None) -> None:
        super().__init__(message)
        self.identity = identity


def refused(error: IntakeRefused, kind: ModelKind | None = None, *, in_folder: bool = False) -> ModelError:
    """Intake's reason as the admin reads it: ``Refused: <reason>.``  A file of another installable kind than
    ``kind`` (a LoRA given to ``/hypernets add``) is named with the command that takes it, or for a file in a
    drop-in folder (``in_folder``), with the folder it belongs in."""
    identity = error.identity
    if kind is not None and identity is not None and identity.kind in INSTALLABLE \
            and identity.kind is not kind.file_kind and runnable(identity):
        other = kind_for_file(identity.kind)
        if other is not None:
            fix = (f"move it into the {other.noun} folder (`{other.folder_setting}`)" if in_folder
                   else f"add it with `/{other.command} add`")
            return ModelError(f"Refused: this is {what_it_is(identity)}, not {kind.article}; {fix}.", identity)
    text = clean_text(error, 500).strip()
    return ModelError(f"Refused: {text}" + ("" if text.endswith((".", "!", "?")) else "."), identity)


def bad_name(name: str, error: InvalidModelName, *, from_file: bool = False) -> ModelError:
    """Why ``name`` cannot be a model name; for a file stem, how to name the model instead."""
    shown = quote_text(name, 80)
    if from_file:
        return ModelError(f"The file name `{shown}` cannot be a model name ({clean_text(error)}); give one with the "
                          "`name` option.")
    return ModelError(f"`{shown}` cannot be a model name: {clean_text(error)}.")
