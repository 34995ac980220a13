"""Instructions of one redacting ``guardrails.apply_body`` (every detector ``redact``, the
``pii`` case of bench_dlp: a finding every ~500 characters), of this checkout or of a ref's
``plano_fast/guardrails.py``, with the pure build or the compiled scanner; run under callgrind
twice (0 and N calls) and take the difference / N (session l, benchmarks/results/coded-l-20261206.md):

    PYTHONHASHSEED=0 PYTHONPATH=. valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/dlp_redact_count.py REF|. SIZE N [compiled]

(``.``: this checkout's module; a garbage collection is off while counting: its cost
depends on the heap, which the baseline's loading changes, not on the code measured.)
"""

import gc
import sys

from benchmarks import bench_dlp as b
from plano_fast import guardrails, wire
from plano_fast.wire import _dlp_py
which, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mod = guardrails if which == "." else b.baseline_module(which)
pol = mod.parse_policy(b.ALL_REDACT)
body = b.chat_body(b.cases(size)["pii"])
if len(sys.argv) < 5:  # pure build (argv[4] "compiled": the compiled scanner)
    wire.dlp_scan_body, wire.dlp_scan_text = None, _dlp_py.scan_text
mod.apply_body(pol, body, "openai", None)  # warm
gc.disable()
for _ in range(n):
    mod.apply_body(pol, body, "openai", None)
