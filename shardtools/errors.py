"""The product's exceptions. Callers catch these, never requests' or Pillow's.

    ShardToolsError
     ├── ConfigError        a setting is missing, unknown or out of range
     ├── RecordError        one input line cannot become a record (carries file and line)
     ├── RecordsChangedError  a records file was rewritten while a build read it
     ├── DatasetError       the dataset directory is unreadable or inconsistent
     │    └── LockedError   another build holds the directory
     └── ImageRejected      an image failed the check (carries a reason code)
"""

from __future__ import annotations


class ShardToolsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ShardToolsError):
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

    def __reduce__(self):  # so it crosses process boundaries intact
        return type(self), (self.key, self.problem)


class RecordError(ShardToolsError):
    def __init__(self, source: str, line_number: int, problem: str):
        super().__init__(f"{source}:{line_number}: {problem}")
        self.source = source
        self.line_number = line_number
        self.problem = problem

    def __reduce__(self):
        return type(self), (self.source, self.line_number, self.problem)


class RecordsChangedError(ShardToolsError):
    """A records file was rewritten while a build was reading it."""


class DatasetError(ShardToolsError):
    pass


class LockedError(DatasetError):
    pass


class ImageRejected(ShardToolsError):
    """An image that must not reach a shard. `reason` is a stable code (README lists them)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.reason, self.detail)
