"""The Dockerfile's steps, run without a container engine.

No Docker runs here, so this test does what the image build and ``docker run`` do, read
from the Dockerfile itself rather than restated:

1. the build stage's ``COPY`` lines, with ``.dockerignore`` applied, into an empty
   directory (so a file the image lacks is missing here too: that is how the symlinked
   migrations once left the image unable to start);
2. its ``pip wheel`` step with the same environment (``PLANO_FAST_REQUIRE_EXTENSION=1``),
   without dependencies or build isolation (no network: the build requirements are the
   ones of this venv, checked against pyproject's pinned range), and no build warning;
3. the runtime stage's install of that wheel into a fresh venv (dependencies are taken
   from this venv's site-packages through a ``.pth`` line, which does not activate the
   checkout's editable install: the test checks ``plano_fast`` comes from the wheel);
4. the ``ENTRYPOINT``'s exact argv, with the ``ENV`` the image sets, in an empty working
   directory (the fresh volume), with ``PLANO_FAST_CONFIG`` pointing at a config for the
   fake provider; then ``/healthz``, the ``HEALTHCHECK`` command, a proxied request, and
   the usage row in the SQLite store the gateway created on the empty volume.
"""

from __future__ import annotations

import atexit
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import ROOT

pytestmark = pytest.mark.docker

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if line.rstrip().endswith("\\"):
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            found.append([])
        found[-1].append((word, rest))
    assert len(found) == 2, "expected a build stage and a runtime stage"
    return found


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(fnmatch.fnmatch("/".join(parts[i:]), tail) for i in range(len(parts))):
                return True
        elif fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(parts[0], pattern):
            return True
    return False


def copy_context(sources: list[str], dest: str, workdir: Path, patterns: list[str]) -> None:
    """``COPY <sources...> <dest>`` from the repository into ``workdir`` (Docker's rules
    for files and directories, ``.dockerignore`` applied)."""
    target = workdir / dest
    for src in sources:
        path = ROOT / src
        assert path.exists() and not path.is_symlink(), f"COPY {src}: missing or a symlink"
        into = target / path.name if dest.endswith("/") or len(sources) > 1 else target
        if path.is_file():
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, into)
            continue
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(ROOT).as_posix()
            if file.is_dir() or ignored(rel, patterns):
                continue
            assert not file.is_symlink(), f"{rel} is a symlink: COPY would not follow it into the wheel"
            out = into / file.relative_to(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, out)


def test_build_requirements_of_this_venv_are_in_the_pinned_range() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    import Cython
    import setuptools

    installed = {"setuptools": setuptools.__version__, "cython": Cython.__version__}
    for spec in map(Requirement, requires):
        assert Version(installed[spec.name.lower()]) in spec.specifier, (spec, installed)


class WheelBuild:
    """Steps 1 and 2: the build context as ``COPY`` sees it, then its ``pip wheel``, run in
    the background at the lowest CPU priority (``SCHED_IDLE``: it gets only the CPU the
    rest of the suite leaves idle, so it does not slow or perturb the timed tests beside it).

    Why in the background: the wheel compiles every Cython module from scratch (~20 C files
    at -O3), the suite's largest single cost, while most of the suite waits on sockets and
    subprocesses with a core idle.  ``tests/conftest.py`` starts it when collection
    selected the test (``start_ahead``) and runs the test last, so the build overlaps the
    suite; run alone, the test starts it itself.  The build, its command, environment and
    every check on it are the same either way."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.src = workdir / "src"
        self.wheels = workdir / "wheels"
        self.log_path = workdir / "pip-wheel.log"
        self.failure: Exception | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = time.monotonic()
        try:
            self._start()
        except Exception as exc:  # noqa: BLE001 - re-raised by result(), in the test
            self.failure = exc

    def _start(self) -> None:
        build, _ = stages()
        patterns = [
            line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]  # fmt: skip

        # 1. the build context, exactly as COPY sees it
        src = self.src
        src.mkdir(parents=True)
        run_steps = []
        for word, rest in build:
            if word == "COPY":
                *sources, dest = rest.split()
                copy_context(sources, dest, src, patterns)
            elif word == "RUN" and "pip wheel" in rest:
                run_steps.append(rest)
        assert not list(src.rglob("*.so")) and not list(src.rglob("__pycache__"))
        assert sorted(p.name for p in (src / "plano_fast" / "migrations").rglob("*.sql"))

        # 2. the wheel, with the RUN line's environment
        (step,) = run_steps
        words = shlex.split(step)
        env_assignments = dict(w.split("=", 1) for w in words[: words.index("pip")])
        assert env_assignments == {"PLANO_FAST_REQUIRE_EXTENSION": "1"}
        # As in the python image: bytecode allowed (else distutils warns that it skips it).
        build_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                 "-v", "--wheel-dir", str(self.wheels), str(src)],
                stdout=log, stderr=subprocess.STDOUT, env={**build_env, **env_assignments},
                preexec_fn=_lowest_cpu_priority, start_new_session=True,  # (stop() ends its compilers too)
            )  # fmt: skip

    def result(self, timeout_s: float = 600) -> tuple[int, str]:
        """(pip's exit status, its output) once the build is over (re-raising a failure
        of step 1), waiting at most ``timeout_s`` from now, at the usual priority (nothing
        is left beside it to yield to); prints how long the build took and the wait."""
        if self.failure is not None:
            raise self.failure
        assert self.proc is not None
        waited = time.monotonic()
        for pid in (self.proc.pid, *_descendants(self.proc.pid)):
            _usual_cpu_priority(pid)
        try:
            returncode = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        now = time.monotonic()
        print(f"wheel built in {now - self.started:.1f} s (the test waited {now - waited:.1f} s of it)")
        return returncode, self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """End the build, pip and every process it started (its own process group)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def publish(self) -> None:
        """For the test in another process (a pytest-xdist worker, :class:`SharedBuild`):
        the build's pid now, or why step 1 failed; pip's exit status once it ends (the
        files ``_PID``, ``_FAILURE``, ``_RETURNCODE``, each written whole, then renamed)."""
        if self.failure is not None or self.proc is None:
            _write_whole(self.workdir / _FAILURE, repr(self.failure))
            return
        _write_whole(self.workdir / _PID, str(self.proc.pid))
        proc = self.proc
        threading.Thread(
            target=lambda: _write_whole(self.workdir / _RETURNCODE, str(proc.wait())),
            name="wheel-build-wait", daemon=True,
        ).start()


