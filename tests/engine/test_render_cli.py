"""``python -m engine render``: a real subprocess once, the argument errors in-process (they fail before any model)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.__main__ import find_hypernets, main
from engine.infotext import parse_infotext
from engine.samplers import SAMPLER_NAMES

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "hypernetworks"


@pytest.fixture
def hypernet_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hypernetworks"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(FIXTURES / "pub_relu_11_320_ln.pt", folder / "sub" / "pub_relu_11_320_ln.pt")
    shutil.copy(FIXTURES / "pub_gelu_1-0.05-1_1024_sd2.pt", folder / "pub_gelu_1-0.05-1_1024_sd2.pt")
    return folder


def test_render_writes_pngs_with_parameters(tmp_path, hypernet_dir):
    out = tmp_path / "renders" / "out.png"
    prompt = "water elemental woman hypernet:pub_relu_11_320_ln:0.7 <hypernet:pub_gelu_1-0.05-1_1024_sd2>"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "render", prompt, "-o", str(out), "--hypernet-dir", str(hypernet_dir),
         "--width", "64", "--height", "64", "--steps", "2", "--seed", "5", "--count", "2", "--negative", "blurry",
         "--sampler", "DPM++ 2M Karras", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    second = out.with_name("out-2.png")
    assert f"wrote {out} (seed 5)" in proc.stdout
    assert f"wrote {second} (seed 6)" in proc.stdout
    assert "warning: hypernetwork 'pub_gelu_1-0.05-1_1024_sd2' was made for SD 2.x" in proc.stdout
    for path, seed in ((out, "5"), (second, "6")):
        image = Image.open(path)
        assert image.size == (64, 64)
        params = parse_infotext(image.text["parameters"])
        assert params["Prompt"] == ("water elemental woman <hypernet:pub_relu_11_320_ln:0.7> "
                                    "<hypernet:pub_gelu_1-0.05-1_1024_sd2:1>")
        assert params["Negative prompt"] == "blurry"
        assert (params["Seed"], params["Sampler"], params["Steps"]) == (seed, "DPM++ 2M Karras", "2")


def test_unknown_hypernet_is_a_clear_error(hypernet_dir, capsys):
    code = main(["render", "a cat hypernet:pub_relu_11_320:0.5", "--hypernet-dir", str(hypernet_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown hypernet 'pub_relu_11_320'" in err
    assert "did you mean pub_relu_11_320_ln" in err


def test_hypernet_tag_without_a_folder_is_an_error(capsys):
    assert main(["render", "a cat <hypernet:x>"]) == 2
    assert "no --hypernet-dir given" in capsys.readouterr().err


def test_unknown_sampler_lists_valid_names(capsys):
    assert main(["render", "a cat", "--sampler", "Euler z"]) == 2
    err = capsys.readouterr().err
    assert "unknown sampler 'Euler z'" in err
    assert all(name in err for name in SAMPLER_NAMES)


def test_bad_multiplier_is_an_error(capsys):
    assert main(["render", "a cat <hypernet:x:strong>"]) == 2
    assert "not a number" in capsys.readouterr().err


def test_hypernets_are_found_by_stem_like_a1111(tmp_path):
    for rel in ("a_sub/dup.pt", "dup.pt", "z_sub/dup.pt", "deep/er/only.safetensors", "notes.txt", "skip.ckpt"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = find_hypernets(tmp_path)
    assert set(found) == {"dup", "only"}
    assert found["dup"] == tmp_path / "z_sub" / "dup.pt"  # last in case-insensitive path order wins
