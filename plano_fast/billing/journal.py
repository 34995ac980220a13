"""Local journals for usage the store has not taken yet.

* The spill journal (``Journal``): when the database is away long enough for the
  in-memory backlog to reach its bound, or at a stop, the flusher appends rows here (one
  JSON object per line, fsynced) instead of dropping them.
* The write-ahead log (``WriteAheadLog``): every usage event submitted is appended to it
  and fsynced in groups (every ``sync_interval_s``, default 0.1 s), and its segments are
  deleted once every event in them is in the store (or spilled, or set aside).  A SIGKILL
  then loses at most the events of the last sync window.

On start every process claims leftover files of both kinds by renaming them (an atomic
step, so two workers never replay the same file; a live process's files are left alone)
and replays them; rows are idempotent on ``request_id``, so a replay after a crash can
never count twice.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path


from plano_fast.billing.drain import encode_line
from plano_fast.billing.drain import wal_line as _wal_line
from plano_fast.billing.file_thread import FileThread
from plano_fast.periodic import Periodic
from plano_fast.store.records import UsageRow
from plano_fast.usage import UsageEvent

_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRow))
WAL_SUFFIX = ".wal"
log = logging.getLogger("plano_fast.billing")

#: Journal files hold usage rows (project ids, key hashes, costs, what the store has not
#: taken yet): readable and writable by the gateway's user alone (the umask made them 0644),
#: and never written through a symlink planted at their path (``O_NOFOLLOW``: an append to
#: whatever file the link names, with the gateway's rights).
JOURNAL_FILE_MODE = 0o600
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW


#: opened to claim a journal file: read-only, never through a symlink (ELOOP), never
#: blocking (a FIFO planted at the name would hold the open until a writer came)
_CLAIM_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_append(path: Path) -> int:
    """A journal file's descriptor for appending (created 0600; a symlink is ELOOP).  An
    existing file of the gateway's own user is made 0600 too: one created before the mode
    was set (0644 under the usual umask) kept it, readable by every local user."""
    fd = os.open(path, _APPEND_FLAGS, JOURNAL_FILE_MODE)
    try:
        _own_mode(fd, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _own_mode(fd: int, st: os.stat_result) -> None:
    """``JOURNAL_FILE_MODE`` set on the open file ``fd`` (status ``st``) when it is the
    gateway user's and has another mode.  On the descriptor, not by path: a name swapped
    for a link after the open changes nothing.  Another user's file is left as it is
    (chmod would be EPERM; its replay is refused by ``_claimable``)."""
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != JOURNAL_FILE_MODE:
        os.fchmod(fd, JOURNAL_FILE_MODE)


def append_synced(path: Path, text: str) -> None:
    """``text`` appended to the journal file ``path`` and fsynced (its directory made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_append(path)
    try:
        view = memoryview(text.encode("utf-8"))
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _claimable(candidate: Path) -> bool:
    """A journal file this process may replay: a regular file of its own user, never a
    symlink (which would have it read -- and its rows counted -- from wherever it points)."""
    try:
        fd = os.open(candidate, _CLAIM_FLAGS)
    except FileNotFoundError:
        return False  # (claimed by another worker first)
    except OSError:  # ELOOP: a symlink; EACCES: not readable by this user
        log.error("journal file %s is not a regular file of this user: left alone, not replayed", candidate)
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            log.error("journal file %s is not a regular file of this user: left alone, not replayed", candidate)
            return False
        _own_mode(fd, st)  # (one left 0644 by a gateway before the mode was set)
        return True
    finally:
        os.close(fd)


class Journal:
    """This process's journal file ``<base>.<pid>`` plus the claiming of old ones."""

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self.base = Path(base_path)
        self.path = self.base.with_name(f"{self.base.name}.{os.getpid()}")
        self.rows_spilled = 0
        #: rows (and events) the store refused for their values: kept for an operator, not
        #: replayed (a replay would be refused again); the name is outside ``claim``'s glob
        self.rejected_path = self.base.with_name(f"{self.base.name}-rejected.{os.getpid()}")

    @staticmethod
    def record_of(row: UsageRow) -> dict[str, object]:
        return {name: getattr(row, name) for name in _FIELDS}

    def spill(self, rows: Iterable[UsageRow]) -> int:
        lines = [json.dumps(self.record_of(row), separators=(",", ":")) for row in rows]
        if not lines:
            return 0
        append_synced(self.path, "\n".join(lines) + "\n")
        self.rows_spilled += len(lines)
        return len(lines)

    def set_aside(self, record: dict[str, object], reason: str) -> None:
        """Append one refused row or event, with why, to ``rejected_path`` (fsynced)."""
        line = json.dumps({"reason": reason, "record": record}, separators=(",", ":"), default=str)
        append_synced(self.rejected_path, line + "\n")

    def claim(self) -> list[Path]:
        """Take ownership of every journal file not being written by a live process."""
        claimed: list[Path] = []
        if not self.base.parent.exists():
            return claimed
        prefix = self.base.name + "."
        for candidate in sorted(self.base.parent.glob(self.base.name + ".*")):
            suffix = candidate.name[len(prefix) :]
            if suffix.startswith("claimed-"):
                owner = suffix.split("-")[1].split(".")[0]
            else:
                owner = suffix.split(".")[0]  # "<pid>" (spill) or "<pid>.<n>.wal" (WAL)
            if owner.isdigit() and int(owner) != os.getpid() and _alive(int(owner)):
                continue  # another live worker's file (claim runs before our WAL starts)
            if not _claimable(candidate):
                continue
            wal = WAL_SUFFIX if candidate.name.endswith(WAL_SUFFIX) else ""
            target = candidate.with_name(f"{prefix}claimed-{os.getpid()}.{_next_claim()}{wal}")
            try:
                candidate.rename(target)
            except FileNotFoundError:
                continue  # claimed by another worker first
            claimed.append(target)
        return claimed

    @staticmethod
    def read_events(path: Path, batch_size: int) -> Iterator[list[UsageEvent]]:
        """A write-ahead log's events, ``batch_size`` at a time (a torn last group, from a
        crash mid-write, is skipped: those events were never synced)."""
        batch: list[UsageEvent] = []
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    group = json.loads(line)
                except ValueError:  # JSONDecodeError, or a UTF-8 sequence torn mid-write
                    continue
                for fields in group:
                    batch.append(UsageEvent(*fields))
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
        if batch:
            yield batch

    @staticmethod
    def read_batches(path: Path, batch_size: int) -> Iterator[list[UsageRow]]:
        """The file's rows, ``batch_size`` at a time (memory stays bounded)."""
        batch: list[UsageRow] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash mid-write
                batch.append(UsageRow(**{k: data[k] for k in _FIELDS if k in data}))
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch


_claims = 0


def _next_claim() -> int:
    global _claims
    _claims += 1
    return _claims


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Events encoded per stretch of the event loop by a sync (~1 µs an event): at saturation
#: (15,000 req/s) one 0.1 s sync would otherwise encode 1,500 in one ~2 ms stretch (issue 27).
SYNC_SLICE = 128

# ``_wal_line`` (plano_fast.billing.drain): compiled where built, the slots of each event
# written as JSON straight into one buffer (~4.2k instructions an event in orjson, plus
# the field tuples and lists built for it, before; issue 27); the twin encodes with orjson.
_encode_line = encode_line  # (the name the tests and older callers use)


class WriteAheadLog:
    """Every submitted usage event, on disk within ``sync_interval_s``.

    ``append`` (the request path, through ``UsageFlusher.submit``) only appends to a list.
    Every ``sync_interval_s`` the events appended since the last sync are encoded as one
    JSON line (a list of field lists, in ``UsageEvent`` order) on the loop, then written
    and fsynced on a thread of its own (an fsync can take milliseconds: never on the
    loop).  Events are numbered in submission order; the flusher reports how many of the
    oldest are durable elsewhere (written to the store, spilled, set aside) with
    ``resolved``, and every segment whose events are all resolved is deleted.  A segment
    is closed and a new one started at each ``resolved`` call, so segments span about one
    flush interval.  Files: ``<journal base>.<pid>.<n>.wal``.
    """

    def __init__(self, journal: Journal, sync_interval_s: float) -> None:
        self.sync_interval_s = sync_interval_s
        self._base = journal.base
        self._buffer: list[UsageEvent] = []
        self._synced = 0  # events on disk (numbered 1..n in submission order)
        self._closed: collections.deque[tuple[Path, int]] = collections.deque()  # (file, last)
        self._current: Path | None = None
        self._current_last = 0
        self._segments = 0
        self._lock = asyncio.Lock()
        self._executor: FileThread | None = None
        self._segment = SegmentFile()  # (used on the executor's thread while it runs)
        #: set while the sync task waits for an event (an idle gateway: no wake-ups)
        self._parked: asyncio.Future[None] | None = None
        self._loop = Periodic("usage-wal", self._tick, lambda: self.sync_interval_s, on_error=self._sync_failed)
        self.syncs = 0
        self.sync_failures = 0

    def append(self, event: UsageEvent) -> None:
        self._buffer.append(event)
        if self._parked is not None:  # the first event after an idle stretch
            self._wake()

    def _wake(self) -> None:
        parked, self._parked = self._parked, None
        if parked is not None and not parked.done():
            parked.set_result(None)

    async def _tick(self) -> None:
        """One cycle of the sync task: sync what was appended; with nothing appended, wait
        for the next append instead of waking every ``sync_interval_s`` to find nothing
        (an idle gateway then costs nothing here).  The cycle after the wake-up comes one
        interval later, so an event is still on disk within ``sync_interval_s``."""
        if self._buffer:
            await self.sync()
            return
        parked = self._parked = asyncio.get_running_loop().create_future()
        try:
            await parked
        finally:
            self._parked = None

    def start(self) -> None:
        self._executor = FileThread("plano-wal")
        self._loop.start()

    async def stop(self) -> None:
        """Stop syncing (the flusher has drained: everything is resolved or spilled)."""
        await self._loop.stop()
        if self._executor is not None:
            self._executor.stop()
            self._executor = None
        self._segment.close()  # (the thread has ended)

    @property
    def files(self) -> list[Path]:
        return [p for p, _ in self._closed] + ([self._current] if self._current else [])

    def _sync_failed(self, exc: Exception) -> None:
        # the events stay queued for the store
        self.sync_failures += 1
        if self.sync_failures == 1 or self.sync_failures % 100 == 0:
            logging.getLogger("plano_fast.billing").error(
                "usage write-ahead log sync failed (%s: %s); %d failures",
                type(exc).__name__, exc, self.sync_failures)

    async def sync(self) -> None:
        """Write and fsync the events appended since the last sync."""
        async with self._lock:
            events = self._buffer
            if not events or self._executor is None:
                return
            self._buffer = []
            try:
                # A line per SYNC_SLICE events, the loop running in between (the reader
                # takes any number of lines; a torn last one is skipped).
                lines = []
                for start in range(0, len(events), SYNC_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    lines.append(_wal_line(events, start, min(start + SYNC_SLICE, len(events))))
            except BaseException:
                self._buffer[:0] = events  # kept for the next sync
                raise
            line = b"".join(lines)
            if self._current is None:
                self._segments += 1
                self._current = self._base.with_name(
                    f"{self._base.name}.{os.getpid()}.{self._segments}{WAL_SUFFIX}")
            path = self._current
            try:
                await self._executor.run(self._segment.append, path, line)
            except BaseException:
                self._buffer[:0] = events  # kept for the next sync
                raise
            self._synced += len(events)
            self._current_last = self._synced
            self.syncs += 1

    async def resolved(self, count: int) -> None:
        """The oldest ``count`` events submitted are durable elsewhere: delete the segments
        holding only those, and start a new segment.

        The unlinks run on the log's thread: on the loop one measured 1-8 ms under disk
        load, a stall for every request in flight (issue 27)."""
        async with self._lock:
            if self._current is not None:
                self._closed.append((self._current, self._current_last))
                self._current = None
            closed = self._closed
            done: list[Path] = []
            while closed and closed[0][1] <= count:
                done.append(closed.popleft()[0])
            if not done:
                return
            if self._executor is None:  # stopped: nothing else is waiting on the loop
                self._segment.unlink_all(done)
            else:
                # Shielded: a cancelled flusher must not leave a resolved segment behind
                # (the thread runs every job it was given; the shield keeps the
                # waiting future itself uncancelled).
                await asyncio.shield(self._executor.run(self._segment.unlink_all, done))


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            # (a read-only remount, a directory gone bad: raised, it ended the flusher's
            # task after its write) Left behind, the segment is replayed by the next start,
            # which finds its rows already stored (idempotent on request_id).
            logging.getLogger("plano_fast.billing").warning(
                "usage write-ahead log segment %s not deleted (%s); replayed at the next start",
                path, type(exc).__name__)


class SegmentFile:
    """The segment the log's thread appends to, kept open from one sync to the next (used
    on that thread only).

    Opened per sync, a sync was ~7 system calls on the thread beside the write and the
    fsync (mkdir, openat, fstat, ioctl, lseek, close, ...) and the Python of ``Path.mkdir``
    and ``open``: ~0.05-0.1 calls a request each at concurrency 1 (issue 27,
    benchmarks/results/tails-20261206.md).  Now a segment is opened by its first sync
    and closed when the log moves to the next one, when it is unlinked, after a failed
    write (the next sync opens it again, as each sync did) and at stop."""

    __slots__ = ("path", "_fd", "_size")

    def __init__(self) -> None:
        self.path: Path | None = None
        self._fd = -1
        self._size = 0  # bytes in the segment after its last whole write

    def append(self, path: Path, data: bytes) -> None:
        """``data`` appended to ``path`` and fsynced; on an error the segment is cut back to
        its size before (a partial write followed by the same events, re-sent by the next
        sync, would leave one unreadable line: events lost to a replay)."""
        if path != self.path:
            self.close()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = open_append(path)
            self.path = path
            self._size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # (the next sync's lines start after what is there; replay skips a torn line)
            self.close()
            raise
        self._size += len(data)

    def unlink_all(self, paths: list[Path]) -> None:
        if self.path in paths:
            self.close()
        _unlink_all(paths)

    def close(self) -> None:
        fd, self._fd, self.path = self._fd, -1, None
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass  # (its data was fsynced, or the sync that wrote it failed)
