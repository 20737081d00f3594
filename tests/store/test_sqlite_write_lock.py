"""The cross-process write lock of the SQLite store: every group commit holds an exclusive `flock`
on `<db>.writelock` from before `BEGIN IMMEDIATE` to after COMMIT, so stores in several processes
share one file without errors, and `close()` gives the lock's descriptor back."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.calls import CallState, CallUpdate
from gateway.store import SQLiteStore, StoreError


WAIT = 30  # seconds: a bound on waits that should take milliseconds, so a bug fails instead of hanging


def ringing(call_id: str) -> CallUpdate:
    return CallUpdate(provider="twilio", provider_call_id=call_id, raw_status="ringing", state=CallState.RINGING,
                      params={"CallStatus": "ringing"})


async def _count(store: SQLiteStore, sql: str) -> int:
    return await store._read(lambda conn: conn.execute(sql).fetchone()[0])


async def _start(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(script), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def _expect_line(proc: asyncio.subprocess.Process, wanted: str) -> None:
    line = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip()
    if line != wanted:
        stderr = (await asyncio.wait_for(proc.stderr.read(), WAIT)).decode() if not line else ""
        raise AssertionError(f"child said {line!r}, expected {wanted!r}\n{stderr}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _lock_is_free(lock_path: str) -> bool:
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


HOLD_LOCK = """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.readline()
    fcntl.flock(fd, fcntl.LOCK_UN)
    print("unlocked", flush=True)
"""


async def test_a_write_waits_for_the_lock_held_by_another_process(tmp_path):
    """While another process holds the flock, a write does not start (SQLite's own write lock stays free);
    once it lets go, the write commits, is stored, and the store drops the lock again."""
    path = str(tmp_path / "g.db")
    store = SQLiteStore(path)
    await store.open()
    holder = await _start(HOLD_LOCK, path + ".writelock")
    try:
        await _expect_line(holder, "locked")
        task = asyncio.create_task(store.apply_update(ringing("CA1"), run_id="run-1"))
        await asyncio.sleep(0.3)
        assert not task.done()
        # The store waits before BEGIN IMMEDIATE: another connection can still take SQLite's write lock.
        raw = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            pytest.fail(f"the store took SQLite's write lock before the flock: {exc}")
        finally:
            raw.close()
        assert not task.done()
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        await _expect_line(holder, "unlocked")
        applied = await asyncio.wait_for(task, WAIT)
        assert applied.created
        assert (await store.get_call("run-1")).provider_call_id == "CA1"
        assert _lock_is_free(path + ".writelock")  # released after the COMMIT
        assert await asyncio.wait_for(holder.wait(), WAIT) == 0
    finally:
        await _stop(holder)  # first: a store blocked on the lock could not close
        await store.close()


WRITER = """
    import asyncio, sys
    from gateway.calls import CallState, CallUpdate
    from gateway.store import SQLiteStore

    async def main(path, prefix, n, wave):
        store = SQLiteStore(path, synchronous="NORMAL")
        await store.open()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        created = 0
        for start in range(0, n, wave):
            results = await asyncio.gather(*[
                store.apply_update(CallUpdate(provider="twilio", provider_call_id=f"{prefix}-CA{i}", raw_status="ringing",
                                              state=CallState.RINGING, params={"CallStatus": "ringing"}),
                                   run_id=f"{prefix}-{i}")
                for i in range(start, min(start + wave, n))])
            created += sum(r.created for r in results)
        await store.close()
        print(f"created {created}", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""

N = 200
WAVE = 10  # concurrent writes per wave: many group commits per writer, so the lock changes hands often


async def _write_many(store: SQLiteStore, prefix: str) -> int:
    created = 0
    for start in range(0, N, WAVE):
        results = await asyncio.gather(*[store.apply_update(ringing(f"{prefix}-CA{i}"), run_id=f"{prefix}-{i}")
                                         for i in range(start, start + WAVE)])
        created += sum(r.created for r in results)
    return created


async def test_stores_in_two_processes_write_concurrently_and_lose_nothing(tmp_path):
    """Two stores in this process and one in another write at once on one file: no error, and every
    call and timeline row of all three is there afterwards."""
    path = str(tmp_path / "g.db")
    first, second = SQLiteStore(path, synchronous="NORMAL"), SQLiteStore(path, synchronous="NORMAL")
    await first.open()
    await second.open()
    child = await _start(WRITER, path, "c", str(N), str(WAVE))
    try:
        await _expect_line(child, "ready")
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        created = await asyncio.wait_for(asyncio.gather(_write_many(first, "a"), _write_many(second, "b")), WAIT)
        assert created == [N, N]
        await _expect_line(child, f"created {N}")
        assert await asyncio.wait_for(child.wait(), WAIT) == 0
        assert await _count(first, "SELECT COUNT(*) FROM calls") == 3 * N
        assert await _count(second, "SELECT COUNT(*) FROM call_timeline") == 3 * N
        for prefix in "abc":
            assert await _count(first, f"SELECT COUNT(*) FROM calls WHERE workflow_run_id LIKE '{prefix}-%'") == N
        assert await _count(first, "SELECT COUNT(*) FROM events") == 3 * N
    finally:
        await _stop(child)
        await first.close()
        await second.close()


def _descriptors_on(lock_path: str) -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for entry in fds.iterdir():
        try:
            if os.readlink(entry) == lock_path:
                count += 1
        except OSError:  # closed meanwhile (including the one iterdir used)
            pass
    return count


async def test_close_closes_the_lock_descriptor(tmp_path):
    """The lock file is opened close-on-exec at `open()` and closed by `close()`: stores opened and
    closed over and over hold no descriptor on it afterwards."""
    path = str(tmp_path / "g.db")
    lock_path = path + ".writelock"
    store = SQLiteStore(path)
    await store.open()
    fd = store._lock_fd
    assert fd is not None
    assert os.path.samestat(os.fstat(fd), os.stat(lock_path))
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # not inherited by processes the gateway starts
    await store.close()
    assert store._lock_fd is None
    with pytest.raises(OSError):
        os.fstat(fd)

    for i in range(20):
        again = SQLiteStore(path)
        await again.open()
        assert (await again.apply_update(ringing(f"CA{i}"), run_id=f"run-{i}")).created
        assert _descriptors_on(lock_path) == 1
        await again.close()
    assert _descriptors_on(lock_path) == 0


async def test_a_lock_that_cannot_be_taken_fails_the_writes_instead_of_hanging(tmp_path):
    """An error from flock (a descriptor gone bad, ENOLCK on a network filesystem) answers every
    caller of the group with a StoreError naming the lock; none is left waiting, nothing is written."""
    store = SQLiteStore(str(tmp_path / "g.db"))
    await store.open()
    good_fd = store._lock_fd
    try:
        store._lock_fd = (1 << 20) + 7  # a descriptor number that is not open (above any fd limit here)
        with pytest.raises(StoreError, match="write lock"):
            await asyncio.wait_for(store.apply_update(ringing("CA1"), run_id="run-x"), 30)
        store._lock_fd = good_fd
        assert await store.get_call("run-x") is None
        assert (await store.apply_update(ringing("CA1"), run_id="run-x")).created  # the store still works
    finally:
        store._lock_fd = good_fd
        await store.close()
