"""Self-tests: an unmodified discord.py 2.7.1 ``commands.Bot`` talks to the fake over loopback."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.e2e.fake_discord import FakeDiscord


def png_bytes(size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((size, size), 64).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class Counter(discord.ui.DynamicItem[discord.ui.Button], template=r"t:count:(?P<n>\d+)"):
    """A restart-proof button: the count lives in the custom_id."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label=f"Count {n}", custom_id=f"t:count:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any) -> Counter:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None).add_item(Counter(self.n + 1))
        await interaction.response.edit_message(content=f"count {self.n + 1} by {interaction.user.name}", view=view)


class NameModal(discord.ui.Modal, title="Your name"):
    name = discord.ui.TextInput(label="Name", custom_id="t:name", max_length=50)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"hello {self.name.value}")


class Probe(commands.Cog):
    """Commands that exercise one fake feature each; outcomes the fake cannot see go to ``bot.seen``."""

    hn = app_commands.Group(name="hn", description="hypernets")

    def __init__(self, bot: TBot) -> None:
        self.bot = bot

    @app_commands.command(description="pong")
    async def ping(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"pong {interaction.filesize_limit}")

    @app_commands.command(description="defer then edit with a file and a button")
    async def render(self, interaction: discord.Interaction, prompt: str, steps: int = 2) -> None:
        await interaction.response.defer(thinking=True)
        for i in range(1, steps + 1):
            await interaction.edit_original_response(content=f"{prompt}: step {i}/{steps}")
        view = discord.ui.View(timeout=None).add_item(Counter(0))
        await interaction.edit_original_response(content=f"{prompt}: done", view=view,
                                                 attachments=[discord.File(io.BytesIO(png_bytes()), "out.png")])

    @app_commands.command(description="ephemeral")
    async def secret(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("only you", ephemeral=True)

    @app_commands.command(description="modal")
    async def ask(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(NameModal())

    @app_commands.command(description="defer + followup")
    async def later(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send("followed up", ephemeral=True)
        await interaction.followup.send("second followup", ephemeral=True)

    @app_commands.command(description="admins only")
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.default_permissions(manage_guild=True)
    async def admin(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"perms {interaction.permissions.value}")

    @admin.error
    async def admin_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await interaction.response.send_message("denied", ephemeral=True)

    @app_commands.command(description="pick with autocomplete")
    async def pick(self, interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f"picked {name}")

    @pick.autocomplete("name")
    async def pick_complete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = [f"water{i}" for i in range(40)] + ["fire"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)][:25]

    @hn.command(name="add", description="upload a file")
    async def hn_add(self, interaction: discord.Interaction, file: discord.Attachment) -> None:
        data = await file.read()
        await interaction.response.send_message(f"got {file.filename} {len(data)} {data[:4]!r}")

    @app_commands.command(description="too long content, then too big upload")
    async def limits(self, interaction: discord.Interaction) -> None:
        for attempt in (lambda: interaction.response.send_message("x" * 2001),
                        lambda: interaction.response.send_message(file=discord.File(io.BytesIO(b"0" * 2048), "big.bin"))):
            try:
                await attempt()
            except discord.HTTPException as e:
                self.bot.seen.append((e.status, e.code, e.text))
        await interaction.response.send_message("within limits")

    @app_commands.command(description="answers too late")
    async def slow(self, interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.4)
        try:
            await interaction.response.send_message("too late")
        except discord.NotFound as e:
            self.bot.seen.append((e.status, e.code, e.text))

    @app_commands.command(description="answers, waits, edits")
    async def twostep(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("first")
        await self.bot.go.wait()
        try:
            await interaction.edit_original_response(content="second")
        except discord.HTTPException as e:
            self.bot.seen.append((e.status, e.code, e.text))

    @app_commands.command(description="posts to the channel with the bot token")
    async def post(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("posting")
        await interaction.channel.send("posted with the bot token")

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        self.bot.messages.append(message.content)


class TBot(commands.Bot):
    def __init__(self, guild_id: int) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True  # exercises op 8 REQUEST_GUILD_MEMBERS → GUILD_MEMBERS_CHUNK
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.1)
        self.guild_id = guild_id
        self.ready_count = 0
        self.seen: list[Any] = []  # HTTP errors commands caught: (status, code, text)
        self.messages: list[str] = []  # contents seen by on_message
        self.go = asyncio.Event()

    async def setup_hook(self) -> None:
        await self.add_cog(Probe(self))
        self.add_dynamic_items(Counter)
        guild = discord.Object(self.guild_id)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)

    async def on_ready(self) -> None:
        self.ready_count += 1


@pytest_asyncio.fixture
async def bot(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TBot]:
    monkeypatch.setattr(discord.http.Route, "BASE", fake.rest_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    client = TBot(fake.guild.id)
    task = asyncio.create_task(client.start(fake.token))
    await fake.wait_for(lambda: client.ready_count >= 1 or task.done(), what="on_ready")
    if task.done():
        task.result()
    yield client
    await client.close()
    await task


@pytest.mark.asyncio
async def test_connect_sync_and_permissions(fake: FakeDiscord, bot: TBot) -> None:
    guild = bot.get_guild(fake.guild.id)
    assert guild is not None and guild.default_role.id == guild.id
    assert {c.name: c.is_nsfw() for c in guild.text_channels} == {"general": False, "nsfw-art": True}
    assert guild.get_member(fake.member_admin.id).guild_permissions.administrator
    assert guild.get_member(fake.member_manager.id).guild_permissions.manage_guild
    assert not guild.get_member(fake.member_plain.id).guild_permissions.manage_guild
    assert fake.guild_sync_calls == 1 and fake.global_sync_calls == 0
    admin_cmd = fake.find_command("admin")
    assert admin_cmd["default_member_permissions"] == str(1 << 5) and admin_cmd["application_id"] == str(bot.user.id)

    results = {}
    for who in (fake.member_admin, fake.member_manager, fake.member_plain):
        cmd = await fake.slash(user=who, name="admin")
        results[who.user.name] = await fake.wait_for(lambda cmd=cmd: cmd.original and cmd.original.content)
    assert results["alice_admin"] == f"perms {(1 << 53) - 1}"  # Administrator → every bit, manage_guild included
    assert results["mo_manager"].startswith("perms ") and results["pat_plain"] == "denied"


@pytest.mark.asyncio
async def test_slash_send_message_and_ephemeral(fake: FakeDiscord, bot: TBot) -> None:
    cmd = await fake.slash(user=fake.member_plain, name="ping", attachment_size_limit=12345)
    await fake.wait_for(lambda: cmd.original)
    assert cmd.response_type == 4 and cmd.original.content == "pong 12345" and not cmd.ephemeral
    assert cmd.original.payload["interaction_metadata"]["user"]["id"] == str(fake.member_plain.id)
    secret = await fake.slash(user=fake.member_plain, name="secret")
    await fake.wait_for(lambda: secret.original)
    assert secret.ephemeral and secret.original.ephemeral and secret.original.content == "only you"
    assert secret.original not in fake.channel_messages(fake.channel_general)

    # A second initial response is refused like Discord does.
    async with aiohttp.ClientSession() as s, s.post(f"{fake.rest_base}/interactions/{cmd.id}/{cmd.token}/callback",
                                                    json={"type": 4, "data": {"content": "again"}}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == 40060


@pytest.mark.asyncio
async def test_defer_edit_file_button_click(fake: FakeDiscord, bot: TBot) -> None:
    cmd = await fake.slash(user=fake.member_plain, name="render", options={"prompt": "cat", "steps": 2})
    msg = await fake.wait_for(lambda: cmd.original and cmd.original.attachments and cmd.original)
    assert cmd.deferred and msg.history[0]["flags"] & 128  # the "thinking…" version came first
    assert msg.contents == ["", "cat: step 1/2", "cat: step 2/2", "cat: done"] and not msg.loading
    att = msg.attachments[0]
    assert att["filename"] == "out.png" and att["width"] == 16
    assert await fake.download(att) == fake.attachment_bytes(att) and fake.attachment_bytes(att)[:4] == b"\x89PNG"

    click = await fake.click(user=fake.member_manager, message=msg, label="Count 0")
    await fake.wait_for(lambda: click.acknowledged)
    assert click.response_type == 7 and click.original is msg
    assert msg.content == "count 1 by mo_manager" and msg.find_component(custom_id="t:count:1")["label"] == "Count 1"


@pytest.mark.asyncio
async def test_modal_and_autocomplete(fake: FakeDiscord, bot: TBot) -> None:
    ask = await fake.slash(user=fake.member_plain, name="ask")
    await fake.wait_for(lambda: ask.modal)
    assert ask.response_type == 9 and ask.modal["title"] == "Your name"
    sub = await fake.submit_modal(user=fake.member_plain, source=ask, values={"t:name": "Pat"})
    await fake.wait_for(lambda: sub.original)
    assert sub.original.content == "hello Pat"

    ac = await fake.autocomplete(user=fake.member_plain, name="pick", options={"name": "wat"}, focused="name")
    await fake.wait_for(lambda: ac.choices is not None)
    assert len(ac.choices) == 25 and all(c["value"].startswith("water") for c in ac.choices)


@pytest.mark.asyncio
async def test_subcommand_with_attachment_option(fake: FakeDiscord, bot: TBot) -> None:
    blob = b"PK\x03\x04rest-of-file"
    upload = fake.make_attachment("style.pt", blob)
    cmd = await fake.slash(user=fake.member_admin, name="hn add", options={"file": upload})
    await fake.wait_for(lambda: cmd.original)
    assert cmd.original.content == f"got style.pt {len(blob)} {blob[:4]!r}"


@pytest.mark.asyncio
async def test_followup_replaces_loading_message_and_survives_429(fake: FakeDiscord, bot: TBot) -> None:
    inj = fake.inject("POST", r"/webhooks/\d+/[^/]+", status=429, retry_after=0.05)
    cmd = await fake.slash(user=fake.member_plain, name="later")
    await fake.wait_for(lambda: len(cmd.followups) == 1)
    assert inj.hits == 1
    assert cmd.original.contents == ["", "followed up"]  # the first followup edited "thinking…"
    assert not cmd.original.ephemeral and cmd.followup_edits == 1  # ... and stayed public, whatever its flag said
    assert cmd.followups[0].content == "second followup" and cmd.followups[0].ephemeral


@pytest.mark.asyncio
async def test_5xx_is_retried_on_channel_send(fake: FakeDiscord, bot: TBot) -> None:
    inj = fake.inject("POST", r"/channels/\d+/messages", status=502)
    cmd = await fake.slash(user=fake.member_plain, name="post")
    await fake.wait_for(lambda: any(m.content == "posted with the bot token"
                                    for m in fake.channel_messages(fake.channel_general)))
    assert inj.hits == 1 and cmd.original.content == "posting"


@pytest.mark.asyncio
async def test_limits_are_enforced(fake: FakeDiscord, bot: TBot) -> None:
    cmd = await fake.slash(user=fake.member_plain, name="limits", attachment_size_limit=1024)
    await fake.wait_for(lambda: cmd.original)
    (s1, c1, t1), (s2, c2, _) = bot.seen[:2]
    assert (s1, c1) == (400, 50035) and "data.content" in t1 and "2000" in t1
    assert (s2, c2) == (413, 40005)
    assert cmd.original.content == "within limits"

    rows = [{"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": f"r{i}"}]} for i in range(6)]
    route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=fake.channel_general.id)
    with pytest.raises(discord.HTTPException) as exc:
        await bot.http.request(route, json={"content": "rows", "components": rows})
    assert exc.value.code == 50035 and "components" in exc.value.text
    channel = bot.get_channel(fake.channel_general.id)
    with pytest.raises(discord.HTTPException) as exc:
        await channel.send(embeds=[discord.Embed(description="d" * 4000), discord.Embed(description="d" * 4000)])
    assert exc.value.code == 50035 and "6000" in exc.value.text


@pytest.mark.asyncio
async def test_late_response_and_expired_token(fake: FakeDiscord, bot: TBot) -> None:
    fake.response_timeout = 0.2
    slow = await fake.slash(user=fake.member_plain, name="slow")
    await fake.wait_for(lambda: bot.seen)
    assert bot.seen.pop() == (404, 10062, "Unknown interaction") and not slow.acknowledged and slow.late_callbacks == 1

    fake.response_timeout = 3.0
    two = await fake.slash(user=fake.member_plain, name="twostep")
    await fake.wait_for(lambda: two.original)
    two.expire()
    bot.go.set()
    await fake.wait_for(lambda: bot.seen)
    assert bot.seen.pop() == (401, 50027, "Invalid Webhook Token") and two.original.contents == ["first"]


@pytest.mark.asyncio
async def test_reconnect_resumes_and_replays(fake: FakeDiscord, bot: TBot) -> None:
    await fake.gateway.reconnect()
    await fake.user_message(fake.member_plain, "sent while away")
    await fake.wait_for(lambda: "sent while away" in bot.messages)
    assert fake.gateway.resume_count == 1 and fake.gateway.replayed >= 1 and fake.gateway.identify_count == 1


@pytest.mark.asyncio
async def test_invalid_session_reidentifies(fake: FakeDiscord, bot: TBot) -> None:
    await fake.gateway.invalidate()
    await fake.wait_for(lambda: bot.ready_count == 2)
    assert fake.gateway.identify_count == 2 and fake.gateway.resume_count == 0
    cmd = await fake.slash(user=fake.member_plain, name="ping")
    await fake.wait_for(lambda: cmd.original)


@pytest.mark.asyncio
async def test_bad_token_and_unknown_route(fake: FakeDiscord, bot: TBot) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(fake.gateway_url) as ws:
        hello = await ws.receive_json()
        assert hello["op"] == 10
        await ws.send_str(json.dumps({"op": 2, "d": {"token": "wrong", "intents": 0, "properties": {}}}))
        await ws.receive()
        assert ws.close_code == 4004
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/users/@me/guilds"))
    assert fake.unhandled == ["GET /api/v10/users/@me/guilds"]
    async with aiohttp.ClientSession() as s, s.get(f"{fake.rest_base}/nope") as resp:
        assert resp.status == 404 and resp.headers["Content-Type"] == "application/json"
        assert "X-RateLimit-Remaining" in resp.headers and (await resp.json())["message"] == "404: Not Found"
    assert fake.unhandled[-1] == "GET /api/v10/nope"
    fake.unhandled.clear()
