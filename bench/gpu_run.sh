#!/usr/bin/env bash
# Issue 18's GPU benchmark (bench/engine_gpu.py) in one go, on a machine that has torch + CUDA but no network.
#
#   bench/gpu_run.sh plan [PYVER]      # here: list the wheels the device needs (the dependency closure of the
#                                      #   engine's packages minus torch's own, pinned to this environment's versions)
#   bench/gpu_run.sh prepare [PYVER]   # here, with network: download them into build/gpu-wheels (git-ignored;
#                                      #   carry it to the device), for the device's Python (default: this one's)
#   bench/gpu_run.sh [engine_gpu.py options]   # there: install what is missing offline into a private folder,
#                                      #   run the benchmark, print its JSON (also $OUT/engine_gpu.json)
#
# The run ends within BENCH_TOTAL_S (default 470 s, under 8 minutes): installing is capped at 90 s and the
# benchmark gets the rest minus a margin; it skips sections that would overrun and rewrites its JSON after every
# measurement, so a run killed at the limit still reports what it finished.
# Environment: PYTHON (default: .venv/bin/python for plan/prepare when it exists, else python3), HYPERCORD_WHEELS (default build/gpu-wheels), OUT (default build/bench-out),
# BENCH_TOTAL_S, BENCH_ALLOW_CPU=1 (let the run mode start without CUDA, for --smoke checks).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then  # plan/prepare read this checkout's environment; the run uses the device's own Python
    case "${1:-}" in
        plan|prepare) [ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python" || PY=python3 ;;
        *) PY=python3 ;;
    esac
fi
WHEELS="${HYPERCORD_WHEELS:-$ROOT/build/gpu-wheels}"
OUT_DIR="${OUT:-$ROOT/build/bench-out}"
TOTAL_S="${BENCH_TOTAL_S:-470}"
TOP_LEVEL="diffusers transformers safetensors scipy torchsde pillow numpy huggingface_hub tokenizers"

closure() {  # name==version lines: what the engine needs besides torch and torch's own dependencies
    "$PY" - $TOP_LEVEL <<'PYEOF'
import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def walk(names):
    found, stack = {}, list(names)
    while stack:
        name = canonical(stack.pop())
        if name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return found


torch_side = walk(["torch"])
for name, version in sorted(walk(sys.argv[1:]).items()):
    if name not in torch_side:
        print(f"{name}=={version}")
PYEOF
}

pyver() { "$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'; }

prepare() {
    local version="${1:-$(pyver)}"
    mkdir -p "$WHEELS"
    closure > "$WHEELS/requirements.txt"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform any -d "$WHEELS" -r "$WHEELS/requirements.txt"
    echo "python $version" > "$WHEELS/PYTHON"
    du -sh "$WHEELS"
}

install_missing() {  # into a private folder put first on PYTHONPATH; packages already there are used as they are
    local site="$1"
    [ -f "$WHEELS/requirements.txt" ] || { echo "gpu_run: no $WHEELS/requirements.txt; using what is installed" >&2; return 0; }
    local missing
    missing="$("$PY" - "$WHEELS/requirements.txt" <<'PYEOF'
import importlib.metadata as md
import sys

STRICT = {"diffusers"}  # the engine needs exactly this minor version (pyproject: diffusers>=0.42,<0.43)
for line in open(sys.argv[1]):
    name, _, version = line.strip().partition("==")
    if not name:
        continue
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(line.strip())
        continue
    if name in STRICT and have.split(".")[:2] != version.split(".")[:2]:
        print(line.strip())
PYEOF
)"
    if [ -z "$missing" ]; then
        echo "gpu_run: every package is installed already" >&2
        return 0
    fi
    echo "gpu_run: installing offline: $(echo $missing)" >&2
    # shellcheck disable=SC2086
    timeout 90 "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$site" $missing
}

run() {
    local started=$SECONDS
    mkdir -p "$OUT_DIR"
    if [ "${BENCH_ALLOW_CPU:-0}" != 1 ]; then
        "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' \
            || { echo "gpu_run: $PY has no CUDA torch" >&2; exit 3; }
    fi
    local site="${TMPDIR:-/tmp}/hypercord-bench-site"
    mkdir -p "$site"
    install_missing "$site" || echo "gpu_run: the offline install did not finish; trying with what is there" >&2
    local left=$(( TOTAL_S - (SECONDS - started) ))
    local status=0
    cd "$ROOT"
    PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" \
        timeout --signal=TERM --kill-after=10 "$left" "$PY" bench/engine_gpu.py \
        --out "$OUT_DIR/engine_gpu.json" --deadline-s $(( left - 40 )) "$@" > "$OUT_DIR/stdout.txt" \
        2> >(tee "$OUT_DIR/stderr.txt" >&2) || status=$?
    if [ -f "$OUT_DIR/engine_gpu.json" ]; then
        cat "$OUT_DIR/engine_gpu.json"; echo
    else
        tail -n 30 "$OUT_DIR/stderr.txt" >&2 || true
    fi
    echo "gpu_run: exit $status after $(( SECONDS - started )) s" >&2
    return "$status"
}

case "${1:-}" in
    plan) shift; closure ;;
    prepare) shift; prepare "$@" ;;
    *) run "$@" ;;
esac
