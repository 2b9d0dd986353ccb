"""The A1111 drop-in folder: what a scan lists, and that ingesting goes through the same intake path."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.intake import IntakeLimits, scan_folder
from tests.fixtures.malicious import payloads

GELU = payloads.FIXTURES / "zoo" / "pub_zoo_gelu.pt"
LIMITS = IntakeLimits(max_bytes=8 << 20)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_lists_pt_and_safetensors_recursively_in_a1111_order(tmp_path: Path) -> None:
    folder = tmp_path / "hypernetworks"
    _touch(folder / "z_sub" / "Same.pt")
    _touch(folder / "Same.pt")
    _touch(folder / "a_sub" / "deeper" / "other.safetensors", b"12345")
    _touch(folder / "dotted.name.v2.pt")
    _touch(folder / "notes.txt")
    _touch(folder / "upper.PT")  # A1111 on Linux lists only lower-case *.pt
    _touch(folder / ".hidden.pt")
    _touch(folder / ".cache" / "inside_hidden.pt")
    entries = scan_folder(folder)
    assert [e.relpath for e in entries] == ["a_sub/deeper/other.safetensors", "dotted.name.v2.pt", "Same.pt",
                                            "z_sub/Same.pt"]
    assert [e.stem for e in entries] == ["other", "dotted.name.v2", "Same", "Same"]
    other = entries[0]
    assert other.size == 5 and other.mtime == (folder / other.relpath).stat().st_mtime


def test_scan_skips_links_that_leave_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hypernetworks"
    outside = _touch(tmp_path / "secret" / "outside.pt")
    inside = _touch(folder / "real.pt")
    (folder / "escape.pt").symlink_to(outside)
    (folder / "alias.pt").symlink_to(inside)
    (folder / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    (folder / "dangling.pt").symlink_to(tmp_path / "missing.pt")
    assert [e.relpath for e in scan_folder(folder)] == ["alias.pt", "real.pt"]


def test_scan_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert scan_folder(tmp_path / "nope") == []


@pytest.mark.parametrize("name", ["x.pt.optim", "x.ckpt", "x.bin"])
def test_other_extensions_are_ignored(tmp_path: Path, name: str) -> None:
    _touch(tmp_path / name)
    assert scan_folder(tmp_path) == []
