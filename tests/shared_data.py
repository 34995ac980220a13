"""Where the team's shared data lives: ``shared/`` beside the checkout (as in CI)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PLANO_FAST_SHARED", ROOT.parent / "shared"))
FIXTURES = Path(os.environ.get("PLANO_FAST_FIXTURES", SHARED / "data" / "fixtures"))
