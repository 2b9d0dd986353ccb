"""A1111's intermediate results recorded in cases.json (``a1111_trace``), flattened for parametrized tests."""

from __future__ import annotations

from .conftest import fixture_cases


def schedule_traces() -> list[tuple[str, int, str, list]]:
    """(case id, steps, prompt text, A1111's schedule) for every prompt or AND-part."""
    out = []
    for case in fixture_cases():
        for trace in case["a1111_trace"]:
            if "prompt" in trace:
                out.append((case["id"], case["steps"], trace["prompt"], trace["schedule"]))
    return out


def text_traces() -> list[tuple[str, bool, str, dict]]:
    """(case id, uses embeddings, schedule text, A1111's segments/chunks/token count) for every distinct text."""
    out, seen = [], set()
    for case in fixture_cases():
        for trace in case["a1111_trace"]:
            for text, info in trace.get("texts", {}).items():
                key = (bool(case["embeddings_dir"]), text)
                if key not in seen:
                    seen.add(key)
                    out.append((case["id"], bool(case["embeddings_dir"]), text, info))
    return out


def and_split_traces() -> list[tuple[str, str, list]]:
    """(case id, prompt, A1111's AND split as [[text, weight], ...]) for the positive-prompt cases."""
    out = []
    for case in fixture_cases():
        splits = [trace["and_split"] for trace in case["a1111_trace"] if "and_split" in trace]
        for prompt, split in zip(case["prompts"], splits[0] if splits else [], strict=False):
            out.append((case["id"], prompt, split))
    return out
