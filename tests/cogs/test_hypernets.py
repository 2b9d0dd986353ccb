"""/hypernets through the fake Discord with the real bot in-process, the real worker and the real intake.

Models added with real files go through intake (sandbox children, a few seconds each), so only the add tests
use files; listing and paging use registry rows written directly (their files are never read by a listing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from aiohttp import web

from bot.store import Hypernet, NewHypernet
from tests.harness import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "hypernetworks" / "zoo"
MANAGER_ONLY = "Only members with the **Manage Server** permission can do that."
OWNER_ONLY = "Only the bot's owners can do that."


async def add_row(hc: Harness, name: str, *, guild: bool = True, sizes: tuple[int, ...] = (320,),
                  description: str = "", enabled: bool = True) -> Hypernet:
    """A registry row without a file (enough for listing, info and autocomplete)."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    return await hc.store.hypernets.add(NewHypernet(
        name=name, guild_id=hc.fake.guild.id if guild else None, sha256=digest, file_name=f"{digest}.safetensors",
        file_size=1234, sizes=sizes, layer_structure=(1.0, 2.0, 1.0), activation="relu", source="attachment",
        description=description, enabled=enabled, added_by=hc.fake.member_manager.id, base_model="v1-5-pruned"))


async def answer(hc: Harness, rec) -> str:  # type: ignore[no-untyped-def]
    msg = await hc.wait_ephemeral(rec)
    return msg.content


async def final_content(hc: Harness, rec, prefix: tuple[str, ...] = ("Added", "Refused", "A model", "This file",
                                                                     "The ", "`", "Give")) -> str:  # type: ignore[no-untyped-def]
    """The deferred reply once it holds the outcome (it shows progress first)."""
    def done() -> str | None:
        msg = rec.original
        return msg.content if msg is not None and msg.content.startswith(prefix) else None

    return await hc.fake.wait_for(done, timeout=60, what="the outcome of /hypernets add")


async def test_plain_member_and_guild_admin_limits(hc: Harness) -> None:
    fake = hc.fake
    att = fake.make_attachment("pub_zoo_relu.pt", (ZOO / "pub_zoo_relu.pt").read_bytes())
    rec = await fake.slash(fake.member_plain, "hypernets add", {"file": att})
    assert await answer(hc, rec) == MANAGER_ONLY
    for command, options in (("hypernets edit", {"name": "x", "description": "y"}), ("hypernets disable", {"name": "x"}),
                             ("hypernets remove", {"name": "x"})):
        assert await answer(hc, await fake.slash(fake.member_plain, command, options)) == MANAGER_ONLY
    # Global models and the folder rescan are for the bot's owners, not a server's admins.
    rec = await fake.slash(fake.member_manager, "hypernets add", {"file": att, "scope": "global"})
    assert await answer(hc, rec) == OWNER_ONLY
    assert await answer(hc, await fake.slash(fake.member_admin, "hypernets rescan")) == OWNER_ONLY
    assert await hc.store.hypernets.count_search(fake.guild.id, include_disabled=True) == 0


