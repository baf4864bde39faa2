"""Named points inside the build where a test can kill it, to prove it survives kill -9.

    SHARDTOOLS_CRASH_AT="PATTERN:N"   SIGKILL this process the N-th time a point whose
                                      name matches PATTERN (fnmatch) is reached
    SHARDTOOLS_CRASH_TRACE=FILE       append the name of every point reached to FILE

Both are for tests (tests/durability). With neither set, `reach` costs a dict lookup.
SIGKILL, not an exception: nothing in the process (finally blocks, atexit, buffered
writes) gets to tidy up, exactly as when a user or the OOM killer ends a build.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import signal
import threading

logger = logging.getLogger(__name__)

CRASH_AT = "SHARDTOOLS_CRASH_AT"
CRASH_TRACE = "SHARDTOOLS_CRASH_TRACE"

_lock = threading.Lock()
_state: dict = {}


def _config() -> dict:
    # Read once, on first use: the points are reached from several threads.
    if "armed" not in _state:
        spec = os.environ.get(CRASH_AT, "")
        pattern, _, count = spec.rpartition(":")
        _state["armed"] = (pattern, int(count)) if pattern and count.isdigit() else None
        _state["trace"] = os.environ.get(CRASH_TRACE) or None
        _state["hits"] = 0
    return _state


def due(name: str) -> bool:
    """Count one arrival at `name`; True when this arrival is the one to crash at. For a
    caller that wants to leave a half-done write behind first, then call `crash_now`."""
    state = _config()
    if state["armed"] is None and state["trace"] is None:
        return False
    with _lock:
        if state["trace"]:
            with open(state["trace"], "a", encoding="utf-8") as stream:
                stream.write(name + "\n")
        if state["armed"] is None:
            return False
        pattern, count = state["armed"]
        if not fnmatch.fnmatchcase(name, pattern):
            return False
        state["hits"] += 1
        return state["hits"] == count


def reach(name: str) -> None:
    """A point named `name`: crash here if the test asked for it."""
    if due(name):
        crash_now(name)


def crash_now(name: str) -> None:
    logger.warning("crash point %s reached: killing this process (SIGKILL)", name)
    os.kill(os.getpid(), signal.SIGKILL)
