"""/loras and /embeddings through the fake Discord: the same verbs as /hypernets, by the one generic command group.

The real bot in-process, the real worker and the real intake (sandbox children, a few seconds each), so files are
few: a kohya LoRA from tests/loras.py and an A1111 embedding, each added by attachment and found in its drop-in
folder; refusals that the bot decides from the file's header cost no child.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.harness import Harness
from tests.loras import write_tiny_lora

pytestmark = pytest.mark.asyncio(loop_scope="module")

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "hypernetworks" / "zoo"
MANAGER_ONLY = "Only members with the **Manage Server** permission can do that."
OUTCOMES = ("Added", "Refused", "A model", "This file", "The ", "`", "Give")


def pt(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


async def answer(hc: Harness, rec) -> str:  # type: ignore[no-untyped-def]
    return (await hc.wait_ephemeral(rec)).content


async def outcome(hc: Harness, rec) -> str:  # type: ignore[no-untyped-def]
    """The deferred reply of an add once it holds the outcome (it shows progress first)."""
    def done() -> str | None:
        msg = rec.original
        return msg.content if msg is not None and msg.content.startswith(OUTCOMES) else None

    return await hc.fake.wait_for(done, timeout=60, what="the outcome of an add")


async def info_fields(hc: Harness, command: str, name: str) -> dict[str, str]:
    rec = await hc.fake.slash(hc.fake.member_plain, command, {"name": name})
    embed = (await hc.wait_ephemeral(rec)).embeds[0]
    assert embed["title"] == name
    return {f["name"]: f["value"] for f in embed["fields"]}


async def test_a_lora_is_added_listed_edited_disabled_and_removed(hc: Harness, tmp_path: Path) -> None:
    fake = hc.fake
    data = write_tiny_lora(tmp_path / "tinyInk.safetensors", seed=11).read_bytes()
    att = fake.make_attachment("tinyInk.safetensors", data)
    assert await answer(hc, await fake.slash(fake.member_plain, "loras add", {"file": att})) == MANAGER_ONLY
    rec = await fake.slash(fake.member_manager, "loras add", {"file": att, "default_multiplier": 0.8,
                                                               "description": "wet ink"})
    assert await outcome(hc, rec) == ("Added `tinyInk` (this server): LoRA for SD 1.x, 3 UNet and 2 text-encoder "
                                      "layers. Use it with `<lora:tinyInk:0.8>`.")
    row = await hc.store.loras.by_name("tinyInk", fake.guild.id)
    assert row is not None and (Path(hc.settings.models.store_dir) / row.file_name).is_file()
    assert await hc.store.hypernets.by_name("tinyInk", fake.guild.id) is None

    msg = await hc.wait_ephemeral(await fake.slash(fake.member_plain, "loras list"))
    assert msg.embeds[0]["title"] == "LoRAs (1)"
    assert msg.embeds[0]["description"] == "**`tinyInk`** · this server · LoRA · ×0.8 — wet ink"
    assert msg.embeds[0]["footer"]["text"] == ("Page 1/1 · use a LoRA in /imagine with <lora:NAME:MULTIPLIER> · "
                                               "details: /loras info")
    fields = await info_fields(hc, "loras info", "tinyInk")
    assert (fields["Use it"], fields["Format"], fields["Layers"], fields["Default multiplier"]) == (
        "`<lora:tinyInk:0.8>` in an /imagine prompt", "LoRA for SD 1.x", "3 UNet, 2 text encoder", "0.8")
    assert fields["Hash"] == f"`{row.short_hash}` (A1111's Lora hashes)" and "⚠️ Compatibility" not in fields
    rec = await fake.autocomplete(fake.member_plain, "loras info", {"name": "tiny"}, focused="name")
    await fake.wait_for(lambda: rec.choices is not None)
    assert [c["value"] for c in rec.choices] == ["tinyInk"]
    rec = await fake.autocomplete(fake.member_plain, "hypernets info", {"name": "tiny"}, focused="name")
    await fake.wait_for(lambda: rec.choices is not None)
    assert rec.choices == []

    rec = await fake.slash(fake.member_manager, "loras edit", {"name": "tinyInk", "default_multiplier": 0.5})
    assert (await hc.wait_ephemeral(rec)).content == "Updated `tinyInk`."
    rec = await fake.slash(fake.member_manager, "loras disable", {"name": "tinyInk"})
    assert await answer(hc, rec) == ("Disabled `tinyInk`: it no longer appears in lists and prompts using it are "
                                     "refused.")
    rec = await fake.slash(fake.member_plain, "loras info", {"name": "tinyInk"})
    assert await answer(hc, rec) == "There is no LoRA named `tinyInk` here."
    assert await answer(hc, await fake.slash(fake.member_manager, "loras enable", {"name": "tinyInk"})) == (
        "Enabled `tinyInk`.")
    assert (await hc.store.loras.usable(fake.guild.id))["tinyInk"].default_multiplier == 0.5

    question = await hc.wait_ephemeral(await fake.slash(fake.member_manager, "loras remove", {"name": "tinyInk"}))
    assert question.content == ("Remove `tinyInk` (this server)? Prompts using it will stop working; past images keep "
                                "their history.")
    confirm = await fake.click(fake.member_manager, question, label="Remove")
    await fake.wait_for(lambda: confirm.acknowledged)
    await fake.wait_for(lambda: question.content.startswith("Removed `tinyInk`."))
    assert await hc.store.loras.by_name("tinyInk", fake.guild.id) is None
    assert not (Path(hc.settings.models.store_dir) / row.file_name).exists()


async def test_an_embedding_has_no_strength(hc: Harness) -> None:
    fake = hc.fake
    vectors = torch.randn(2, 768, generator=torch.Generator().manual_seed(1))
    att = fake.make_attachment("badHands.pt", pt({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                                                  "name": "badHands", "step": 500}))
    rec = await fake.slash(fake.member_manager, "embeddings add", {"file": att, "trigger_words": "hands"})
    assert await outcome(hc, rec) == ("Added `badHands` (this server): 2 vectors of width 768. Use it by writing "
                                      "`badHands` in a prompt or negative prompt.")
    row = await hc.store.embeddings.by_name("badHands", fake.guild.id)
    assert row is not None and (row.vectors, row.width, row.short_hash) == (2, 768, row.sha256[:12])
    fields = await info_fields(hc, "embeddings info", "badHands")
    assert (fields["Use it"], fields["Vectors"], fields["Width"], fields["Trigger words"]) == (
        "`badHands` as a word in a prompt or negative prompt", "2", "768", "hands")
    assert fields["Hash"] == f"`{row.short_hash}` (A1111's TI hashes)" and "Default multiplier" not in fields
    group = hc.bot.tree.get_command("embeddings")
    assert group is not None and {p.name for p in group.get_command("add").parameters} == {  # type: ignore[union-attr]
        "file", "link", "name", "description", "trigger_words", "scope"}
    rec = await fake.slash(fake.member_manager, "embeddings edit", {"name": "badHands"})
    assert await answer(hc, rec) == "Nothing to change: give a description or trigger words."
    rec = await fake.slash(fake.member_manager, "embeddings edit", {"name": "badHands", "description": "fixes hands"})
    assert (await hc.wait_ephemeral(rec)).content == "Updated `badHands`."
    assert (await hc.store.embeddings.by_name("badHands", fake.guild.id)).description == "fixes hands"  # type: ignore[union-attr]


async def test_files_of_the_wrong_kind_sdxl_and_code_are_refused(hc: Harness, tmp_path: Path) -> None:
    fake = hc.fake
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    xl = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    lora = write_tiny_lora(tmp_path / "ink.safetensors", seed=12).read_bytes()
    cases = {
        ("loras add", "relu.pt", (ZOO / "pub_zoo_relu.pt").read_bytes()):
            "Refused: this is a hypernetwork, not a LoRA; add it with `/hypernets add`.",
        ("embeddings add", "ink.safetensors", lora):
            "Refused: this is a LoRA for SD 1.x, not an embedding; add it with `/loras add`.",
        ("loras add", "xl.safetensors", safetensors.torch.save({f"{xl}.lora_down.weight": torch.zeros(4, 1280),
                                                                f"{xl}.lora_up.weight": torch.zeros(1280, 4)})):
            "Refused: this is a LoRA for SDXL and this bot runs only SD 1.x and SD 2.x checkpoints, which cannot use "
            "it; look for its SD 1.x version.",
        ("loras add", "evil.pt", pt({f"{key}.lora_down.weight": torch.zeros(4, 768), f"{key}.lora_up.weight": Exploit()})):
            "Refused: the file would run code when loaded (it calls `posix.system`); refused unread, do not load it "
            "anywhere else either.",
    }
    for (command, filename, data), expected in cases.items():
        rec = await fake.slash(fake.member_admin, command, {"file": fake.make_attachment(filename, data)})
        assert await outcome(hc, rec) == expected
    assert not marker.exists()
    for registry in (hc.store.hypernets, hc.store.loras, hc.store.embeddings):
        assert await registry.by_name("relu", fake.guild.id) is None and await registry.by_name("evil", None) is None


async def test_owner_rescans_the_lora_and_embedding_folders(hc: Harness) -> None:
    root = Path(hc.settings.models.hypernetwork_dir).parent
    (root / "Lora").mkdir(exist_ok=True)
    write_tiny_lora(root / "Lora" / "folderInk.safetensors", seed=13, text_encoder=False)
    (root / "embeddings").mkdir(exist_ok=True)
    (root / "embeddings" / "folderHands.safetensors").write_bytes(
        safetensors.torch.save({"emb_params": torch.randn(1, 768)}))
    rec = await hc.fake.slash(hc.fake.member_owner, "loras rescan")
    text = await hc.fake.wait_for(lambda: rec.original and rec.original.content.startswith("Rescanned")
                                  and rec.original.content, timeout=60)
    assert text == "Rescanned the LoRA folders: 1 added, 0 updated, 0 removed, 0 unchanged, 0 refused.\nAdded: `folderInk`"
    rec = await hc.fake.slash(hc.fake.member_owner, "embeddings rescan")
    text = await hc.fake.wait_for(lambda: rec.original and rec.original.content.startswith("Rescanned")
                                  and rec.original.content, timeout=60)
    assert text == ("Rescanned the embeddings folder: 1 added, 0 updated, 0 removed, 0 unchanged, 0 refused.\n"
                    "Added: `folderHands`")
    lora = await hc.store.loras.by_name("folderInk", hc.fake.guild.id)
    assert lora is not None and lora.is_global and (lora.source_detail, lora.te_modules) == ("Lora/folderInk.safetensors", 0)
    rec = await hc.fake.slash(hc.fake.member_owner, "loras remove", {"name": "folderInk"})
    assert await answer(hc, rec) == ("`folderInk` comes from the models folder (`Lora/folderInk.safetensors`): delete "
                                     "the file there and run `/loras rescan`, or disable it instead.")


async def test_a_lora_and_an_embedding_render_and_the_lora_button_keeps_the_seed(hc: Harness, tmp_path: Path) -> None:
    import re

    from tests.harness import png_parameters

    fake = hc.fake
    lora = fake.make_attachment("glowInk.safetensors", write_tiny_lora(tmp_path / "glowInk.safetensors", seed=21)
                                .read_bytes())
    assert (await outcome(hc, await fake.slash(fake.member_manager, "loras add", {"file": lora}))).startswith("Added")
    vectors = torch.randn(3, 768, generator=torch.Generator().manual_seed(4))
    embedding = fake.make_attachment("muddy.pt", pt({"string_to_param": {"*": vectors}, "name": "muddy"}))
    assert (await outcome(hc, await fake.slash(fake.member_manager, "embeddings add", {"file": embedding}))).startswith(
        "Added")
    await hc.install_hypernet("pub_zoo_elu", "inkSpirit", guild_id=fake.guild.id)

    options = {"prompt": "a harbour <lora:glowInk:0.6> <hypernet:inkSpirit:0.5>", "negative_prompt": "(muddy:1.2)",
               "steps": 2, "seed": 31}
    msg = await hc.wait_result(await fake.slash(fake.member_plain, "imagine", options))
    job = await hc.store.jobs.get(int(re.search(r"Job #(\d+)", msg.embeds[0]["title"]).group(1)))
    row = await hc.store.loras.by_name("glowInk", fake.guild.id)
    assert [(x.name, x.sha256, x.unet) for x in job.settings.loras] == [("glowInk", row.sha256, 0.6)]
    assert [e.name for e in job.settings.embeddings] == ["muddy"]
    params = png_parameters(await fake.download(msg.attachments[0]))
    assert f'Lora hashes: "glowInk: {row.short_hash}"' in params and "TI hashes: \"muddy: " in params
    labels = [b["label"] for b in msg.buttons()]
    assert labels[-4:] == ["− inkSpirit", "+ inkSpirit", "− glowInk", "+ glowInk"]
    stronger = await hc.wait_result(await fake.click(fake.member_plain, msg, label="+ glowInk"))
    child = await hc.store.jobs.get(int(re.search(r"Job #(\d+)", stronger.embeds[0]["title"]).group(1)))
    assert child.settings == job.settings.with_strengths([0.5, 0.7]) and child.settings.seed == 31
    assert await fake.download(stronger.attachments[0]) != await fake.download(msg.attachments[0])
