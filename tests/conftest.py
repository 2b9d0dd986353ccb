"""Test-run wiring shared by every tier: how ``make test``'s two pytest processes (pytest-xdist) split the suite.

Why: the worker-backed and end-to-end tests start real processes (a worker, a bot, redis-server) once per module, and
the end-to-end scenarios share one bot per package (``tests/e2e/conftest.py``; 15-30 s to start).  A fixture shared
that way is set up again whenever its tests do not run back to back in one process.  ``--dist loadfile`` keeps each
module in one process; this refines it so that the end-to-end scenario modules go to one process together.
"""

from __future__ import annotations

from typing import Any

import pytest

_SHARED_PACKAGES = ("tests/e2e",)  # packages whose scenario modules share a package-scoped fixture


def run_group(nodeid: str) -> str:
    """The unit one process runs back to back: the test's module, or its package for the shared scenarios."""
    module = nodeid.split("::", 1)[0]
    return next((p for p in _SHARED_PACKAGES if module.startswith(f"{p}/test_scenarios_")), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None  # another distribution asked for explicitly: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return run_group(nodeid)

    return GroupScheduling(config, log)
