"""What each feature of ``benchmarks/features.py`` costs a request, in instructions (callgrind).

    python -m benchmarks.feature_callgrind --features all --requests 2000
    python -m benchmarks.feature_callgrind --features retries,routing --annotate 40

The wall-clock feature rows of ``benchmarks/run.py --with-features`` move with the
machine's load; this counts instructions instead, with this checkout on both sides.  Per
feature, A is the feature's base mode as the harness runs it (request metrics and the
JSON access log on) and B the same plus the feature (``features.FeatureServices.setup``:
the same config, services, request body and headers as the wall-clock pair).  The
gateway's code is this checkout's, or with ``--ref`` a git ref's (built in a detached
worktree as ``benchmarks.ab_refs`` builds one; config written and migrated by this
checkout's harness).  Each side
runs in turn under callgrind (``benchmarks.ab_refs.callgrind_side``: warm-up, idle
baseline, the counted requests, the deferred work after them, the idle rate
subtracted); an A is measured once per base mode.  The routing pair's session is
decided by the warm-up's first request (its router call is not counted), as the
wall-clock pair decides it before the measurement.

``--annotate N``: also the N functions with the most inclusive instructions of each
side's counted window (``callgrind_annotate --inclusive=yes``), per request, written
beside the dumps: where B's extra goes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks import ab_refs, ab_settings
from benchmarks import run as bench
from benchmarks.features import FEATURES, FeatureServices, FeatureSetup, parse_features

BASE = FeatureSetup([], [], {})


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", default="all", help="comma list of: " + ",".join(FEATURES) + " (or all)")
    ab_refs.add_window_options(ap, requests=2000, concurrency="32", idle_s=10.0, settle_s=11.0)
    ap.add_argument("--annotate", type=int, default=0, help="top N inclusive functions per side")
    ap.add_argument("--json-out", type=Path, help="also write the results as JSON")
    ap.add_argument("--ref", help="run this git ref's gateway (a detached worktree built in --cache-dir, as "
                    "benchmarks.ab_refs does) instead of this checkout's")
    ap.add_argument("--cache-dir", type=Path, default=ab_refs.DEFAULT_CACHE, help="--ref's worktrees")
    args = ap.parse_args(argv)
    args.names = parse_features(args.features)
    args.cg_conc = [int(c) for c in args.callgrind_concurrency.split(",") if c.strip()]
    return args


def checkout() -> ab_refs.PreparedRef:
    """This checkout, as ``ab_refs.callgrind_side`` runs a ref."""
    return ab_refs.PreparedRef("checkout", ab_refs.resolve(bench.ROOT, "HEAD"), bench.ROOT, bench.ROOT,
                               ab_refs.built_extensions(bench.ROOT))


def measure_side(here: ab_refs.PreparedRef, label: str, mode: str, feature: FeatureSetup, work: Path,
                 fake_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """One side under callgrind: ``mode`` as the harness runs it plus ``feature``."""
    wd = work / label
    wd.mkdir()
    obs = [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
           for k, v in bench.observability_settings(wd).items()]
    setup = ab_settings.configure(mode, wd, fake_port, [*feature.settings, *obs], feature.sections, feature.env)
    if feature.edit is not None:
        feature.edit(setup.config_path)
    bench._migrate(setup.config_path, setup.env)
    headers = [*setup.headers_for("ab"), *feature.extra_headers]
    print(f"{label}: under callgrind", flush=True)
    result = ab_refs.callgrind_side(here, {"config": str(setup.config_path), "env": setup.env, "headers": headers},
                                    wd, args, body=feature.body or bench.BODY_JSON)
    if args.annotate:
        result["top"] = annotate(wd, args.requests, args.annotate)
    result["workdir"] = str(wd)
    return result


def inline_dumps(workdir: Path) -> list[Path]:
    """The counted windows' dumps: each window dumps idle, inline, deferred in turn."""
    dumps = sorted(workdir.glob("callgrind.out.*.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    return dumps[1::3]


def annotate(workdir: Path, requests: int, top: int) -> list[tuple[float, str]]:
    """The ``top`` functions by inclusive instructions per request in the last counted window."""
    dumps = inline_dumps(workdir)
    if not dumps:
        return []
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", f"--threshold=100", str(dumps[-1])],
                         capture_output=True, text=True, check=True).stdout
    (workdir / "annotate.txt").write_text(out)
    rows: list[tuple[float, str]] = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)", line)
        if m:
            rows.append((int(m.group(1).replace(",", "")) / requests, m.group(2).strip()))
    return rows[:top]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    here = ab_refs.prepare_ref(bench.ROOT, args.ref, args.cache_dir) if args.ref else checkout()
    print(f"gateway code: {here.ref} ({here.sha[:12]}) in {here.worktree}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="feature-cg-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    services = FeatureServices(work, fake_port)
    base: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in args.names:
            mode = FEATURES[name][0]
            if mode not in base:
                base[mode] = measure_side(here, f"{mode}-A", mode, BASE, work, fake_port, args)
            results[name] = {"A": base[mode], "B": measure_side(here, f"{name}-B", mode, services.setup(name), work,
                                                                fake_port, args)}
    finally:
        services.stop()
        bench.stop_proc(fake)
    print("\n| feature (B) | base | c | A inline+deferred | B inline+deferred | B - A | B/A |")
    print("|---|---|---|---|---|---|---|")
    for name, sides in results.items():
        for conc in args.cg_conc:
            a, b = sides["A"][str(conc)]["per_request"], sides["B"][str(conc)]["per_request"]
            print(f"| {name}: {FEATURES[name][1]} | {FEATURES[name][0]} | {conc} | {a:,.0f} | {b:,.0f} | "
                  f"{b - a:+,.0f} | {b / a:.3f} |")
    if args.annotate:
        for name, sides in results.items():
            print(f"\n{name}: top inclusive per request, A | B (dumps in {sides['B']['workdir']})")
            for (ia, fa), (ib, fb) in zip(sides["A"].get("top", []), sides["B"].get("top", [])):
                print(f"  {ia:>10,.0f} {fa[:70]:<70} | {ib:>10,.0f} {fb[:70]}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"argv": list(argv or []), "results": results}, indent=2, default=str))
    print(f"logs: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
