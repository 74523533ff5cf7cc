"""Bad input: a clear error, nothing lost, the daemon lives. Every case the reliability issue lists."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from lit_continual.data.file_index import FileIndex
from tests.conftest import log_text, newest, train_here, write_jsonl

MIB = 1 << 20
GOOD = json.dumps({"text": "The cat sees the river."}) + "\n"


def _rejected(base: Path) -> dict[str, dict]:
    return {p.name[: -len(".error.json")]: json.loads(p.read_text())
            for p in (base / "failed").glob("*.error.json")}


@pytest.fixture(scope="module")
def inbox_run(tmp_path_factory):
    """One drained in-process daemon run over an inbox holding every kind of bad input."""
    base = tmp_path_factory.mktemp("bad") / "run"
    inbox = base / "inbox"
    inbox.mkdir(parents=True)
    outside = base.parent / "outside.jsonl"
    outside.write_text(GOOD * 3)
    files = {
        "empty.jsonl": b"",
        "blank.jsonl": b"\n  \n\n",
        "binary.jsonl": bytes(range(256)) * 40,
        "latin1.jsonl": "caf\xe9 cr\xe8me\n".encode("latin-1") * 5,
        "invalid.jsonl": b"{oops\n{\"text\": \n",
        "not_object.jsonl": b"[1, 2]\n\"text\"\n42\nnull\n",
        "no_text.jsonl": b'{"title": "x"}\n{"text": ""}\n{"text": 7}\n{"text": "   "}\n',
        "too_bad.jsonl": (GOOD * 8 + "{bad\n" * 2).encode(),  # 20 % bad > 10 %
        "just_ok.jsonl": (GOOD * 9 + "{bad\n").encode(),  # 10 % bad: trains 9
        "huge.jsonl": (json.dumps({"text": "word " * (300 * 1024)}) + "\n"
                       + json.dumps({"text": "x" * (3 * MIB)}) + "\n" + GOOD * 9).encode(),
        "naïve name with space.jsonl": (GOOD * 4).encode(),
        "perm.jsonl": (GOOD * 4).encode(),
    }
    now = time.time()
    for offset, (name, data) in enumerate(files.items()):
        (inbox / name).write_bytes(data)
        os.utime(inbox / name, (now - 100 + offset, now - 100 + offset))
    (inbox / "dir.jsonl").mkdir()
    (inbox / "dir.jsonl" / "inside.txt").write_text("kept")
    (inbox / "link.jsonl").symlink_to(outside)
    for name in ("x.json", "x.jsonl.gz", "X.JSONL"):
        (inbox / name).write_text(GOOD)
    files["dup_of_just_ok.jsonl"] = files["just_ok.jsonl"]
    (inbox / "dup_of_just_ok.jsonl").write_bytes(files["just_ok.jsonl"])
    os.utime(inbox / "dup_of_just_ok.jsonl", (now - 50, now - 50))

    original_scan = FileIndex.scan.__func__

    def scan(cls, fd, name, *args, **kwargs):
        if name == "perm.jsonl":  # as root, chmod 000 does not stop reads: inject it
            raise PermissionError(13, "Permission denied", name)
        return original_scan(cls, fd, name, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(FileIndex, "scan", classmethod(scan))
    try:
        code = train_here(base, "daemon.exit_when_idle=true", "data.max_line_bytes=2097152",
                          "checkpoint.every_n_steps=1000")
    finally:
        mp.undo()
    assert code == 0
    return base, files, outside


@pytest.mark.parametrize("name, reason", [
    ("empty.jsonl", "empty file"),
    ("blank.jsonl", "empty file"),
    ("binary.jsonl", "no trainable example"),
    ("latin1.jsonl", "no trainable example"),
    ("invalid.jsonl", "no trainable example"),
    ("not_object.jsonl", "no trainable example"),
    ("no_text.jsonl", "no trainable example"),
    ("too_bad.jsonl", "2 of 10 lines are bad (20.0% > data.max_bad_fraction=0.1)"),
    ("perm.jsonl", "unreadable: [Errno 13] Permission denied"),
])
def test_rejected_file_moved_byte_identical_with_report(inbox_run, name, reason):
    base, files, _ = inbox_run
    assert (base / "failed" / name).read_bytes() == files[name]
    assert not (base / "inbox" / name).exists()
    report = _rejected(base)[name]
    assert reason in report["reason"]
    assert set(report) >= {"file", "reason", "bad_lines", "total_lines", "first_errors", "time"}
    assert report["file"] == name and report["time"].endswith("+00:00")
    assert len(report["first_errors"]) <= 10


def test_error_report_counts_lines_one_based(inbox_run):
    base, _, _ = inbox_run
    report = _rejected(base)["not_object.jsonl"]
    assert report["bad_lines"] == 4 and report["total_lines"] == 4
    assert [e["line"] for e in report["first_errors"]] == [1, 2, 3, 4]
    assert "not a JSON object" in report["first_errors"][0]["error"]
    assert "not JSON" in _rejected(base)["latin1.jsonl"]["first_errors"][0]["error"]


def test_directory_and_symlink_moved_as_they_are(inbox_run):
    base, _, outside = inbox_run
    assert (base / "failed" / "dir.jsonl" / "inside.txt").read_text() == "kept"
    assert (base / "failed" / "link.jsonl").is_symlink()
    assert outside.read_text() == GOOD * 3, "the symlink target is never touched"
    assert "symlink" in _rejected(base)["link.jsonl"]["reason"]
    assert "not a regular file" in _rejected(base)["dir.jsonl"]["reason"]


def test_good_lines_train_and_bad_ones_are_counted(inbox_run):
    base, _, _ = inbox_run
    done = {r["name"]: r for r in json.loads((newest(base) / "ledger.json").read_text())["files_done"]}
    assert done["just_ok.jsonl"]["examples"] == 9 and done["just_ok.jsonl"]["bad_lines"] == 1
    assert "just_ok.jsonl: 1 bad line(s) of 10" in log_text(base)


def test_enormous_line_trains_as_one_example_and_overlong_line_is_bad(inbox_run):
    base, _, _ = inbox_run
    done = {r["name"]: r for r in json.loads((newest(base) / "ledger.json").read_text())["files_done"]}
    assert done["huge.jsonl"]["examples"] == 10 and done["huge.jsonl"]["bad_lines"] == 1
    assert "line 2: line longer than data.max_line_bytes=2097152" in log_text(base)


def test_names_with_spaces_and_non_ascii_train_normally(inbox_run):
    base, _, _ = inbox_run
    done = [r["name"] for r in json.loads((newest(base) / "ledger.json").read_text())["files_done"]]
    assert "naïve name with space.jsonl" in done
    assert not (base / "inbox" / "naïve name with space.jsonl").exists()


def test_same_content_twice_is_trained_again_by_default(inbox_run):
    base, _, _ = inbox_run
    done = [(r["name"], r["sha256"]) for r in json.loads((newest(base) / "ledger.json").read_text())["files_done"]]
    names = [n for n, _ in done]
    assert "just_ok.jsonl" in names and "dup_of_just_ok.jsonl" in names
    assert dict(done)["just_ok.jsonl"] == dict(done)["dup_of_just_ok.jsonl"]


def test_other_names_ignored_with_one_warning_each(inbox_run):
    base, _, _ = inbox_run
    text = log_text(base)
    for name in ("x.json", "x.jsonl.gz", "X.JSONL"):
        assert (base / "inbox" / name).exists()
        assert text.count(f"Ignoring inbox/{name}:") == 1


def test_rejections_recorded_in_ledger(inbox_run):
    base, _, _ = inbox_run
    rejected = {r["name"] for r in json.loads((newest(base) / "ledger.json").read_text())["files_rejected"]}
    assert {"empty.jsonl", "too_bad.jsonl", "link.jsonl", "dir.jsonl", "perm.jsonl"} <= rejected


def test_skip_duplicates_rejects_known_content_and_ledger_records_both(tmp_path: Path):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "first.jsonl", 16, seed=9, mtime=time.time() - 10)
    assert train_here(base, "daemon.exit_when_idle=true") == 0
    write_jsonl(base / "inbox" / "again.jsonl", 16, seed=9, mtime=time.time() - 5)
    write_jsonl(base / "inbox" / "new.jsonl", 16, seed=10)
    assert train_here(base, "daemon.exit_when_idle=true", "daemon.skip_duplicates=true") == 0
    report = _rejected(base)["again.jsonl"]
    assert "duplicate of first.jsonl" in report["reason"] and "daemon.skip_duplicates=true" in report["reason"]
    # The rejection reaches the ledger with the next checkpoint (here: new.jsonl's end).
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert [r["name"] for r in ledger["files_done"]] == ["first.jsonl", "new.jsonl"]
    assert ledger["files_rejected"][0]["sha256"] == ledger["files_done"][0]["sha256"]


def test_file_changed_after_claim_is_reported_and_moved_at_its_end(tmp_path: Path, monkeypatch, caplog):
    from lit_continual.callbacks.files import FileLifecycle

    base = tmp_path / "run"
    path = write_jsonl(base / "inbox" / "growing.jsonl", 40, seed=3)
    started = FileLifecycle._file_started
    writer = open(path, "a")  # noqa: SIM115 - a pipeline that keeps its file open

    def append_while_training(self, trainer, meta):
        started(self, trainer, meta)
        writer.write(GOOD)  # the pipeline writes more after the daemon claimed (renamed) it
        writer.flush()

    monkeypatch.setattr(FileLifecycle, "_file_started", append_while_training)
    with caplog.at_level(logging.ERROR, logger="lit_continual"):
        assert train_here(base, "daemon.exit_when_idle=true") == 0
    assert "modified while being trained" in _rejected(base)["growing.jsonl"]["reason"]
    assert (base / "failed" / "growing.jsonl").read_text().endswith(GOOD)
    assert json.loads((newest(base) / "ledger.json").read_text())["files_done"][0]["examples"] == 40
