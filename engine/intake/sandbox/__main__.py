"""``python -m engine.intake.sandbox``: run the intake child (:mod:`engine.intake.sandbox.child`)."""

import sys

from engine.intake.sandbox.child import main

sys.exit(main())
