"""Real filesystems, no mocks: a tmpfs that fills up, an inbox on another filesystem, a read-only inbox.

Each daemon runs as a real process inside a private mount namespace (`unshare -m`, root only):
the script mounts, prepares and then runs the daemon, so a killed test leaves no mount behind —
the mounts die with the namespace's last process. While it runs, the test reaches the files
under those mounts through `/proc/<pid>/root/<absolute path>`, which resolves paths in the
namespace of process <pid>.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from lit_continual.checkpoints import verify
from tests.conftest import REPO, daemon_cmd, log_text, newest, status, under_inbox, write_jsonl


def _namespaces_refused() -> str | None:
    """Why this machine cannot run the tests (not root, no unshare, no tmpfs mounts), or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare(1)/mount(8) are not installed"
    probe = tempfile.mkdtemp(prefix="lit-continual-ns-probe-")
    try:
        done = subprocess.run(["unshare", "-m", "--propagation", "private",
                               "mount", "-t", "tmpfs", "-o", "size=64k", "probe", probe],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"`unshare -m` failed: {err}"
    finally:
        os.rmdir(probe)
    if done.returncode != 0:
        return f"needs root to mount inside a private mount namespace (`unshare -m` + `mount -t tmpfs`): " \
               f"{done.stderr.strip() or done.returncode}"
    return None


_REFUSED = _namespaces_refused()
pytestmark = pytest.mark.skipif(_REFUSED is not None, reason=str(_REFUSED))

# A tiny-model checkpoint (batch 8, lora.r=8) takes 484 KiB of a tmpfs with 4 KiB pages: 11 files
# rounded up to whole pages, of which adapter_model.safetensors takes 140 KiB (written first) and
# optimizer.pt 296 KiB (written after adapter_config.json, 4 KiB).
TMPFS_KIB = 2048
CHECKPOINT_KIB = 484
# Two checkpoints + this filler leave 60 KiB: the third checkpoint's first file, the safetensors
# adapter, hits ENOSPC (SafetensorError); writing the second checkpoint still had 544 KiB.
FILLER_KIB = TMPFS_KIB - 2 * CHECKPOINT_KIB - 60
# Shrunk to this, 280 KiB are free: the adapter fits, torch.save of optimizer.pt hits ENOSPC (RuntimeError).
FILLER_SHRUNK_KIB = TMPFS_KIB - 2 * CHECKPOINT_KIB - 280


def _script(setup: str, base: Path, overrides: tuple[str, ...], after: str = "") -> str:
    """Shell run inside the namespace: `setup` (any failure aborts), the daemon, then `after`;
    exits with the daemon's exit code."""
    # `timeout` bounds a daemon orphaned by a SIGKILLed pytest (one stuck retrying a full disk);
    # --foreground keeps it in the shell's process group, which `_kill` signals.
    command = daemon_cmd(base, "daemon.exit_when_idle=true", *overrides)
    daemon = "timeout --foreground -s KILL 600 " + shlex.join(command)
    return f"set -e\n{setup}\necho NAMESPACE-READY\nset +e\n{daemon}\nrc=$?\n{after}\nexit $rc\n"


def _start(script: str, output: Path) -> subprocess.Popen:
    """`unshare -m` without --fork execs `sh` in place: the Popen pid is the namespace's shell
    (the daemon's pid is the status file's `pid`). Output goes to a file: a full pipe never blocks it."""
    env = dict(os.environ)
    env.pop("LIT_CONTINUAL_FAULT", None)
    with open(output, "w") as sink:
        return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
                                start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the namespace's whole process group (shell and daemon); the mounts go with it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _run(script: str, output: Path, timeout: float = 240) -> tuple[int, str]:
    proc = _start(script, output)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = -1
    finally:
        _kill(proc)
    return rc, output.read_text()


def _inside(pid: int, path: Path) -> Path:
    """`path` as process `pid` sees it, in its own mount namespace."""
    return Path(f"/proc/{pid}/root") / str(path).lstrip("/")


def _diagnostics(base: Path, output: Path) -> str:
    try:
        state = json.dumps(status(base), indent=1)
    except (OSError, ValueError) as err:
        state = f"(no status: {err})"
    out = output.read_text() if output.exists() else ""
    return (f"\n--- output tail ---\n{out[-3000:]}\n--- log tail ---\n{log_text(base)[-4000:]}"
            f"\n--- status ---\n{state}")


def _wait(proc: subprocess.Popen, predicate, timeout: float, what: str, diag) -> object:
    """Poll `predicate` until it is truthy; fail at once if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"the daemon ended (rc {proc.returncode}) before {what}{diag()}"
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{diag()}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _failed_lines(base: Path, ckpt: str) -> list[str]:
    return [line for line in log_text(base).splitlines() if f"Could not write checkpoint {ckpt}:" in line]


def _ledger(ckpt: Path) -> dict:
    return json.loads((ckpt / "ledger.json").read_text())


def _global_step(ckpt: Path) -> int:
    return json.loads((ckpt / "trainer_state.json").read_text())["global_step"]


def _nothing_blamed(base: Path) -> None:
    failed = base / "failed"
    assert not failed.exists() or not any(failed.iterdir()), f"blamed on the data: {list(failed.iterdir())}"
    assert not (base / ".crashes.json").exists(), "the crash guard counted a storage fault as a crash"


def test_real_disk_full_is_retried_and_never_blamed_on_the_file(tmp_path: Path):
    base = (tmp_path / "run").resolve()
    models, after = base / "current_model", base / "after-run"
    lines = 200
    write_jsonl(base / "inbox" / "a.jsonl", lines, seed=5)  # 25 steps: checkpoints 5, 10, then ENOSPC at 15
    filler = models / ".filler"  # a hidden name: never taken for a checkpoint nor a leftover
    setup = (f"mkdir -p {models}\n"
             f"mount -t tmpfs -o size={TMPFS_KIB}k lit-continual-test {models}\n"
             f"dd if=/dev/zero of={filler} bs=1024 count={FILLER_KIB} status=none")
    # The daemon runs as the shell's child (not exec'd) so that, once it has exited, the shell can
    # copy the final checkpoints out of the tmpfs, which dies with the namespace.
    script = _script(setup, base, ("checkpoint.every_n_steps=5", "checkpoint.keep=2", "checkpoint.min_free_mb=0",
                                   "daemon.retry_initial_seconds=0.2", "daemon.retry_max_seconds=0.5"),
                     after=f"mkdir -p {after}\ncp -a {models}/. {after}/")
    output = tmp_path / "output.txt"

    def diag() -> str:
        return _diagnostics(base, output)

    proc = _start(script, output)
    try:
        here = _inside(proc.pid, models)
        # 1. The adapter cannot be written: safetensors raises SafetensorError, not an OSError.
        _wait(proc, lambda: len(_failed_lines(base, "checkpoint-15")) >= 3, 180,
              "three failed attempts at checkpoint-15", diag)
        first = _failed_lines(base, "checkpoint-15")[0]
        assert "SafetensorError" in first and "No space left on device" in first, first + diag()
        state = status(base)
        assert state["status"] == "error" and "checkpoint-15" in state["error"], diag()
        assert "No space left on device" in state["error"], diag()
        assert proc.poll() is None and _alive(state["pid"]), "the daemon must retry, not die" + diag()
        _nothing_blamed(base)
        assert under_inbox(base, "a.jsonl"), "the file stays until its end checkpoint is durable"
        # Earlier checkpoints intact, and every failed attempt removed its partial temp dir.
        clean_between_retries = False
        for _ in range(20):
            entries = sorted(p.name for p in here.iterdir())
            assert [e for e in entries if e.startswith("checkpoint-")] == ["checkpoint-10", "checkpoint-5"], entries
            if not any(e.startswith(".tmp-") for e in entries):
                clean_between_retries = True
            time.sleep(0.05)
        assert clean_between_retries, f"a partial .tmp-* checkpoint stays in current_model: {entries}"
        for name in ("checkpoint-5", "checkpoint-10"):
            assert verify(here / name) is None, f"{name} damaged by the failed writes: {verify(here / name)}"

        # 2. Room for the adapter but not for optimizer.pt: torch.save raises RuntimeError.
        seen = len(_failed_lines(base, "checkpoint-15"))
        os.truncate(_inside(proc.pid, filler), FILLER_SHRUNK_KIB * 1024)
        _wait(proc, lambda: any("RuntimeError" in line for line in _failed_lines(base, "checkpoint-15")[seen:]),
              60, "a failed attempt whose cause is torch.save's RuntimeError", diag)
        assert proc.poll() is None and _alive(status(base)["pid"]), diag()
        _nothing_blamed(base)

        # 3. Space again: the same process writes checkpoint-15 and trains to the end.
        os.unlink(_inside(proc.pid, filler))
        rc = proc.wait(timeout=180)
    finally:
        _kill(proc)
    assert rc == 0, diag()
    text = log_text(base)
    assert text.count("lit-continual starting") == 1, "retried in the same process, never restarted"
    assert "Wrote checkpoint checkpoint-15 after the storage fault cleared" in text, diag()
    assert all("checkpoint-15" in line for line in re.findall(r".*Could not write checkpoint.*", text)), diag()
    final = status(base)
    assert (final["status"], final["error"]) == ("stopped", None), final
    _nothing_blamed(base)
    assert not under_inbox(base, "a.jsonl"), "trained and deleted"
    saved = sorted(after.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in saved] == ["checkpoint-20", "checkpoint-25"], [p.name for p in after.iterdir()]
    assert all(verify(p) is None for p in saved)
    assert _global_step(saved[-1]) == math.ceil(lines / 8)
    ledger = _ledger(saved[-1])
    assert [(r["name"], r["status"], r["examples_trained"]) for r in ledger["files_done"]] == [
        ("a.jsonl", "done", lines)]
    assert ledger["files_rejected"] == []


def test_inbox_on_another_filesystem_moves_by_copy(tmp_path: Path):
    base = (tmp_path / "run").resolve()
    inbox, staging = base / "inbox", (tmp_path / "staging").resolve()
    now = time.time()
    garbage = bytes(range(256)) * 8 + b"\x00\xff\xfe"
    bad = staging / "bad.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(garbage)
    os.utime(bad, (now - 20, now - 20))  # rejected first, so the good file's checkpoint lists it
    write_jsonl(staging / "good.jsonl", 40, seed=3, mtime=now - 10)
    setup = (f"mkdir -p {inbox}\n"
             f"mount -t tmpfs -o size=16m lit-continual-inbox {inbox}\n"
             f"cp -p {staging}/bad.jsonl {staging}/good.jsonl {inbox}/\n"
             f"echo DEVICES $(stat -c %d {inbox}) $(stat -c %d {base})")
    after = f"echo LEFTOVER-BEGIN\nfind {inbox} -mindepth 1 ! -type d\necho LEFTOVER-END"
    output = tmp_path / "output.txt"
    rc, out = _run(_script(setup, base, (), after=after), output)
    diag = _diagnostics(base, output)
    assert rc == 0, diag
    inbox_dev, base_dev = re.search(r"^DEVICES (\d+) (\d+)$", out, re.M).groups()
    assert inbox_dev != base_dev, "the inbox must be another filesystem than failed/"
    leftover = out.split("LEFTOVER-BEGIN\n", 1)[1].split("LEFTOVER-END", 1)[0]
    assert leftover == "", f"files left in the inbox tmpfs:\n{leftover}{diag}"
    failed = base / "failed"
    assert sorted(p.name for p in failed.iterdir()) == ["bad.jsonl", "bad.jsonl.error.json"], diag
    assert (failed / "bad.jsonl").read_bytes() == garbage, "moved byte-identical across filesystems"
    report = json.loads((failed / "bad.jsonl.error.json").read_text())
    assert report["file"] == "bad.jsonl" and report["reason"], report
    ledger = _ledger(newest(base))
    assert [(r["name"], r["status"], r["examples_trained"]) for r in ledger["files_done"]] == [
        ("good.jsonl", "done", 40)], ledger
    assert [r["name"] for r in ledger["files_rejected"]] == ["bad.jsonl"], ledger
    assert _global_step(newest(base)) == 5
    assert "cannot be" not in log_text(base), "every move and delete succeeded" + diag


def _error_lines(base: Path, needle: str) -> list[str]:
    return [line for line in log_text(base).splitlines() if " ERROR " in line and needle in line]


def test_read_only_inbox_trains_in_place_and_ignores_what_it_cannot_delete(tmp_path: Path):
    base = (tmp_path / "run").resolve()
    inbox = base / "inbox"
    now = time.time()
    good = write_jsonl(inbox / "good.jsonl", 40, seed=4, mtime=now - 10)
    good_bytes = good.read_bytes()
    garbage = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    (inbox / "bad.jsonl").write_bytes(garbage)
    os.utime(inbox / "bad.jsonl", (now - 20, now - 20))
    # The read-only view exists only inside the namespace; outside, the test still sees the files.
    setup = (f"mount --bind {inbox} {inbox}\n"
             f"mount -o remount,bind,ro {inbox}\n"
             f"if touch {inbox}/.probe 2>/dev/null; then echo 'inbox is writable'; exit 90; fi")
    script = _script(setup, base, ())
    trained_but_kept = "inbox/good.jsonl was trained (steps 1-5) but cannot be deleted"

    rc, _ = _run(script, tmp_path / "first.txt")
    diag = _diagnostics(base, tmp_path / "first.txt")
    assert rc == 0, diag
    ckpt = newest(base)
    assert ckpt.name == "checkpoint-5" and _global_step(ckpt) == 5, diag
    ledger = _ledger(ckpt)
    assert [(r["name"], r["status"], r["examples_trained"]) for r in ledger["files_done"]] == [
        ("good.jsonl", "done", 40)], ledger
    errors = _error_lines(base, trained_but_kept)
    assert len(errors) == 1 and "it is ignored while it stays there" in errors[0], errors
    first = status(base)
    assert (first["status"], first["error"]) == ("stopped", None), first
    assert any(trained_but_kept in w for w in first["warnings"]), first["warnings"]
    assert any("inbox/bad.jsonl was copied to failed/ but cannot be removed" in w for w in first["warnings"]), first
    assert (base / "failed" / "bad.jsonl").read_bytes() == garbage, "copied to failed/ byte-identical"
    assert (base / "failed" / "bad.jsonl.error.json").is_file()
    assert (inbox / "bad.jsonl").read_bytes() == garbage and good.read_bytes() == good_bytes, "originals stay"
    assert not (inbox / ".claimed").exists(), "nothing was created in the read-only inbox"

    # Second start on the same, still read-only inbox: the trained file is recognised, not retrained.
    rc, _ = _run(script, tmp_path / "second.txt")
    diag = _diagnostics(base, tmp_path / "second.txt")
    assert rc == 0, diag
    assert newest(base).name == "checkpoint-5" and _global_step(newest(base)) == 5, diag
    names = [r["name"] for r in _ledger(newest(base))["files_done"]]
    assert names.count("good.jsonl") == 1, names
    text = log_text(base)
    assert text.count("File good.jsonl (#") == 1, "trained once over both runs" + diag
    assert len(_error_lines(base, trained_but_kept)) == 2, "the ERROR is logged again, once, by the new run"
    second = status(base)
    assert (second["status"], second["error"]) == ("stopped", None), second
    assert any(trained_but_kept in w for w in second["warnings"]), second["warnings"]
    assert good.read_bytes() == good_bytes
    # The rejected file left in the inbox is recognised too (name, inode, sha256 in the ledger's
    # files_rejected): not copied to failed/ a second time.
    assert sorted(p.name for p in (base / "failed").iterdir()) == ["bad.jsonl", "bad.jsonl.error.json"]
    assert any("inbox/bad.jsonl was already in failed/" in w for w in second["warnings"]), second["warnings"]
