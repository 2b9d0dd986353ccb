"""/hypernets end to end: listing, autocomplete, and admins adding models by attachment and by download link.

The bot starts with three drop-in models in its models folder (see ``botproc.FOLDER_MODELS``).  Added models are
tiny A1111 files from ``tests/fixtures/hypernetworks/zoo``; a link is served by a loopback HTTP server.  After an
add, the model must be usable in /imagine right away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from engine.infotext import parse_infotext
from tests.e2e.botproc import FIXTURE_ZOO, FOLDER_MODELS
from tests.e2e.http_server import FileServer
from tests.e2e.scenario import E2E

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(180)]


@pytest_asyncio.fixture(loop_scope="package", scope="module")
async def files() -> AsyncIterator[FileServer]:
    async with FileServer({"models/eluStyle.pt": (FIXTURE_ZOO / "pub_zoo_elu.pt").read_bytes()}) as server:
        yield server


def _hypernet(e2e: E2E, name: str):
    rows = [r for r in e2e.hypernet_rows() if r["name"] == name]
    return rows[0] if rows else None


async def _renders_with(e2e: E2E, name: str) -> None:
    rec = await e2e.imagine(e2e.fake.member_plain, f"a test of <hypernet:{name}:0.9>", steps=1)
    msg = await e2e.result(rec)
    _, parameters = await e2e.image(msg)
    assert f"<hypernet:{name}:0.9>" in parse_infotext(parameters)["Prompt"]


async def test_list_shows_the_folder_models(e2e: E2E) -> None:
    rec = await e2e.fake.slash(user=e2e.fake.member_plain, name="hypernets list")
    text = await e2e.ephemeral(rec)
    assert all(name in text for name in FOLDER_MODELS), text
    assert {r["source"] for r in e2e.hypernet_rows() if r["name"] in FOLDER_MODELS} == {"folder"}


async def test_autocomplete_offers_installed_names(e2e: E2E) -> None:
    fake = e2e.fake
    rec = await fake.autocomplete(user=fake.member_plain, name="imagine", options={"prompt": "x", "hypernet": "wat"},
                                  focused="hypernet")
    await e2e.wait(lambda: rec.choices is not None, 10, "autocomplete choices")
    assert [c["value"] for c in rec.choices] == ["waterElemental_10"]
    rec = await fake.autocomplete(user=fake.member_plain, name="hypernets info", options={"name": ""}, focused="name")
    await e2e.wait(lambda: rec.choices is not None, 10, "autocomplete choices")
    assert set(FOLDER_MODELS) <= {c["value"] for c in rec.choices}


async def test_info_describes_a_model(e2e: E2E) -> None:
    rec = await e2e.fake.slash(user=e2e.fake.member_plain, name="hypernets info", options={"name": "waterElemental_10"})
    text = await e2e.ephemeral(rec)
    embed = rec.original.embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["title"] == "waterElemental_10" and "relu" in fields["Activation"].lower(), (text, fields)


async def test_admin_adds_a_model_by_attachment(e2e: E2E) -> None:
    fake = e2e.fake
    att = fake.make_attachment("mishStyle.pt", (FIXTURE_ZOO / "pub_zoo_mish.pt").read_bytes())
    rec = await fake.slash(user=fake.member_admin, name="hypernets add", options={"file": att, "description": "soft"})
    await e2e.final_text(rec, "Added", 60)
    assert rec.ephemeral
    row = _hypernet(e2e, "mishStyle")
    assert row is not None and (row["source"], row["guild_id"], row["added_by"]) == ("attachment", fake.guild.id,
                                                                                     fake.member_admin.id)
    await _renders_with(e2e, "mishStyle")


async def test_manager_adds_a_model_by_download_link(e2e: E2E, files: FileServer) -> None:
    fake = e2e.fake
    url = files.url("models/eluStyle.pt")
    rec = await fake.slash(user=fake.member_manager, name="hypernets add", options={"link": url})
    await e2e.final_text(rec, "Added", 60)
    assert files.hits == ["models/eluStyle.pt"]
    row = _hypernet(e2e, "eluStyle")
    assert row is not None and (row["source"], row["source_detail"]) == ("url", url)
    await _renders_with(e2e, "eluStyle")


async def test_plain_member_cannot_add_a_model(e2e: E2E) -> None:
    fake = e2e.fake
    before = len(e2e.hypernet_rows())
    att = fake.make_attachment("selu.pt", (FIXTURE_ZOO / "pub_zoo_selu.pt").read_bytes())
    rec = await fake.slash(user=fake.member_plain, name="hypernets add", options={"file": att})
    text = await e2e.ephemeral(rec)
    assert "Manage Server" in text, text
    assert len(e2e.hypernet_rows()) == before and _hypernet(e2e, "selu") is None


async def test_a_broken_file_is_refused_with_a_reason(e2e: E2E) -> None:
    fake = e2e.fake
    before = len(e2e.hypernet_rows())
    data = (FIXTURE_ZOO.parent / "pub_err_unknown_activation.pt").read_bytes()
    rec = await fake.slash(user=fake.member_admin, name="hypernets add",
                           options={"file": fake.make_attachment("broken.pt", data)})
    await e2e.wait(lambda: rec.original is not None and not rec.original.loading
                   and "Checking" not in rec.original.content, 60, "the verdict on the broken file")
    assert "activation" in rec.original.content.lower(), rec.original.content
    assert len(e2e.hypernet_rows()) == before
