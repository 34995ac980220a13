"""How many examples a property test runs: its default in ``make test``, more on demand.

* ``make test``: each property test's default count, sized for the suite's ~10-minute
  budget on a 2-core machine and high enough for every bug these tests found so far
  (those are also pinned as explicit ``@example`` cases where one exists, so they are
  checked at any count);
* ``PLANO_FAST_HYPOTHESIS=deep`` (``make test-deep``): each test's deep count, a soak
  before a release or after touching a parser, scanner or twin;
* ``PLANO_FAST_HYPOTHESIS_EXAMPLES=N``: N for every test that takes its count from here.
"""

from __future__ import annotations

import os

DEEP = os.environ.get("PLANO_FAST_HYPOTHESIS", "").strip().lower() == "deep"


def examples(default: int, deep: int) -> int:
    """``max_examples`` for a property test: ``default``, or ``deep`` in the deep profile."""
    forced = os.environ.get("PLANO_FAST_HYPOTHESIS_EXAMPLES")
    if forced:
        return int(forced)
    return deep if DEEP else default
