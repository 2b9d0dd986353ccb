"""Fixtures: the A1111-made cases, the tiny text encoder rebuilt from its trimmed copy, the shipped tokenizer.

The text encoder's token-embedding matrix was trimmed to the rows the cases look up (see
tests/fixtures/conditioning/README.md); the other rows are zero here, which no fixture case can notice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from engine.conditioning import load_clip_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "conditioning"
EMBEDDINGS_DIR = FIXTURES / "embeddings"


def build_text_encoder() -> CLIPTextModel:
    folder = FIXTURES / "text_encoder"
    config = CLIPTextConfig.from_pretrained(folder)
    model = CLIPTextModel._from_config(config, attn_implementation="eager")
    path = folder / "trimmed.safetensors"
    with safe_open(str(path), "pt") as handle:
        embedding_key = handle.metadata()["token_embedding_key"]
    state = load_file(path)
    kept_ids, kept_rows = state.pop("kept_token_ids"), state.pop("kept_token_rows")
    token_embedding = torch.zeros(config.vocab_size, config.hidden_size)
    token_embedding[kept_ids] = kept_rows
    state[embedding_key] = token_embedding
    if not hasattr(model, "text_model"):  # transformers 5 has no .text_model level
        state = {key.removeprefix("text_model."): value for key, value in state.items()}
    model.load_state_dict(state, strict=True)
    return model.float().eval()


@pytest.fixture(scope="session")
def text_encoder() -> CLIPTextModel:
    return build_text_encoder()


@pytest.fixture(scope="session")
def tokenizer():
    return load_clip_tokenizer()


@pytest.fixture(scope="session")
def cases_doc() -> dict:
    return json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def expected_tensors(cases_doc) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / cases_doc["tensors"])


def fixture_cases() -> list[dict]:
    return json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))["cases"]
