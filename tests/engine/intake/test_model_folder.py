"""The A1111 drop-in folder: what a scan lists, what it skips and why, and that a listed file is opened only inside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.intake import IntakeRefused, open_in_folder, scan_folder


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
    entries = scan_folder(folder).entries
    assert [e.relpath for e in entries] == ["a_sub/deeper/other.safetensors", "dotted.name.v2.pt", "Same.pt",
                                            "z_sub/Same.pt"]
    assert [e.stem for e in entries] == ["other", "dotted.name.v2", "Same", "Same"]
    other = entries[0]
    assert other.size == 5 and other.mtime == (folder / other.relpath).stat().st_mtime


def test_scan_reports_links_that_leave_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hypernetworks"
    outside = _touch(tmp_path / "secret" / "outside.pt")
    inside = _touch(folder / "real.pt")
    (folder / "escape.pt").symlink_to(outside)
    (folder / "alias.pt").symlink_to(inside)
    (folder / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    (folder / "dangling.pt").symlink_to(folder / "missing.pt")
    os.mkfifo(folder / "pipe.pt")
    scan = scan_folder(folder)
    assert [e.relpath for e in scan.entries] == ["alias.pt", "real.pt"]
    assert scan.skipped == [
        ("dangling.pt", "it is a link to a file that does not exist"),
        ("escape.pt", "it is a link that points outside the models folder; move the file itself into the folder"),
        ("linked_dir", "it is a link to a folder, which the scan does not enter; move the files into the models "
                       "folder"),
        ("pipe.pt", "it is not a regular file"),
    ]


def test_a_link_re_pointed_after_the_listing_is_not_opened(tmp_path: Path) -> None:
    folder = tmp_path / "hypernetworks"
    inside = _touch(folder / "real.pt", b"inside")
    outside = _touch(tmp_path / "secret.pt", b"outside")
    link = folder / "alias.pt"
    link.symlink_to(inside)
    assert [e.relpath for e in scan_folder(folder).entries] == ["alias.pt", "real.pt"]
    with open_in_folder(folder, "alias.pt") as f:
        assert f.read() == b"inside"
    link.unlink()
    link.symlink_to(outside)  # swapped between the listing and the read
    with pytest.raises(IntakeRefused) as info:
        open_in_folder(folder, "alias.pt")
    assert str(info.value) == "it is a link that points outside the models folder; move the file itself into the folder"


def test_scan_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert scan_folder(tmp_path / "nope").entries == []


@pytest.mark.parametrize("name", ["x.pt.optim", "x.ckpt", "x.bin"])
def test_other_extensions_are_ignored(tmp_path: Path, name: str) -> None:
    _touch(tmp_path / name)
    scan = scan_folder(tmp_path)
    assert (scan.entries, scan.skipped) == ([], [])
