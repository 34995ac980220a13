"""The pure parts of ``benchmarks/ab_refs.py`` (the A/B of two git refs), quickly: its
arguments, the medians and the NOISY verdict, a ref turned into a built worktree (on a
throw-away git repository whose fake setup.py "builds" by writing a file), the fixed-count
client and the callgrind dump parser.  The A/B itself is a benchmark (README)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ab_refs import (
    PreparedRef,
    callgrind_total,
    check_loaded,
    compare,
    iqr,
    parse_args,
    prepare_ref,
    remove_ref,
    send,
)
from benchmarks.fake_provider import FakeProviderThread
from benchmarks.run import CLIENT_HEADERS

# A setup.py that "builds" by writing an empty extension file where BUILD_TO says, and
# logs each run (so the test can tell a cached worktree from a rebuilt one).
SETUP = """\
import os, sys
from pathlib import Path
assert sys.argv[1:] == ["-q", "build_ext", "--inplace"], sys.argv
with open(os.environ["AB_TEST_LOG"], "a") as fh:
    fh.write(os.getcwd() + "\\n")
BUILD_TO = {build_to!r}
if BUILD_TO:
    Path(BUILD_TO).parent.mkdir(parents=True, exist_ok=True)
    Path(BUILD_TO).write_bytes(b"")
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def test_arguments() -> None:
    args = parse_args(["--a", "main~3", "--b", "HEAD", "--modes", "config, managed", "--rounds", "4"])
    assert (args.a, args.b, args.mode_list, args.rounds, args.callgrind) == ("main~3", "HEAD",
                                                                            ["config", "managed"], 4, False)
    assert args.cg_conc == [1, 32] and args.noise == 0.03
    args = parse_args(["--a", "x", "--b", "y", "--callgrind", "--callgrind-concurrency", "1,8", "--requests", "50"])
    assert args.callgrind and args.cg_conc == [1, 8] and args.requests == 50
    assert args.mode_list == ["config", "firewall", "managed"]
    for bad in (["--a", "x", "--b", "y", "--modes", "gemini"], ["--a", "x"], ["--a", "x", "--b", "y", "--rounds", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_medians_ratio_and_noisy() -> None:
    # Paired rounds that agree: B 2% above A in every round, whatever the drift.
    a = [50.0, 60.0, 55.0, 70.0, 52.0, 58.0, 65.0, 61.0]
    b = [x * 1.02 for x in a]
    c = compare(a, b, 0.03)
    assert c.median_a == pytest.approx(59.0) and c.median_b == pytest.approx(59.0 * 1.02)
    assert c.ratio == pytest.approx(1.02) and c.spread == pytest.approx(0.0, abs=1e-12)
    assert not c.noisy and c.verdict == "ok"
    # The same medians, but the rounds disagree: half say +12%, half say -8%.
    b2 = [x * (1.12 if i % 2 else 0.92) for i, x in enumerate(a)]
    n = compare(a, b2, 0.03)
    assert n.spread == pytest.approx(0.20) and n.noisy and n.verdict == "NOISY"
    assert not compare(a, b2, 0.25).noisy  # the threshold decides
    assert compare([10.0], [12.0], 0.03).ratio == pytest.approx(1.2) and not compare([10.0], [12.0], 0.03).noisy
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        compare([1.0, 2.0], [1.0], 0.03)


def test_ref_to_built_worktree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two refs with different layouts (the extension moves into a subpackage) each get
    their own detached worktree built by their own setup.py; a second prepare reuses the
    build; the run directory links the ref's packages but never its benchmarks or tests; a
    ref that builds nothing is refused; remove_ref leaves no worktree behind."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    log = tmp_path / "builds.log"
    monkeypatch.setenv("AB_TEST_LOG", str(log))
    old = _commit(repo, {"plano_fast/__init__.py": "", "benchmarks/__init__.py": "", "tests/__init__.py": "",
                         "notapackage/data.txt": "x", "setup.py": SETUP.format(build_to="plano_fast/_scan.so")},
                  "old layout")
    (repo / "plano_fast" / "_scan.so").unlink(missing_ok=True)
    new = _commit(repo, {"plano_fast/wire/__init__.py": "",
                         "setup.py": SETUP.format(build_to="plano_fast/wire/_scan.so")}, "moved")
    broken = _commit(repo, {"setup.py": SETUP.format(build_to="")}, "builds nothing")
    cache = tmp_path / "cache"

    a = prepare_ref(repo, "HEAD~2", cache)
    b = prepare_ref(repo, new, cache)
    assert (a.sha, b.sha) == (old, new)
    assert a.worktree == cache / old[:12] and b.worktree == cache / new[:12]
    assert a.extensions == ["plano_fast/_scan.so"] and b.extensions == ["plano_fast/wire/_scan.so"]
    assert not (a.worktree / "plano_fast" / "wire").exists()  # each worktree has its own ref's files
    assert _git(a.worktree, "rev-parse", "HEAD") == old
    listed = _git(repo, "worktree", "list", "--porcelain")
    assert f"worktree {a.worktree}" in listed and "detached" in listed
    assert sorted(p.name for p in a.run_dir.iterdir()) == ["plano_fast"]
    assert (a.run_dir / "plano_fast").resolve() == (a.worktree / "plano_fast").resolve()
    assert log.read_text().splitlines() == [str(a.worktree), str(b.worktree)]

    again = prepare_ref(repo, old, cache)  # cached by commit: not rebuilt
    assert again.worktree == a.worktree and again.extensions == a.extensions
    assert len(log.read_text().splitlines()) == 2

    with pytest.raises(RuntimeError, match="built no extension"):
        prepare_ref(repo, broken, cache)
    with pytest.raises(subprocess.CalledProcessError):
        prepare_ref(repo, "no-such-ref", cache)

    for p in (a, b):
        remove_ref(repo, p)
        assert not p.worktree.exists() and not p.run_dir.exists()
    listed = _git(repo, "worktree", "list", "--porcelain")
    assert str(a.worktree) not in listed and str(b.worktree) not in listed


def test_detached_worktree_has_no_branch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    monkeypatch.setenv("AB_TEST_LOG", str(tmp_path / "log"))
    _commit(repo, {"plano_fast/__init__.py": "", "setup.py": SETUP.format(build_to="plano_fast/_x.so")}, "one")
    branches = _git(repo, "branch", "--list")
    p = prepare_ref(repo, "HEAD", tmp_path / "cache")
    assert _git(repo, "branch", "--list") == branches  # --detach: no branch created
    assert subprocess.run(["git", "-C", str(p.worktree), "symbolic-ref", "-q", "HEAD"]).returncode != 0
    remove_ref(repo, p)


def test_fixed_number_of_requests() -> None:
    with FakeProviderThread() as provider:
        wall = send(provider.url, CLIENT_HEADERS + [("authorization", "Bearer sk-x")], 37, 5)
        assert len(provider.requests) == 37 and wall > 0
        provider.clear()
        send(provider.url, [("authorization", "Bearer sk-x")], 3, 32)  # fewer requests than connections
        assert len(provider.requests) == 3


def test_a_paced_send_sends_every_request_no_sooner_than_its_rate_allows() -> None:
    with FakeProviderThread() as provider:
        wall = send(provider.url, [("authorization", "Bearer sk-x")], 5, 1, rate=50.0)
        assert len(provider.requests) == 5
        assert wall >= 4 / 50.0  # the fifth request is sent 80 ms after the first, not before
    with pytest.raises(ValueError, match="one connection"):
        send("http://127.0.0.1:9", [], 5, 2, rate=50.0)
    assert parse_args(["--a", "x", "--b", "y", "--callgrind", "--callgrind-rate", "10"]).cg_rate == 10.0
    assert parse_args(["--a", "x", "--b", "y"]).cg_rate == 0.0
    with pytest.raises(SystemExit):
        parse_args(["--a", "x", "--b", "y", "--callgrind-rate", "-1"])


def test_callgrind_dump_total(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1.1"
    dump.write_text("version: 1\ncreator: callgrind-3.19.0\npid: 1\ncmd: python\npart: 1\n\nevents: Ir\n"
                    "\nfl=(1) a.c\nfn=(1) f\n3 100\n\nsummary: 123456\n\n\ntotals: 123456\n")
    assert callgrind_total(dump) == 123456
    dump.write_text("events: Ir\nsummary: 42\n")
    assert callgrind_total(dump) == 42
    dump.write_text("events: Ir\n")
    with pytest.raises(ValueError):
        callgrind_total(dump)


def test_runs_as_module_help() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.ab_refs", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, env={**os.environ}, check=True).stdout
    assert "--callgrind" in out and "--a" in out


def test_alternation_order_and_per_round_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ab_settings.alternate`` (shared by both A/B tools) runs A,B then B,A, and turns the
    CPU seconds of each run and the requests it completed into µs/request and req/s."""
    import benchmarks.ab_settings as ab

    calls: list[str] = []
    cpu = {"A": 0.0, "B": 0.0}
    per_request = {"A": 50e-6, "B": 60e-6}  # CPU seconds each side spends per request
    url_side = {"http://a": "A", "http://b": "B"}

    def fake_load(url: str, headers: list[tuple[str, str]], concurrency: int, duration_s: float) -> int:
        side = url_side[url.removesuffix(ab.bench.PATH)]
        calls.append(side)
        n = 1000 * len(calls)  # a different count each run
        cpu[side] += n * per_request[side]
        return n

    monkeypatch.setattr(ab, "load", fake_load)
    monkeypatch.setattr(ab.bench, "proc_tree", lambda pid: [pid])
    monkeypatch.setattr(ab.bench, "wait_quiet", lambda pids: 0.0)
    monkeypatch.setattr(ab.bench, "cpu_s", lambda pids: cpu["A" if pids == [1] else "B"])
    sides = {"A": ab.Side("http://a", 1, []), "B": ab.Side("http://b", 2, [])}
    out = ab.alternate(sides, 3, 32, 2.0)
    assert calls == ["A", "B", "B", "A", "A", "B"]
    assert [round(c, 6) for c, _ in out["A"]] == [50.0] * 3 and [round(c, 6) for c, _ in out["B"]] == [60.0] * 3
    assert [r for _, r in out["A"]] == [500.0, 2000.0, 2500.0] and [r for _, r in out["B"]] == [1000.0, 1500.0, 3000.0]


def test_callgrind_windows_are_whole_periods() -> None:
    from benchmarks.ab_refs import whole_periods

    assert whole_periods(21.0, 10.0) == 30.0 and whole_periods(20.0, 10.0) == 20.0
    assert whole_periods(0.5, 10.0) == 10.0 and whole_periods(4.2 + 21.0, 10.0) == 30.0


def test_a_gateway_running_another_worktrees_extensions_is_refused(tmp_path: Path) -> None:
    """``check_loaded`` on a real process (this one: it maps the compiled extensions of the
    checkout it runs from): taken as that checkout's run, refused as another worktree's --
    the shared-cache race of an earlier session, where one ref's gateway loaded the other's."""
    from plano_fast.wire import _head

    here = Path(_head.__file__).resolve().parents[2]  # the checkout this test imports from
    mine = PreparedRef("HEAD", "0" * 40, here, here, [])
    assert "plano_fast/wire/" + Path(_head.__file__).name in check_loaded(os.getpid(), mine)
    other = tmp_path / "other-worktree"
    (other / "plano_fast").mkdir(parents=True)
    with pytest.raises(SystemExit, match="refused") as refused:
        check_loaded(os.getpid(), PreparedRef("main", "1" * 40, other, tmp_path / "run", []))
    assert str(Path(_head.__file__).resolve()) in str(refused.value)
