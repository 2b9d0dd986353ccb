"""Per-step cost of per-row LoRA: one UNet forward with 1 / 4 / 8 rows, each row its own rank-16 LoRA on every
attention projection, against the same forward without LoRA.  Prints one JSON line (figures + command).

Why: rows carry their LoRAs as factors (``x @ downᵀ @ upᵀ`` per row) instead of merged weights, so the cost
per step grows with the rows that use a LoRA; this measures by how much on CPU, with the ``tiny`` UNet
(SD1.5's widths: 320/640 channels, text context 768).  Not a test.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lora_step.py            # ~30 s
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.lora import LoraNetwork, parse_state_dict  # noqa: E402
from engine.lora.batch import build_lora_batch  # noqa: E402
from engine.lora.hooks import lora_batch_active, table_for_models  # noqa: E402
from engine.worker.tiny import CONTEXT_DIM, build_tiny  # noqa: E402

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def make_lora(unet: torch.nn.Module, seed: int, rank: int) -> LoraNetwork:
    """A kohya-named LoRA of ``rank`` on every attention projection of ``unet``, random factors."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".attn", 1)[-1].split(".", 1)[-1] in PROJECTIONS:
            base = "lora_unet_" + name.replace(".", "_")
            state[f"{base}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * 0.02
            state[f"{base}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.02
            state[f"{base}.alpha"] = torch.tensor(float(rank))
    return parse_state_dict(state, f"bench{seed}", table=table_for_models(unet))


def time_forwards(unet, sample, t, context, batch, repeats: int) -> tuple[float, float]:
    """(plain, with LoRA) CPU seconds of one forward (``process_time``: the machine is shared, so wall time
    measures the neighbours too): the best of ``repeats``, the two interleaved."""
    plain, lora = [], []
    with torch.no_grad():
        unet(sample, t, encoder_hidden_states=context)  # warm-up
        for _ in range(repeats):
            for times, active in ((plain, None), (lora, batch)):
                with lora_batch_active(unet, active):
                    t0 = time.process_time()
                    unet(sample, t, encoder_hidden_states=context)
                    times.append(time.process_time() - t0)
    return min(plain), min(lora)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,4,8")
    parser.add_argument("--latent", type=int, default=16, help="latent side (16 = a 128x128 image)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    unet = build_tiny().unet
    row_counts = [int(r) for r in args.rows.split(",")]
    loras = [make_lora(unet, seed, args.rank) for seed in range(max(row_counts))]
    projections = len(loras[0].modules)
    figures: dict[str, object] = {}
    for rows in row_counts:
        gen = torch.Generator().manual_seed(rows)
        sample = torch.randn(rows, 4, args.latent, args.latent, generator=gen)
        context = torch.randn(rows, 77, CONTEXT_DIM, generator=gen)
        t = torch.tensor(500)
        t0 = time.perf_counter()
        batch = build_lora_batch(unet, "unet", [[(loras[i], 0.8)] for i in range(rows)])
        build_s = time.perf_counter() - t0
        plain, with_lora = time_forwards(unet, sample, t, context, batch, args.repeats)
        figures[f"rows{rows}"] = {"plain_cpu_s": round(plain, 4), "lora_cpu_s": round(with_lora, 4),
                                  "ratio": round(with_lora / plain, 3), "batch_build_s": round(build_s, 4)}
        print(f"{rows} rows: plain {plain:.3f}s, LoRA {with_lora:.3f}s, x{with_lora / plain:.2f}", file=sys.stderr)
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} " + " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "bench/lora_step.py", *sys.argv[1:]])
    print(json.dumps({"bench": "lora_step", "unet": "tiny (320/640 channels, context 768)", "latent": args.latent,
                      "rank": args.rank, "lora_modules_per_row": projections, "torch_threads": torch.get_num_threads(),
                      **figures, "command": command}))


if __name__ == "__main__":
    main()
