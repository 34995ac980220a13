"""Where the tests' recorded data lives: ``tests/data/`` in this repository (vendored from
the team's ``shared/data`` snapshot with sources and licences, see tests/data/README.md),
so a lone clone runs the whole suite.  ``PLANO_FAST_FIXTURES`` / ``PLANO_FAST_PRICING_DATA``
point the tests at another copy (a refreshed snapshot, say)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
FIXTURES = Path(os.environ.get("PLANO_FAST_FIXTURES", DATA / "fixtures"))
PRICING = Path(os.environ.get("PLANO_FAST_PRICING_DATA", DATA / "pricing"))
