"""Instructions per call of a snippet under callgrind, collected only inside starmap_next
(the measured loop is run through itertools.starmap, used nowhere else in it).

    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no --toggle-collect=starmap_next \
        --callgrind-out-file=/dev/null .venv/bin/python benchmarks/results/billing2-20261205/cgmicro.py \
        1000 'SETUP' 'STMT'          # "Collected" / 1000 = instructions per STMT

STMT may use ``_i`` (0..N-1).  Run from the checkout (its plano_fast and benchmarks).
"""
import itertools
import os
import sys

sys.path.insert(0, os.getcwd())
n = int(sys.argv[1])
setup = sys.argv[2]
stmt = sys.argv[3]
g: dict = {}
exec(setup, g)
exec(compile(f"def _run():\n    for _i in range({n}):\n        " + stmt.replace("\n", "\n        ") + "\n", "<m>", "exec"), g)
g["_run"]()  # warm (specialize)
list(itertools.starmap(g["_run"], [()]))
