"""Single-side callgrind profile of one checkout: instructions per request, split into the
request path (libuv's I/O callbacks: uv__io_poll inclusive -- both reads of every request,
its relay and settle) and the loop's idle handles (uv__run_idle inclusive: tasks, i.e. the
usage flusher, pricing, the write-ahead log), plus the callgrind.out file to annotate.

    CG_CODE=/path/to/checkout python cgprof.py firewall /tmp/out 2000 32

Run from the repository root (the harness: benchmarks.run's mode setup, ab_refs' gateway and
load); CG_CODE is the checkout whose plano_fast runs (default: this one).  The request path
is stable to ~0.1% run to run whatever the machine's load; the idle-handle share moves by
+-10k with where the usage flushes fall (which is why ab_refs' inline/deferred split
wanders under load, while its sum does not)."""
import sys, time, json, subprocess, shutil
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from benchmarks import run as bench
from benchmarks import ab_refs as ab

mode, out = sys.argv[1], Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
conc = int(sys.argv[4]) if len(sys.argv) > 4 else 32
if out.exists():
    shutil.rmtree(out)
out.mkdir(parents=True)
fake, fake_port = bench.start_fake(1, out / "fake.log")
try:
    run_dir = out / "run"; run_dir.mkdir()
    import os
    code = Path(os.environ.get("CG_CODE", str(ROOT)))
    (run_dir / "plano_fast").symlink_to(code / "plano_fast")
    prepared = ab.PreparedRef("wt", "wt", code, run_dir, [])
    setup = ab.ref_setup(prepared, mode, out / "setup", fake_port)
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
               f"--callgrind-out-file={out}/callgrind.out.%p"]
    gw = ab.RefGateway(prepared, Path(setup["config"]), setup["env"], out / "gw.log", wrapper=wrapper, ready_timeout_s=600)
    headers = bench.CLIENT_HEADERS + [tuple(h) for h in setup["headers"]]
    pid = gw.proc.pid
    try:
        ab.send(gw.url, headers, 300, conc)
        ab._control(pid, "--instr=on")
        ab.send(gw.url, headers, 300, conc)
        time.sleep(1)
        ab._control(pid, "--zero")
        t0 = time.monotonic(); time.sleep(5.0)
        idle = ab._dump(pid, out) / (time.monotonic() - t0)
        ab._control(pid, "--zero")
        wall = ab.send(gw.url, headers, n, conc)
        total = ab._dump(pid, out)
        inline = (total - idle * wall) / n
        dump = max(out.glob(f"callgrind.out.{pid}.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        tree = subprocess.run([sys.executable, str(Path(__file__).with_name("cgtree.py")), str(dump), "^uv__io_poll$|^uv__run_idle$", str(n)],
                              capture_output=True, text=True).stdout
        print(str(code), "loaded:", ab.loaded_from(pid, code))
        print(tree.strip())
        print(json.dumps({"mode": mode, "n": n, "conc": conc, "raw_per_req": total / n, "inline_per_req": inline,
                          "idle_per_s": idle, "wall_s": wall}))
    finally:
        gw.stop()
finally:
    bench.stop_proc(fake)