#: the files through which a build started by the controller of a parallel run reaches
#: the worker that runs the test
_PID, _RETURNCODE, _FAILURE = "build.pid", "build.returncode", "build.failure"
#: the shared build's folder, set by the controller before it starts its workers (they
#: inherit its environment)
SHARED_BUILD_ENV = "PLANO_FAST_TEST_SHARED_WHEEL_BUILD"


def _write_whole(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


class SharedBuild:
    """The build the controller of a parallel run (pytest-xdist) started, as the worker
    that runs the test sees it: the same ``wheels``, log and ``result()`` as a
    :class:`WheelBuild` of its own, through the files ``WheelBuild.publish`` writes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.wheels = workdir / "wheels"
        self.log_path = workdir / "pip-wheel.log"

    @staticmethod
    def found(workdir: Path) -> bool:
        """Whether the controller started (or failed to start) a build there."""
        return (workdir / _PID).exists() or (workdir / _FAILURE).exists()

    def result(self, timeout_s: float = 600) -> tuple[int, str]:
        """As :meth:`WheelBuild.result`: step 1's failure raised, else pip's exit status
        and output once it ends, the build back at the usual priority while the test waits."""
        failure = self.workdir / _FAILURE
        if failure.exists():
            raise AssertionError(f"the build context (step 1) failed: {failure.read_text()}")
        pid = int((self.workdir / _PID).read_text())
        waited = time.monotonic()
        for each in (pid, *_descendants(pid)):
            _usual_cpu_priority(each)
        returncode = self.workdir / _RETURNCODE
        deadline = waited + timeout_s
        while not returncode.exists():  # (written by the controller's thread when pip ends)
            assert time.monotonic() < deadline, f"the wheel build did not end within {timeout_s} s"
            time.sleep(0.1)
        took = returncode.stat().st_mtime - (self.workdir / _PID).stat().st_mtime
        print(f"wheel built in {took:.1f} s by the controller (the test waited {time.monotonic() - waited:.1f} s of it)")
        return int(returncode.read_text()), self.log_path.read_text(errors="replace")


def _lowest_cpu_priority() -> None:
    """In the build's process (its compilers inherit it): run only on CPU no one else wants."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _usual_cpu_priority(pid: int) -> None:
    """Back to the default policy and nice 0, where allowed (else it finishes as it is)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, pid, 0)
    except (AttributeError, OSError):
        pass


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (pip's build backend and its compilers), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


#: the build conftest started at collection's end, taken by the test
_AHEAD: WheelBuild | None = None


def start_ahead() -> None:
    """Start the wheel build now, in a directory of its own removed at exit (conftest)."""
    global _AHEAD
    workdir = Path(tempfile.mkdtemp(prefix="plano_fast_docker_build_"))
    _AHEAD = WheelBuild(workdir)
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    atexit.register(_AHEAD.stop)


def share_a_build_folder() -> None:
    """In the controller of a parallel run, before its workers start: the folder where
    ``start_shared`` will build, named in the environment the workers inherit."""
    workdir = Path(tempfile.mkdtemp(prefix="plano_fast_docker_build_"))
    os.environ[SHARED_BUILD_ENV] = str(workdir)
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)


def start_shared() -> None:
    """In the controller, once a worker collected the test: the one build of the run, in
    the shared folder, published for whichever worker runs the test (``SharedBuild``)."""
    global _AHEAD
    if _AHEAD is not None or SHARED_BUILD_ENV not in os.environ:
        return
    _AHEAD = WheelBuild(Path(os.environ[SHARED_BUILD_ENV]))
    atexit.register(_AHEAD.stop)  # (before the folder's removal: atexit runs last-in first)
    _AHEAD.publish()


def test_the_image_steps_build_install_and_serve(fake: FakeProviderThread, tmp_path: Path) -> None:
    global _AHEAD
    _, runtime = stages()
    started, _AHEAD = _AHEAD, None
    shared = Path(os.environ.get(SHARED_BUILD_ENV, tmp_path / "none"))
    building = started or (SharedBuild(shared) if SharedBuild.found(shared) else WheelBuild(tmp_path))
    wheels = building.wheels
    returncode, log = building.result()
    assert returncode == 0, log[-4000:]
    warnings = [
        line for line in log.splitlines()
        if re.search(r"\w*Warning\b|deprecat", line, re.IGNORECASE)
    ]  # fmt: skip
    assert not warnings, "\n".join(warnings)
    (wheel,) = wheels.glob("plano_fast-*.whl")
    listing = subprocess.run(
        [sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True, check=True
    ).stdout
    for needed in ("plano_fast/migrations/sqlite/0001_initial.sql", "plano_fast/migrations/postgres/0001_initial.sql",
                   "plano_fast/data/prices.json", "licenses/LICENSE", "plano_fast/py.typed"):  # fmt: skip
        assert needed in listing, needed
    for module in ("_scan", "_head", "_request", "_obs"):
        assert re.search(rf"plano_fast/wire/{module}\.cpython-\S+\.so", listing), module
    for module in ("billing/_drain", "store/_params", "_usage_event",  # the usage path's compiled modules
                   "_new_request", "_new_credentials", "gateway/_new_exchange",  # the request path's records
                   "_otlp",  # a traced request's OTLP encoding
                   "gateway/_settle",  # an exchange's usage event and observation
                   "gateway/_answer"):  # a whole plain answer relayed in one call
        assert re.search(rf"plano_fast/{module}\.cpython-\S+\.so", listing), module
    assert not re.search(r"\.c\s*$", listing, re.MULTILINE), "generated C is for the sdist, not wheels"

    # 3. a fresh venv with only the wheel installed
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "_deps_from_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # 4. the ENTRYPOINT, in an empty directory, with the image's ENV
    volume = tmp_path / "volume"
    volume.mkdir()
    image_env: dict[str, str] = {}
    entrypoint: list[str] = []
    healthcheck: list[str] = []
    for word, rest in runtime:
        if word == "ENV":
            image_env.update(dict(w.split("=", 1) for w in shlex.split(rest)))
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "HEALTHCHECK":
            healthcheck = json.loads(rest.split(" CMD ", 1)[1])
        elif word == "COPY" and not rest.startswith("--from"):
            source, dest = rest.split()
            assert (ROOT / source).is_file(), source
            assert dest == image_env.get("PLANO_FAST_CONFIG", dest)
    assert entrypoint[:2] == ["plano-fast", "serve"] and healthcheck[0] == "python"
    # The config the image ships is valid as is (no secrets needed).
    shipped = subprocess.run(
        [str(venv / "bin" / "plano-fast"), "validate", "--strict", str(ROOT / "examples" / "plano_config.yaml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shipped.returncode == 0, shipped.stderr

    config = tmp_path / "etc" / "plano_config.yaml"
    config.parent.mkdir()
    config.write_text(
        "version: v0.4.0\n"
        "listeners: [{type: model, name: model_listener, address: 127.0.0.1, port: 0}]\n"
        "model_providers:\n"
        f"  - {{model: openai/gpt-4o-mini, base_url: 'http://127.0.0.1:{fake.port}', "
        "access_key: $OPENAI_API_KEY, default: true}\n"
        "plano_fast: {usage_flush_interval_s: 1}\n"
    )
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(volume),
        **image_env,
        "PLANO_FAST_CONFIG": str(config),
        "OPENAI_API_KEY": "sk-image-test",
    }
    proc = subprocess.Popen(entrypoint, cwd=volume, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on 0\.0\.0\.0:(\d+) \(pid \d+, scanner: cython\)", line)
        assert m, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        port = int(m.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert resp.status == 200
        health = subprocess.run(
            healthcheck, env={**env, "PLANO_FAST_HEALTH_URL": f"http://127.0.0.1:{port}/healthz"},
            cwd=volume, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert health.returncode == 0, health.stderr
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["object"] == "chat.completion"
        where = subprocess.run(
            [str(py), "-c", "import plano_fast, plano_fast.wire as s; print(plano_fast.__file__, s.IMPLEMENTATION)"],
            capture_output=True, text=True, check=True, cwd=volume,
        ).stdout  # fmt: skip
        assert where.startswith(str(venv)) and where.split()[-1] == "cython", where
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # The empty volume now holds the store, schema created by serve, with the request's row.
    with sqlite3.connect(volume / "plano_fast.db") as conn:
        assert conn.execute("SELECT count(*) FROM usage_log").fetchone()[0] == 1
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] >= 1
