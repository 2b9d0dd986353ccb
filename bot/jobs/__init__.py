"""Jobs after validation: the service that runs them, what it reports, where their images are kept.

* :mod:`bot.jobs.service` — :class:`JobService`: admit, store, submit, follow, record, cancel, reconcile;
* :mod:`bot.jobs.presenter` — the states and outcomes it reports and the :class:`JobPresenter` protocol;
* :mod:`bot.jobs.engine_api` — the engine calls it relies on (:class:`EngineAPI`);
* :mod:`bot.jobs.images` — the PNG folder (:class:`ImageStore`); :mod:`bot.jobs.persist` — writes that wait out a
  locked database;
* :mod:`bot.jobs.derive` — new jobs made from an old one (reroll, multiplier buttons).

No Discord in this package: the cogs present jobs.
"""

from bot.jobs.derive import derived_job
from bot.jobs.engine_api import EngineAPI, JobEvents
from bot.jobs.images import ImageStore
from bot.jobs.persist import persist
from bot.jobs.presenter import (
    Cancelled,
    Done,
    Failed,
    JobPresenter,
    JobState,
    Outcome,
    Paused,
    PresenterFor,
    Rendering,
    Waiting,
)
from bot.jobs.service import JobRefused, JobService

__all__ = [
    "Cancelled", "Done", "EngineAPI", "Failed", "ImageStore", "JobEvents", "JobPresenter", "JobRefused", "JobService",
    "JobState", "Outcome", "Paused", "PresenterFor", "Rendering", "Waiting", "derived_job", "persist",
]
