"""/loras and /embeddings end to end: the real bot process adds a kohya LoRA and an A1111 embedding by attachment,
lists them, and refuses an embedding file that would run code.

The files are made here (tests/loras.py writes a LoRA with the tiny model's shapes); the registry is read from the
bot's own database, read-only.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from tests.e2e.scenario import E2E
from tests.loras import write_tiny_lora

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(180)]


def _rows(e2e: E2E, kind: str, name: str) -> list[dict[str, object]]:
    return [dict(r) for r in e2e.query("SELECT * FROM models WHERE kind = ? AND name = ?", (kind, name))]


async def test_admin_adds_a_lora_and_members_see_it(e2e: E2E, tmp_path: Path) -> None:
    fake = e2e.fake
    att = fake.make_attachment("e2eInk.safetensors", write_tiny_lora(tmp_path / "e2eInk.safetensors", seed=21).read_bytes())
    rec = await fake.slash(user=fake.member_admin, name="loras add", options={"file": att, "default_multiplier": 0.6})
    msg = await e2e.final_text(rec, "Added", 60)
    assert msg.content == ("Added `e2eInk` (this server): LoRA for SD 1.x, 3 UNet and 2 text-encoder layers. Use it "
                           "with `<lora:e2eInk:0.6>`.")
    (row,) = _rows(e2e, "lora", "e2eInk")
    assert (row["source"], row["guild_id"], row["added_by"], row["default_multiplier"]) == (
        "attachment", fake.guild.id, fake.member_admin.id, 0.6)
    text = await e2e.ephemeral(await fake.slash(user=fake.member_plain, name="loras list"))
    assert "e2eInk" in text, text


async def test_admin_adds_an_embedding_and_a_hostile_one_is_refused(e2e: E2E, tmp_path: Path) -> None:
    fake = e2e.fake
    buf = io.BytesIO()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(3, 768)}}, buf)
    rec = await fake.slash(user=fake.member_admin, name="embeddings add",
                           options={"file": fake.make_attachment("e2eHands.pt", buf.getvalue())})
    msg = await e2e.final_text(rec, "Added", 60)
    assert msg.content == ("Added `e2eHands` (this server): 3 vectors of width 768. Use it by writing `e2eHands` in a "
                           "prompt or negative prompt.")
    assert len(_rows(e2e, "embedding", "e2eHands")) == 1

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    evil = io.BytesIO()
    torch.save({"string_to_param": {"*": Exploit()}}, evil)
    rec = await fake.slash(user=fake.member_admin, name="embeddings add",
                           options={"file": fake.make_attachment("evilHands.pt", evil.getvalue())})
    msg = await e2e.final_text(rec, "Refused", 60)
    assert msg.content == ("Refused: the file would run code when loaded (it calls `posix.system`); refused unread, do "
                           "not load it anywhere else either.")
    assert not marker.exists() and _rows(e2e, "embedding", "evilHands") == []
