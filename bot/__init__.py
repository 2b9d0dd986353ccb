"""Hypercord's bot process: Discord wiring, configuration, and the SQLite store that records every job.

Nothing here knows about diffusion; the bot talks to the GPU worker only through the torch-free parts of ``engine``.
"""
