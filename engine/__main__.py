"""``python -m engine render PROMPT -o out.png``: render locally, without Discord, to try a checkpoint or a file.

For an owner or admin at a terminal: hypernets are found by file stem in ``--hypernet-dir`` (A1111's rule:
``.pt`` and canonical ``.safetensors`` files, subfolders included, the last path in case-insensitive order wins)
and named in the prompt with ``<hypernet:NAME:MULT>`` or the bare ``hypernet:NAME:MULT``.  ``.pt`` files are read
with ``torch.load(weights_only=True)``; this command is for files you chose to try, the bot itself only reads
files that went through intake.

The PNGs carry A1111's ``parameters`` text, so A1111's "PNG Info" tab reads the settings back.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.prompt import PromptError, closest_names, parse_hypernet_tags
from engine.samplers import DEFAULT_SAMPLER, UnknownSampler, resolve_sampler

if TYPE_CHECKING:
    from engine.hypernet import Hypernetwork

HYPERNET_SUFFIXES = (".pt", ".safetensors")


class CliError(Exception):
    """A problem to report in one line, with exit status 2."""


def find_hypernets(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` for the hypernet files under ``folder`` (recursive); duplicate stems: last path wins,
    in case-insensitive path order, as in A1111."""
    if not folder.is_dir():
        raise CliError(f"hypernet folder not found: {folder}")
    files = [p for p in folder.rglob("*") if p.suffix in HYPERNET_SUFFIXES and p.is_file()]
    return {p.stem: p for p in sorted(files, key=lambda p: str(p).lower())}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load_hypernet(path: Path) -> Hypernetwork:
    from engine.hypernet import HypernetFormatError, load, load_canonical

    try:
        return load(path) if path.suffix == ".pt" else load_canonical(path, name=path.stem)
    except HypernetFormatError as exc:
        raise CliError(f"cannot use hypernet file {path}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Hypercord engine tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render a prompt to PNG files",
                       description="Render a prompt (with hypernet tags) to PNG files carrying A1111 parameters.")
    r.add_argument("prompt", help='e.g. "water elemental woman hypernet:waterElemental_10:0.7"')
    r.add_argument("-o", "--output", default="out.png", help="PNG path; with --count N, -2, -3, ... are appended")
    r.add_argument("--checkpoint", default="tiny", help="tiny, a diffusers folder, a .safetensors/.ckpt file or a hub id")
    r.add_argument("--hypernet-dir", type=Path, help="folder of .pt / .safetensors hypernetworks (found by file stem)")
    r.add_argument("--negative", default="", help="negative prompt")
    r.add_argument("--seed", type=int, default=-1, help="-1 = random")
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--cfg-scale", type=float, default=7.0)
    r.add_argument("--sampler", default=DEFAULT_SAMPLER, help="an A1111 sampler name, e.g. 'DPM++ 2M Karras'")
    r.add_argument("--width", type=int, default=512)
    r.add_argument("--height", type=int, default=512)
    r.add_argument("--count", type=int, default=1)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    r.add_argument("--dtype", default="auto", help="auto, float16, bfloat16 or float32")
    return parser


def _outputs(output: Path, count: int) -> list[Path]:
    return [output] + [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(2, count + 1)]


def render(args: argparse.Namespace) -> list[str]:
    """Run one render; return the lines to print."""
    from engine.protocol import GenerateRequest, HypernetRef, RenderSettings

    try:
        sampler = resolve_sampler(args.sampler).name
        _, tags = parse_hypernet_tags(args.prompt)
    except (UnknownSampler, PromptError) as exc:
        raise CliError(str(exc)) from None
    if args.count < 1 or args.steps < 1:
        raise CliError("--count and --steps must be at least 1")
    available = find_hypernets(args.hypernet_dir) if args.hypernet_dir else {}
    refs: list[HypernetRef] = []
    nets: dict[str, Hypernetwork] = {}
    for name, multiplier in tags:
        path = available.get(name)
        if path is None:
            hint = closest_names(name, available)
            where = f"in {args.hypernet_dir}" if args.hypernet_dir else "(no --hypernet-dir given)"
            raise CliError(f"unknown hypernet {name!r} {where}" + (f"; did you mean {', '.join(hint)}?" if hint else ""))
        digest = _sha256(path)
        nets.setdefault(digest, _load_hypernet(path))
        refs.append(HypernetRef(name=name, sha256=digest, multiplier=multiplier))
    seed = args.seed if args.seed >= 0 else random.randrange(2**32)
    settings = RenderSettings(prompt=args.prompt, negative_prompt=args.negative, hypernets=tuple(refs), seed=seed,
                              steps=args.steps, cfg_scale=args.cfg_scale, sampler=sampler, width=args.width,
                              height=args.height, count=args.count, checkpoint=args.checkpoint)
    from engine.worker.renderer import Renderer, RequestError

    try:
        renderer = Renderer.load(args.checkpoint, device=args.device, dtype=args.dtype)
        [result] = renderer.generate([GenerateRequest(job_id=1, user_id=0, settings=settings)], nets)
    except (RequestError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    lines = []
    for path, png, s in zip(_outputs(Path(args.output), args.count), result.pngs, result.seeds, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        lines.append(f"wrote {path} (seed {s})")
    lines += [f"warning: {w}" for w in result.warnings]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        lines = render(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
