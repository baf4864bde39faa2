"""Write files so that a crash at any moment leaves either the old or the new content."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from . import crashpoints

TEMP_MARK = ".tmp-"  # every temporary name we create contains this; cleanup looks for it


def temp_path_for(path: Path) -> Path:
    return path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", durable: bool = True):
    """Yield a file open on a temporary name beside `path`; on success flush, fsync and
    rename it over `path` (then fsync the folder). On error the temporary file is removed.

    Crash points (see crashpoints.py): NAME:partial (some bytes may still sit in the
    buffer), NAME:synced (temporary file complete), NAME:renamed (folder not yet fsynced).
    """
    path = Path(path)
    temp = temp_path_for(path)
    stream = open(temp, mode)
    try:
        yield stream
        crashpoints.reach(f"{path.name}:partial")
        stream.flush()
        if durable:
            os.fsync(stream.fileno())
        stream.close()
        crashpoints.reach(f"{path.name}:synced")
        os.replace(temp, path)
        crashpoints.reach(f"{path.name}:renamed")
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        stream.close()
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, value, durable: bool = True) -> None:
    with atomic_writer(path, "w", durable=durable) as stream:
        json.dump(value, stream, indent=1, sort_keys=False)
        stream.write("\n")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
