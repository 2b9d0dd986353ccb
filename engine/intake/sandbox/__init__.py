"""The intake sandbox child (``python -m engine.intake.sandbox``): the only place an uploaded pickle is ever opened.

* :mod:`engine.intake.sandbox.child` — the process: limits, warm-up, lock-down, one mode, one JSON answer;
* :mod:`engine.intake.sandbox.reading` — reading the input (safe pickle load, safetensors through a memory file)
  and the checks every kind makes on what was read;
* :mod:`engine.intake.sandbox.hypernet`, :mod:`~engine.intake.sandbox.lora`, :mod:`~engine.intake.sandbox.embedding`
  — each kind's validation and canonical file.

Started only by :mod:`engine.intake.children`; the bot process never imports this package (it imports torch).
"""
