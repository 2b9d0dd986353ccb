"""The A1111 drop-in folder: what a scan lists, and that ingesting goes through the same intake path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engine.intake import IntakeLimits
from engine.model_folder import FolderEntry, ingest_folder, scan_folder
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


def test_ingest_folder_takes_new_files_reports_bad_ones_and_skips_known(tmp_path: Path) -> None:
    folder = tmp_path / "hypernetworks"
    store = tmp_path / "store"
    shutil.copy(GELU, _touch(folder / "styles" / "waterElemental_10.pt"))
    _touch(folder / "bad name.pt", GELU.read_bytes())  # the owner's stem is not a valid prompt name
    _touch(folder / "broken.pt", b"not a model at all")
    _touch(folder / "None.pt", GELU.read_bytes())
    unchanged = _touch(folder / "already_known.pt", b"whatever")
    st = unchanged.stat()
    known = {"already_known.pt": (st.st_size, st.st_mtime)}

    outcomes = {o.entry.relpath: o for o in ingest_folder(folder, store, LIMITS, known)}

    assert set(outcomes) == {"styles/waterElemental_10.pt", "bad name.pt", "broken.pt", "None.pt"}
    good = outcomes["styles/waterElemental_10.pt"]
    assert good.error is None and good.result is not None and good.name == "waterElemental_10"
    assert good.result.sizes == (320,) and good.result.suggested_name == "waterElemental_10"
    assert (store / f"{good.result.sha256}.safetensors").is_file()
    assert outcomes["bad name.pt"].error == "model names cannot contain spaces (a tag would end there); use `_` or `-`"
    assert outcomes["bad name.pt"].result is None
    assert outcomes["broken.pt"].error == "the file is neither a PyTorch .pt file nor a .safetensors file"
    assert outcomes["None.pt"].error == "`None` is reserved (A1111 uses it for \"no hypernetwork\")"
    assert os.listdir(store) == [f"{good.result.sha256}.safetensors"]


def test_rescan_with_everything_known_ingests_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "hypernetworks"
    _touch(folder / "a.pt", b"garbage that would be refused")
    known = {e.relpath: (e.size, e.mtime) for e in scan_folder(folder)}
    assert ingest_folder(folder, tmp_path / "store", LIMITS, known) == []
    entry = scan_folder(folder)[0]
    assert isinstance(entry, FolderEntry)
    # a changed file (new size) is taken again
    _touch(folder / "a.pt", b"different garbage, longer than before")
    (again,) = ingest_folder(folder, tmp_path / "store", LIMITS, known)
    assert again.entry.relpath == "a.pt" and again.error is not None


@pytest.mark.parametrize("name", ["x.pt.optim", "x.ckpt", "x.bin"])
def test_other_extensions_are_ignored(tmp_path: Path, name: str) -> None:
    _touch(tmp_path / name)
    assert scan_folder(tmp_path) == []
