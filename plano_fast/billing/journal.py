"""An append-only spill journal for usage rows the store could not take.

When the database is away long enough for the in-memory backlog to reach its bound, the
flusher appends the oldest rows here (one JSON object per line, fsynced) instead of
dropping them.  On start every process claims leftover journal files by renaming them
(an atomic step, so two workers never replay the same file), and replays them; rows are
idempotent on ``request_id``, so a replay after a crash can never count twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from plano_fast.store import UsageRow

_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRow))


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows_spilled += len(lines)
        return len(lines)

    def set_aside(self, record: dict[str, object], reason: str) -> None:
        """Append one refused row or event, with why, to ``rejected_path`` (fsynced)."""
        line = json.dumps({"reason": reason, "record": record}, separators=(",", ":"), default=str)
        self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.rejected_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

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
                owner = suffix
            if owner.isdigit() and int(owner) != os.getpid() and _alive(int(owner)):
                continue  # another live worker's file
            target = candidate.with_name(f"{prefix}claimed-{os.getpid()}.{len(claimed)}")
            try:
                candidate.rename(target)
            except FileNotFoundError:
                continue  # claimed by another worker first
            claimed.append(target)
        return claimed

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
