"""Hypercord's engine: everything that knows about diffusion (prompt tags, wire types, worker, scheduler, hypernets).

Only the worker-side modules import torch/diffusers; the rest is importable by the bot process without them.
"""
