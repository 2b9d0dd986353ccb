"""Hypercord's Discord side: one cog per feature, plus the UI parts they share.

Cogs (loaded by the runner, in this order): ``imagine`` (/imagine), ``history`` (/history, /show),
``hypernets`` (/hypernets: listing and admin), ``loras``, ``embeddings``, ``models`` (/models: the checkpoints a
server may use), ``owner`` (/status, /sync, health file).  Shared parts:
:mod:`cogs.buttons` (result and progress buttons, restart-proof), :mod:`cogs.job_messages` (how a job's message
shows its progress and result: the job service's presenter), :mod:`cogs.delivery` (posting under Discord's rules),
:mod:`cogs.embeds`, :mod:`cogs.autocomplete`, :mod:`cogs.ui` (confirm view, pager, private replies).

Cogs reach every service through ``interaction.client`` typed as :class:`bot.app.HypercordBot`.
"""

EXTENSIONS = ("cogs.imagine", "cogs.history", "cogs.hypernets", "cogs.loras", "cogs.embeddings", "cogs.models",
              "cogs.owner")
