"""The tokenizer shipped in engine/assets: known ids, and the files are package data."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

from engine.conditioning import load_clip_tokenizer
from engine.conditioning.chunks import TokenIds
from engine.conditioning.tokenizer import TOKENIZER_FILES, token_ids_of, tokenize_function

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "engine" / "assets" / "clip_tokenizer"


def test_known_ids() -> None:
    tokenizer = load_clip_tokenizer()
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    tokenize = tokenize_function(tokenizer)
    assert tokenize(",") == [267]
    assert tokenize("masterpiece") == [12066]
    assert tokenize("LineWork") == tokenize("linework")
    assert token_ids_of(tokenizer) == TokenIds(start=49406, end=49407, pad=49407, comma=267)


def test_long_text_is_not_truncated() -> None:
    assert len(tokenize_function(load_clip_tokenizer())(" ".join(["cat"] * 200))) == 200


def test_vocabulary_is_sd15s() -> None:
    def git_blob(path: Path) -> str:
        data = path.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    assert git_blob(ASSETS / "vocab.json") == "469be27c5c010538f845f518c4f5e8574c78f7c8"
    assert git_blob(ASSETS / "merges.txt") == "76e821f1b6f0a9709293c3b6b51ed90980b3166b"


def test_tokenizer_files_are_package_data() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    shipped = {path for pattern in package_data.get("engine", []) for path in (ROOT / "engine").glob(pattern)}
    assert {ASSETS / name for name in TOKENIZER_FILES} <= shipped
