"""Which checkpoint a request renders on, and why: the one named, else the one its hypernetwork was trained on, else
the server's default, else the owner's.

Why a rule of its own: a hypernetwork only modifies the model under it, and the guides users follow say to start
with the model it was trained with.  A1111 records that model in the hypernetwork file (``sd_checkpoint_name`` and
the ``sd_checkpoint`` hash; intake keeps both as the model's ``base_model``, A1111's title ``name [hash]``), so an
unnamed model follows the (first) hypernetwork when that checkpoint is installed and offered here — and the result
says so, or says why it could not.  A server's admins choose a default and may disallow installed checkpoints
(:mod:`bot.store`); the owner's catalog (:mod:`bot.checkpoints`) says what is installed.  Pure: the caller reads the
rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.checkpoints import CatalogEntry, CheckpointCatalog
from bot.store import GuildCheckpoints, Hypernet
from engine.render_settings import RenderSettings

__all__ = ["CheckpointChoice", "CheckpointProblem", "available", "choose", "entry_of", "find_installed",
           "server_default"]

UNKNOWN = "There is no model named `{name}` here. `/models list` shows the models you can use on this server."
NOT_OFFERED = "The model `{name}` is not offered on this server. `/models list` shows the models you can use here."
TRAINED_ON = "Model `{model}`: the checkpoint the hypernetwork `{hypernet}` was trained on."
TRAINED_ON_ABSENT = ("Model `{model}` ({whose} default): the hypernetwork `{hypernet}` was trained on `{base}`, which "
                     "is not installed here.")
TRAINED_ON_NOT_OFFERED = ("Model `{model}` ({whose} default): the hypernetwork `{hypernet}` was trained on `{base}`, "
                          "which this server does not offer.")


class CheckpointProblem(ValueError):
    """A named model that cannot be used here; ``str()`` is the user's message."""


@dataclass(frozen=True, slots=True)
class CheckpointChoice:
    """The checkpoint chosen and, when it was not named, a note for the result saying why (or "")."""

    entry: CatalogEntry
    note: str = ""


def available(catalog: CheckpointCatalog, guild: GuildCheckpoints) -> list[CatalogEntry]:
    """The installed checkpoints this server may use, in the catalog's order."""
    return [e for e in catalog.usable() if e.name not in guild.disallowed]


def server_default(catalog: CheckpointCatalog, guild: GuildCheckpoints) -> tuple[CatalogEntry, str]:
    """The server's default if it is still installed, else the owner's; and whose default it is."""
    chosen = catalog.get(guild.default) if guild.default else None
    if chosen is not None and chosen.usable and chosen.name not in guild.disallowed:
        return chosen, "this server's"
    entry = catalog.get(catalog.default)
    assert entry is not None  # the catalog refuses a default it does not hold
    return entry, "the bot's"


def entry_of(catalog: CheckpointCatalog, setting: str) -> CatalogEntry | None:
    """The installed checkpoint a stored job's setting means: its name ("" the default), or — for jobs made before
    checkpoints had names — its source."""
    found = catalog.get(setting or catalog.default)
    if found is None:
        found = next((e for e in catalog.entries.values() if e.source == setting), None)
    return found if found is not None and found.usable else None


def find_installed(catalog: CheckpointCatalog, typed: str) -> CatalogEntry | None:
    """The usable checkpoint named ``typed``, else the one whose name or display name it is, ignoring case."""
    typed = typed.strip()
    exact = catalog.get(typed)
    if exact is not None:
        return exact if exact.usable else None
    folded = typed.casefold()
    found = [e for e in catalog.usable() if folded in (e.name.casefold(), e.display_name.casefold())]
    return found[0] if len(found) == 1 else None


def choose(catalog: CheckpointCatalog, guild: GuildCheckpoints, *, named: str | None, settings: RenderSettings,
           hypernets: Mapping[str, Hypernet]) -> CheckpointChoice:
    """The checkpoint for a request (``settings`` as built without one; ``hypernets`` the server's, by name)."""
    if named:
        entry = find_installed(catalog, named)
        if entry is None:
            raise CheckpointProblem(UNKNOWN.format(name=named.strip()[:80].replace("`", "ˋ")))
        if entry.name in guild.disallowed:
            raise CheckpointProblem(NOT_OFFERED.format(name=entry.name))
        return CheckpointChoice(entry)
    fallback, whose = server_default(catalog, guild)
    first = next((hypernets[h.name] for h in settings.hypernets if h.name in hypernets), None)
    base = first.base_model if first is not None else None
    if first is None or not base:
        return CheckpointChoice(fallback)
    trained = catalog.trained_on_record(base)
    if trained is not None and trained.name not in guild.disallowed:
        return CheckpointChoice(trained, TRAINED_ON.format(model=trained.name, hypernet=first.name))
    template = TRAINED_ON_NOT_OFFERED if trained is not None else TRAINED_ON_ABSENT
    return CheckpointChoice(fallback, template.format(model=fallback.name, whose=whose, hypernet=first.name,
                                                      base=base[:80]))