async def test_admin_adds_by_attachment_and_members_see_it(hc: Harness) -> None:
    fake = hc.fake
    att = fake.make_attachment("pub_zoo_relu.pt", (ZOO / "pub_zoo_relu.pt").read_bytes())
    rec = await fake.slash(fake.member_manager, "hypernets add",
                           {"file": att, "description": "crimson ink", "trigger_words": "red", "default_multiplier": 0.8})
    text = await final_content(hc, rec)
    assert rec.deferred and rec.ephemeral
    assert text == ("Added `pub_zoo_relu` (this server): sizes 320, relu, layers [1, 0.025, 1]. "
                    "Use it with `<hypernet:pub_zoo_relu:0.8>`.")
    row = await hc.store.hypernets.by_name("pub_zoo_relu", fake.guild.id)
    assert row is not None and row.guild_id == fake.guild.id and row.added_by == fake.member_manager.id
    assert (row.description, row.trigger_words, row.default_multiplier) == ("crimson ink", "red", 0.8)
    assert (Path(hc.settings.models.store_dir) / row.file_name).is_file()

    # The same file again is one model; a second name is refused before anything is parsed.
    again = fake.make_attachment("copy.pt", (ZOO / "pub_zoo_relu.pt").read_bytes())
    rec = await fake.slash(fake.member_manager, "hypernets add", {"file": again})
    assert await final_content(hc, rec) == "This file is already installed here as `pub_zoo_relu`."
    rec = await fake.slash(fake.member_manager, "hypernets add", {"file": again, "name": "PUB_zoo_relu"})
    assert (await final_content(hc, rec)).startswith("A model named `pub_zoo_relu` already exists here;")

    rec = await fake.slash(fake.member_plain, "hypernets info", {"name": "pub_zoo_relu"})
    embed = (await hc.wait_ephemeral(rec)).embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["title"] == "pub_zoo_relu" and embed["description"] == "crimson ink"
    assert fields["Use it"] == "`<hypernet:pub_zoo_relu:0.8>` in an /imagine prompt"
    assert (fields["Sizes"], fields["Layer structure"], fields["Activation"]) == ("320", "[1, 0.025, 1]", "relu")
    assert fields["Trained on"] == "`v1-5-pruned-emaonly [6ce0161689]`, not installed here (renders use the default model)"
    assert fields["Trigger words"] == "red"
    assert fields["Scope"] == "this server only" and fields["Default multiplier"] == "0.8"
    assert fields["Added"].startswith(f"by <@{fake.member_manager.id}>, <t:")
    assert embed["footer"]["text"].startswith(f"sha256 {row.sha256[:10]} ·")
    assert "⚠️ Compatibility" not in fields


