"""The batched encoder: one text-encoder forward for a whole batch, bit-identical to prompts encoded alone."""

from __future__ import annotations

import pytest
import torch

from engine.conditioning import (
    Embedding,
    EmbeddingSet,
    PromptEncoder,
    PromptRequest,
    PromptTooLong,
    ScheduledCond,
    cond_at_step,
    load_embeddings_dir,
)

from .conftest import EMBEDDINGS_DIR

LONG = ", ".join(["red blue green tree", "house river mountain", "sky cloud", "light dark", "stone wood glass"] * 6)
BATCH = [
    PromptRequest("a photo of a cat", 20),
    PromptRequest("inkstyle portrait of a woman, (inkstyle:1.2) background AND a [cat:dog:0.5]:0.7", 20, clip_skip=2),
    PromptRequest("badhands3, blurry, lowres, [badhands3]", 20, positive=False),
    PromptRequest("[cat|dog] playing in the (snow:1.3)", 6, clip_skip=3),
    PromptRequest(LONG, 20, clip_skip=2, positive=False),
    PromptRequest("a photo of a cat", 20, clip_skip=2),
    PromptRequest("", 20, positive=False),
    PromptRequest("a castle on a hill BREAK a dragon in the sky", 10),
]


class ForwardCounter:
    """Counts text-encoder forward calls and the rows each one encoded."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self.handle = module.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs) -> None:
        self.rows.append(kwargs["input_ids"].shape[0])

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def encoder(text_encoder, tokenizer) -> PromptEncoder:
    return PromptEncoder(text_encoder, tokenizer, load_embeddings_dir(EMBEDDINGS_DIR).embeddings)


def test_batch_is_bit_identical_to_one_by_one(encoder) -> None:
    batched = encoder.encode(BATCH)
    for request, parts in zip(BATCH, batched, strict=True):
        (alone,) = encoder.encode([request])
        assert [weight for weight, _ in parts] == [weight for weight, _ in alone]
        for (_, schedule), (_, expected) in zip(parts, alone, strict=True):
            assert [step for step, _ in schedule] == [step for step, _ in expected]
            for (_, cond), (_, reference) in zip(schedule, expected, strict=True):
                assert cond.dtype == torch.float32
                assert torch.equal(cond, reference)


def test_one_forward_over_distinct_chunks(encoder, text_encoder) -> None:
    plans = [encoder.plan(request) for request in BATCH]
    distinct = {chunk.key for plan in plans for entry in plan.entries() for chunk in entry.chunks}
    with ForwardCounter(text_encoder) as counter:
        encoder.encode(BATCH)
    assert len(counter.rows) == 1
    assert counter.rows[0] <= len(distinct) + 1  # + the padding chunk of shorter schedule entries
    assert counter.rows[0] < sum(len(entry.chunks) for plan in plans for entry in plan.entries())


def test_parts_and_schedules(encoder) -> None:
    parts = encoder.encode([BATCH[1]])[0]
    assert [weight for weight, _ in parts] == [1.0, 0.7]
    assert [step for step, _ in parts[1].schedule] == [10, 20]
    assert parts[0].schedule[0].cond.shape == (77, 32)
    chunks = encoder.length(LONG, 20, positive=False).chunks
    assert chunks == 2 and encoder.encode([BATCH[4]])[0][0].schedule[0].cond.shape == (chunks * 77, 32)


def test_clip_skip_changes_the_result_and_below_one_means_one(encoder) -> None:
    one, two, zero = (encoder.encode([PromptRequest("a photo of a cat", 20, clip_skip=s)])[0][0].schedule[0].cond
                      for s in (1, 2, 0))
    assert not torch.equal(one, two)
    assert torch.equal(one, zero)


def test_clip_skip_beyond_the_layers_is_refused(encoder) -> None:
    with pytest.raises(ValueError, match="clip skip 4 is more than the text encoder's 3 layers"):
        encoder.encode([PromptRequest("a", 20, clip_skip=4)])


def test_too_long_is_refused_before_any_forward(encoder, text_encoder) -> None:
    with ForwardCounter(text_encoder) as counter, pytest.raises(PromptTooLong):
        encoder.encode([BATCH[0], PromptRequest(" ".join(["cat"] * 700), 20)])
    assert counter.rows == []
    assert encoder.length(" ".join(["cat"] * 700), 20).chunks == 10


def test_empty_batch(encoder) -> None:
    assert encoder.encode([]) == []


def test_embeddings_used_in_order_of_first_use(encoder) -> None:
    used = encoder.embeddings_used([BATCH[2], BATCH[1], BATCH[0]])
    assert [embedding.name for embedding in used] == ["badhands3", "inkstyle"]
    assert all(len(embedding.short_hash) == 12 for embedding in used)


def test_embedding_of_another_width_is_skipped_with_reason(text_encoder, tokenizer) -> None:
    wide = Embedding("inkstyle", torch.ones(2, 768))
    encoder = PromptEncoder(text_encoder, tokenizer, EmbeddingSet([wide]))
    assert [(s.name, s.reason) for s in encoder.skipped_embeddings] == [
        ("inkstyle", "vectors are 768 wide, the text encoder's are 32")]
    plain = PromptEncoder(text_encoder, tokenizer)
    request = PromptRequest("inkstyle portrait", 20)
    assert torch.equal(encoder.encode([request])[0][0].schedule[0].cond, plain.encode([request])[0][0].schedule[0].cond)
    assert encoder.embeddings_used([request]) == []


def test_cond_at_step_follows_a1111s_rule() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    schedule = [ScheduledCond(5, a), ScheduledCond(10, b)]
    assert [cond_at_step(schedule, step) is a for step in range(11)] == [True] * 6 + [False] * 5
    with pytest.raises(ValueError, match="past the schedule"):
        cond_at_step(schedule, 11)


def test_rows_per_forward_splits_the_forward_and_keeps_the_numbers(text_encoder, tokenizer, encoder) -> None:
    split = PromptEncoder(text_encoder, tokenizer, load_embeddings_dir(EMBEDDINGS_DIR).embeddings, rows_per_forward=1)
    with ForwardCounter(text_encoder) as counter:
        results = split.encode(BATCH[:4])
    assert counter.rows == [1] * len(counter.rows) and len(counter.rows) > 1
    for parts, reference in zip(results, encoder.encode(BATCH[:4]), strict=True):
        for (_, schedule), (_, expected) in zip(parts, reference, strict=True):
            assert all(torch.equal(a.cond, b.cond) for a, b in zip(schedule, expected, strict=True))
    with pytest.raises(ValueError, match="rows_per_forward"):
        PromptEncoder(text_encoder, tokenizer, rows_per_forward=0)
