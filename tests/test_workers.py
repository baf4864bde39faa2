"""Image worker processes end with the build, however the build ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_workers_exit_when_the_build_is_killed(tmp_path):
    """SIGKILL gives the build no chance to stop its pool; the workers notice their parent
    is gone and exit instead of waiting on their queue for ever (found by a new user)."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from shardtools.settings import ImageSettings
        from shardtools.workers import ImageWorkers

        if __name__ == "__main__":
            workers = ImageWorkers(ImageSettings(processes=2))
            workers.check_bytes(b"not an image")     # starts the pool
            pids = list(workers._pool._processes)
            print(" ".join(map(str, pids)), flush=True)
            time.sleep(600)
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker_pids = [int(p) for p in child.stdout.readline().split()]
        assert worker_pids and all(_alive(p) for p in worker_pids)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    # Bounded wait for the event (not a speed assertion): the watch polls once a second.
    for _ in range(300):
        if not any(_alive(p) for p in worker_pids):
            break
        time.sleep(0.1)
    leftover = [p for p in worker_pids if _alive(p)]
    for pid in leftover:  # ours to clean up if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not leftover