async def test_refused_malicious_upload_says_why_and_adds_nothing(hc: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    torch.save({768: Exploit()}, tmp_path / "evil.pt")
    att = hc.fake.make_attachment("evil.pt", (tmp_path / "evil.pt").read_bytes())
    before = await hc.store.hypernets.count_search(hc.fake.guild.id, include_disabled=True)
    rec = await hc.fake.slash(hc.fake.member_admin, "hypernets add", {"file": att})
    assert await final_content(hc, rec) == ("Refused: the file would run code when loaded (it calls `posix.system`); "
                                            "refused unread, do not load it anywhere else either.")
    assert not marker.exists()
    assert await hc.store.hypernets.count_search(hc.fake.guild.id, include_disabled=True) == before
    assert await hc.store.hypernets.by_name("evil", hc.fake.guild.id) is None


@pytest_asyncio.fixture(loop_scope="module")
async def model_server() -> AsyncIterator[str]:
    """A real HTTP server on loopback that serves a hypernetwork file, like a model host would."""
    data = (ZOO / "pub_zoo_sigmoid.pt").read_bytes()

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/files/pub_zoo_sigmoid.pt", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_admin_adds_by_download_link(hc: Harness, model_server: str) -> None:
    service = hc.bot.models
    saved = service.settings
    service.settings = dataclasses.replace(saved, intake=dataclasses.replace(
        saved.intake, allow_private_addresses=True, allowed_hosts=["127.0.0.1"]))
    try:
        rec = await hc.fake.slash(hc.fake.member_admin, "hypernets add",
                                  {"link": f"{model_server}/files/pub_zoo_sigmoid.pt", "name": "sigmoidLink"})
        text = await final_content(hc, rec)
        assert text.startswith("Added `sigmoidLink` (this server): sizes 320, sigmoid"), text
        assert any(c.startswith("Downloading…") for c in rec.original.contents)
        row = await hc.store.hypernets.by_name("sigmoidLink", hc.fake.guild.id)
        assert row is not None and row.source == "url" and row.source_detail.endswith("/files/pub_zoo_sigmoid.pt")
        rec = await hc.fake.slash(hc.fake.member_admin, "hypernets add", {"link": f"{model_server}/files/missing.pt"})
        assert await final_content(hc, rec) == "Refused: the server answered 404 Not Found; check that the link is right."
    finally:
        service.settings = saved
    rec = await hc.fake.slash(hc.fake.member_admin, "hypernets add", {"link": f"{model_server}/files/x.pt"})
    assert (await final_content(hc, rec)).startswith("Refused: only https:// download links are accepted")


async def test_list_pages_and_flags_mismatched_sizes(hc: Harness) -> None:
    fake = hc.fake
    for i in range(11):
        await add_row(hc, f"pager{i:02d}", description=f"page test {i}")
    await add_row(hc, "pagerSd2", guild=False, sizes=(1024,))
    await add_row(hc, "pagerOff", enabled=False)
    rec = await fake.slash(fake.member_plain, "hypernets list", {"query": "pager"})
    msg = await hc.wait_ephemeral(rec)
    embed = msg.embeds[0]
    assert embed["footer"]["text"].startswith("Page 1/2")
    lines = embed["description"]
    assert "**`pager00`** · this server · ×1 — page test 0" in lines and "pager09" in lines
    assert "pager10" not in lines and "pagerOff" not in lines
    assert [b["label"] for b in msg.buttons()] == ["Previous", "Next"]

    click = await fake.click(fake.member_plain, msg, label="Next")
    await fake.wait_for(lambda: click.acknowledged)
    page2 = await fake.wait_for(lambda: msg.embeds[0]["footer"]["text"].startswith("Page 2/2") and msg.embeds[0])
    assert "pager10" in page2["description"] and "pager00" not in page2["description"]
    assert ("**`pagerSd2`** · global · ×1\n⚠️ Made for SD 2.x (text context 1024) but this model is SD 1.x (text context "
            "768), so it has no effect here") in page2["description"]

    other = await fake.click(fake.member_manager, msg, label="Previous")
    assert (await answer(hc, other)).startswith("These buttons belong to someone else's list")


async def test_autocomplete_returns_matching_enabled_names(hc: Harness) -> None:
    fake = hc.fake
    await add_row(hc, "autoFoxA")
    await add_row(hc, "autoFoxB", enabled=False)
    await add_row(hc, "autoWolf", guild=False)
    rec = await fake.autocomplete(fake.member_plain, "hypernets info", {"name": "autoF"}, focused="name")
    await fake.wait_for(lambda: rec.choices is not None)
    assert [c["value"] for c in rec.choices] == ["autoFoxA"]
    # Admin commands also offer disabled models (to enable them again).
    rec = await fake.autocomplete(fake.member_manager, "hypernets enable", {"name": "autoF"}, focused="name")
    await fake.wait_for(lambda: rec.choices is not None)
    assert [c["value"] for c in rec.choices] == ["autoFoxA", "autoFoxB"]
    assert rec.choices[1]["name"] == "autoFoxB (disabled)"


async def test_edit_enable_disable_and_remove_with_confirmation(hc: Harness) -> None:
    fake = hc.fake
    att = fake.make_attachment("lifecycle.pt", (ZOO / "pub_zoo_softsign.pt").read_bytes())
    rec = await fake.slash(fake.member_manager, "hypernets add", {"file": att})
    assert (await final_content(hc, rec)).startswith("Added `lifecycle`")
    row = await hc.store.hypernets.by_name("lifecycle", fake.guild.id)
    assert row is not None
    path = Path(hc.settings.models.store_dir) / row.file_name

    rec = await fake.slash(fake.member_manager, "hypernets edit", {"name": "lifecycle", "description": "soft",
                                                                    "default_multiplier": 0.5})
    assert (await hc.wait_ephemeral(rec)).content == "Updated `lifecycle`."
    row = await hc.store.hypernets.by_name("lifecycle", fake.guild.id)
    assert (row.description, row.default_multiplier) == ("soft", 0.5)
    rec = await fake.slash(fake.member_manager, "hypernets edit", {"name": "lifecycle", "default_multiplier": 9.0})
    assert await answer(hc, rec) == "The default multiplier must be between -1 and 2."

    rec = await fake.slash(fake.member_manager, "hypernets disable", {"name": "lifecycle"})
    assert (await answer(hc, rec)).startswith("Disabled `lifecycle`")
    assert "lifecycle" not in await hc.store.hypernets.visible_names(fake.guild.id)
    rec = await fake.slash(fake.member_plain, "hypernets info", {"name": "lifecycle"})
    assert await answer(hc, rec) == "There is no hypernetwork named `lifecycle` here."
    rec = await fake.slash(fake.member_manager, "hypernets enable", {"name": "lifecycle"})
    assert await answer(hc, rec) == "Enabled `lifecycle`."
    assert "lifecycle" in await hc.store.hypernets.visible_names(fake.guild.id)

    rec = await fake.slash(fake.member_manager, "hypernets remove", {"name": "lifecycle"})
    question = await hc.wait_ephemeral(rec)
    assert question.content.startswith("Remove `lifecycle` (this server)?")
    keep = await fake.click(fake.member_manager, question, label="Keep")
    await fake.wait_for(lambda: keep.acknowledged)
    await fake.wait_for(lambda: question.content == "Kept `lifecycle`.")
    assert await hc.store.hypernets.by_name("lifecycle", fake.guild.id) is not None

    rec = await fake.slash(fake.member_manager, "hypernets remove", {"name": "lifecycle"})
    question = await hc.wait_ephemeral(rec)
    confirm = await fake.click(fake.member_manager, question, label="Remove")
    await fake.wait_for(lambda: confirm.acknowledged)
    await fake.wait_for(lambda: question.content.startswith("Removed `lifecycle`."))
    assert await hc.store.hypernets.by_name("lifecycle", fake.guild.id) is None
    assert not path.exists()

    # A global model is the owners' business, even for a server admin.
    await add_row(hc, "ownersOnly", guild=False)
    rec = await fake.slash(fake.member_manager, "hypernets disable", {"name": "ownersOnly"})
    assert await answer(hc, rec) == "`ownersOnly` is a global model: only the bot's owners can change it."


async def test_owner_rescans_the_models_folder(hc: Harness) -> None:
    folder = Path(hc.settings.models.hypernetwork_dir)
    (folder / "owner").mkdir(parents=True, exist_ok=True)
    (folder / "owner" / "folderSoftplus.pt").write_bytes((ZOO / "pub_zoo_softplus.pt").read_bytes())
    # A file name that tries to drive the owner's terminal and reverse the reply's text is shown defused.
    (folder / "owner" / "ev\u202eil\x1b]0;pwned\x07\nlora.pt").write_bytes(b'{"error": "Unauthorized"}')
    rec = await hc.fake.slash(hc.fake.member_owner, "hypernets rescan")
    text = await hc.fake.wait_for(lambda: rec.original and rec.original.content.startswith("Rescanned")
                                  and rec.original.content, timeout=60)
    (folder / "owner" / "ev\u202eil\x1b]0;pwned\x07\nlora.pt").unlink()
    assert text == ("Rescanned the models folder: 1 added, 0 updated, 0 removed, 0 unchanged, 1 refused.\n"
                    "Added: `folderSoftplus`\n"
                    "✗ `owner/ev?il lora.pt`: `ev?il lora` cannot be a model name: model names cannot contain control "
                    "characters.")
    row = await hc.store.hypernets.by_name("folderSoftplus", hc.fake.guild.id)
    assert row is not None and row.is_global and row.source_detail == "owner/folderSoftplus.pt"
    rec = await hc.fake.slash(hc.fake.member_owner, "hypernets remove", {"name": "folderSoftplus"})
    assert (await answer(hc, rec)).startswith("`folderSoftplus` comes from the models folder")
