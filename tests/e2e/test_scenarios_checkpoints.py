"""Several checkpoints end to end: the shared bot has ``tiny`` (its default) and ``tiny-b`` (a config entry).

The model autocomplete and ``/models list`` for members; a server default set by an admin and used by requests
that name no model.  (That a button keeps its job's model after the bot process restarts is checked in
``test_scenarios_resilience``, which restarts the shared bot.)
"""

from __future__ import annotations

import pytest

from engine.infotext import parse_infotext
from tests.e2e.scenario import E2E, job_id_of

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(180)]


async def test_model_autocomplete_and_the_models_list(e2e: E2E) -> None:
    fake = e2e.fake
    rec = await fake.autocomplete(fake.member_plain, "imagine", {"prompt": "x", "model": "tiny"}, "model")
    await e2e.wait(lambda: rec.choices is not None, 10, "the model choices")
    assert [(c["name"], c["value"]) for c in rec.choices] == [("tiny", "tiny"), ("tiny-b — Tiny B", "tiny-b")]
    listed = await e2e.ephemeral(await fake.slash(user=fake.member_plain, name="models list"))
    assert listed == ("**Models** (use one with `/imagine model:`; the default is the bot's):\n"
                      "• `tiny`: SD 1.x; defaults: the server-wide defaults — default\n"
                      "• `tiny-b` (Tiny B): SD 1.x; defaults: the server-wide defaults")


async def test_a_server_default_set_by_an_admin_is_used_when_no_model_is_named(e2e: E2E) -> None:
    fake = e2e.fake
    answer = await e2e.ephemeral(await fake.slash(user=fake.member_manager, name="models default",
                                                  options={"name": "tiny-b"}))
    assert answer.startswith("`tiny-b` is now this server's default model")
    try:
        msg = await e2e.result(await e2e.imagine(fake.member_plain, "a quiet harbour", seed=3, steps=1))
        _, parameters = await e2e.image(msg)
        assert parse_infotext(parameters)["Model"] == "tiny-b"
        assert e2e.job(job_id_of(msg))["checkpoint"] == "tiny-b"
    finally:
        reset = await e2e.ephemeral(await fake.slash(user=fake.member_manager, name="models default"))
        assert reset == "This server now uses the bot's default model, `tiny`."
