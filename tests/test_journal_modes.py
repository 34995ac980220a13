"""Journal files left 0644 by a gateway from before their mode was set (session k made new
ones 0600) are made 0600 when the gateway opens or claims one of its own: on the open
descriptor (``fchmod``), never by path.  Real files in a temporary folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from plano_fast.billing.journal import Journal, SegmentFile, open_append
from plano_fast.managed.settle_journal import SettleJournal


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _old_file(path: Path, text: str = "") -> Path:
    """A journal file as an older gateway left it: 0644."""
    path.write_text(text)
    os.chmod(path, 0o644)
    assert _mode(path) == 0o644
    return path


def test_an_existing_0644_file_opened_for_appending_becomes_0600(tmp_path: Path) -> None:
    """open_append (spills, set-aside rows, kept settles) and the write-ahead log's
    segments: on main the file kept 0644 (returns 0o644 there)."""
    journal = Journal(tmp_path / "usage.journal")
    _old_file(journal.path)
    journal.spill([])  # nothing to write: the file is not opened
    assert _mode(journal.path) == 0o644
    journal.set_aside({"x": 1}, "test")  # a new file: 0600 as before
    _old_file(journal.rejected_path, "kept\n")
    journal.set_aside({"x": 2}, "test")
    assert _mode(journal.rejected_path) == 0o600
    assert journal.rejected_path.read_text().startswith("kept\n")  # appended, not truncated
    segment = _old_file(tmp_path / "usage.journal.1.1.wal")
    writer = SegmentFile()
    try:
        writer.append(segment, b"{}\n")
    finally:
        writer.close()
    assert _mode(segment) == 0o600
    fd = open_append(_old_file(tmp_path / "plain"))
    os.close(fd)
    assert _mode(tmp_path / "plain") == 0o600


def test_a_claimed_0644_file_of_a_stopped_process_becomes_0600(tmp_path: Path) -> None:
    """The usage journal's and the kept settles' claims: the file renamed to
    ``claimed-<pid>.<n>`` keeps its rows and is 0600 (on main: 0o644)."""
    journal = Journal(tmp_path / "usage.journal")
    _old_file(tmp_path / "usage.journal.999999", '{"a":1}\n')
    _old_file(tmp_path / "usage.journal.999999.3.wal", '{"b":2}\n')
    claimed = journal.claim()
    assert len(claimed) == 2
    for path in claimed:
        assert _mode(path) == 0o600, path
    assert sorted(p.read_text() for p in claimed) == ['{"a":1}\n', '{"b":2}\n']
    kept = SettleJournal(str(tmp_path / "usage.journal"))
    _old_file(kept.path.with_name(kept.path.name.rsplit(".", 1)[0] + ".999999"), "{}\n")
    [settles] = kept.claim()
    assert _mode(settles) == 0o600


def test_the_mode_is_set_on_the_descriptor_not_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No chmod by name (a link swapped in after the open would have its target changed):
    one fchmod for the old file claimed, none for a file created 0600."""
    _old_file(tmp_path / "usage.journal.999999", "x\n")
    calls: list[str] = []
    real_fchmod = os.fchmod
    monkeypatch.setattr(os, "chmod", lambda *a, **k: calls.append("chmod"))
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: (calls.append("fchmod"), real_fchmod(fd, mode))[1])
    Journal(tmp_path / "usage.journal").claim()
    assert calls == ["fchmod"]
    calls.clear()
    os.close(open_append(tmp_path / "fresh"))
    assert calls == []


def test_a_symlink_a_fifo_or_a_folder_is_not_claimed_nor_changed(tmp_path: Path) -> None:
    """A link's target keeps its mode and is not claimed; a FIFO does not block the claim
    (opened non-blocking) and is left alone."""
    target = _old_file(tmp_path / "elsewhere", "{}\n")
    (tmp_path / "usage.journal.999998").symlink_to(target)
    os.mkfifo(tmp_path / "usage.journal.999997")
    (tmp_path / "usage.journal.999996").mkdir()
    assert Journal(tmp_path / "usage.journal").claim() == []
    assert _mode(target) == 0o644
    assert stat.S_ISFIFO((tmp_path / "usage.journal.999997").lstat().st_mode)
