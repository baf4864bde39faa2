"""Read a YAML config into typed settings, or stop with one line naming the key and problem.

Relative paths in the file are taken relative to the file's own folder, so a config works
the same from any working directory.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .settings import (MAX_FETCH_THREADS, BuildSettings, Config, TrainSettings)

logger = logging.getLogger(__name__)

_RESIZE_MODES = ("shorter_side", "longer_side", "keep")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")

_PATH_KEYS = {"build": ("records", "cache_dir", "output_dir"), "train": ("dataset",)}


def load_config(path: str | os.PathLike, only: str | None = None) -> Config:
    """Parse and validate `path`. Raises ConfigError (one readable line) on any problem.
    `only="train"` reads the train section alone (training needs no records files)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), f"not valid YAML{where}") from exc
    return config_from_dict(raw if raw is not None else {}, base_dir=path.parent,
                            source=str(path), only=only)


def config_from_dict(raw: Any, base_dir: str | os.PathLike = ".",
                     source: str = "<dict>", only: str | None = None) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("(top level)", f"expected a mapping with 'build' and/or 'train', got {_kind(raw)}")
    _reject_unknown("", raw, ("build", "train"))
    if "build" not in raw and "train" not in raw:
        raise ConfigError("(top level)", "needs a 'build' or a 'train' section")
    base_dir = Path(base_dir)

    build = None
    if raw.get("build") is not None and only in (None, "build"):
        section = _resolve_paths(_mapping("build", raw["build"]), _PATH_KEYS["build"], base_dir,
                                 "build")
        build = _build_dataclass(BuildSettings, section, "build")
        _check_build(build)
    train = None
    if raw.get("train") is not None and only in (None, "train"):
        section = _mapping("train", raw["train"])
        build_raw = raw.get("build")
        if "dataset" not in section and isinstance(build_raw, dict) and "output_dir" in build_raw:
            output_dir = _resolve_paths({"output_dir": build_raw["output_dir"]}, ("output_dir",),
                                        base_dir, "build")["output_dir"]
            section = {**section, "dataset": output_dir}
            logger.info("train.dataset not set: using build.output_dir (%s)", output_dir)
        train = _build_dataclass(TrainSettings,
                                 _resolve_paths(section, _PATH_KEYS["train"], base_dir, "train"),
                                 "train")
        _check_train(train)
    return Config(build=build, train=train, source=source)


# --- checks that need more than a type -------------------------------------------------

def _check_build(build: BuildSettings) -> None:
    if not build.records:
        raise ConfigError("build.records", "needs at least one records file")
    seen = set()
    for i, records_path in enumerate(build.records):
        if not Path(records_path).is_file():
            raise ConfigError(f"build.records[{i}]", f"file not found: {records_path}")
        resolved = Path(records_path).resolve()
        if resolved in seen:
            raise ConfigError(f"build.records[{i}]", f"lists {records_path} a second time")
        seen.add(resolved)
    if not build.splits:
        raise ConfigError("build.splits", "needs at least one split, e.g. {train: 0.8, val: 0.1, test: 0.1}")
    for name, fraction in build.splits.items():
        # The same rule as shard file names (shards.SHARD_NAME): ASCII only.
        if not _SPLIT_NAME.match(name):
            raise ConfigError(f"build.splits.{name}", "split names must be ASCII letters, digits or '_'")
        if not 0 <= fraction <= 1:
            raise ConfigError(f"build.splits.{name}", f"fraction must be between 0 and 1, got {fraction}")
    total = sum(build.splits.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ConfigError("build.splits", f"fractions must sum to 1, they sum to {total:g}")
    output, cache = Path(build.output_dir).resolve(), Path(build.cache_dir).resolve()
    if output == cache or output in cache.parents or cache in output.parents:
        raise ConfigError("build.output_dir", f"must not be, contain or lie inside build.cache_dir "
                          f"({build.cache_dir}): a dataset cleans its folder, a cache is shared")
    _positive("build.shard_max_samples", build.shard_max_samples)
    _positive("build.shard_max_bytes", build.shard_max_bytes)
    _non_negative("build.drain_deadline_s", build.drain_deadline_s)

    image = build.image
    if image.resize not in _RESIZE_MODES:
        raise ConfigError("build.image.resize", f"must be one of {', '.join(_RESIZE_MODES)}, got {image.resize!r}")
    _positive("build.image.size", image.size)
    if image.resample not in ("bilinear", "bicubic", "lanczos", "box"):
        raise ConfigError("build.image.resample", f"must be one of bilinear, bicubic, lanczos, "
                          f"box, got {image.resample!r}")
    if not 1 <= image.quality <= 100:
        raise ConfigError("build.image.quality", f"must be 1..100, got {image.quality}")
    _positive("build.image.max_pixels", image.max_pixels)
    if image.processes is not None:
        _non_negative("build.image.processes", image.processes)

    fetch = build.fetch
    _positive("build.fetch.threads", fetch.threads)
    if fetch.threads > MAX_FETCH_THREADS:
        raise ConfigError("build.fetch.threads", f"at most {MAX_FETCH_THREADS}, got {fetch.threads}")
    _positive("build.fetch.requests_per_second", fetch.requests_per_second)
    _positive("build.fetch.burst", fetch.burst)
    _positive("build.fetch.timeout_s", fetch.timeout_s)
    _positive("build.fetch.image_deadline_s", fetch.image_deadline_s)
    _positive("build.fetch.max_backoff_s", fetch.max_backoff_s)
    _non_negative("build.fetch.max_retries", fetch.max_retries)
    _non_negative("build.fetch.bytes_per_hour", fetch.bytes_per_hour)
    _positive("build.fetch.max_bytes", fetch.max_bytes)
    _non_negative("build.fetch.max_redirects", fetch.max_redirects)
    _positive("build.fetch.ramp_successes", fetch.ramp_successes)
    _positive("build.fetch.probe_poll_s", fetch.probe_poll_s)
    if not 0 < fetch.rate_decrease < 1:
        raise ConfigError("build.fetch.rate_decrease", f"must be between 0 and 1 (exclusive), got {fetch.rate_decrease}")
    if not fetch.backoff_schedule_s:
        raise ConfigError("build.fetch.backoff_schedule_s", "needs at least one step, e.g. [60, 120, 300, 600]")
    for step in fetch.backoff_schedule_s:
        _positive("build.fetch.backoff_schedule_s", step)


def _check_train(train: TrainSettings) -> None:
    _positive("train.batch_size", train.batch_size)
    _non_negative("train.num_workers", train.num_workers)
    _positive("train.image_size", train.image_size)
    _positive("train.max_steps", train.max_steps)
    _positive("train.learning_rate", train.learning_rate)


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be greater than 0, got {value}")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(key, f"must be 0 or more, got {value}")


# --- generic mapping -> dataclass ------------------------------------------------------

def _build_dataclass(cls: type, section: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(prefix, section, tuple(fields))
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in section:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "is required")
            continue
        values[name] = _coerce(key, section[name], hints[name])
    return cls(**values)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build_dataclass(hint, _mapping(key, value), key)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is tuple:
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else None
        if items is None:
            raise ConfigError(key, f"expected a list, got {_kind(value)}")
        return tuple(_coerce(f"{key}[{i}]", item, args[0]) for i, item in enumerate(items))
    if origin is dict:
        mapping = _mapping(key, value)
        return {str(k): _coerce(f"{key}.{k}", v, args[1]) for k, v in mapping.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_kind(value)} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected a whole number, got {_kind(value)} {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(key, f"expected a number, got {_kind(value)} {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(key, f"expected text, got {_kind(value)}")
        return str(value)
    raise TypeError(f"unsupported settings type {hint!r} for {key}")  # a bug in settings.py


def _mapping(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping, got {_kind(value)}")
    return value


def _reject_unknown(prefix: str, section: dict, known: tuple[str, ...]) -> None:
    for name in section:
        if name not in known:
            where = f"{prefix}.{name}" if prefix else str(name)
            raise ConfigError(where, f"unknown key (known here: {', '.join(known)})")


def _resolve_paths(section: dict, keys: tuple[str, ...], base_dir: Path, prefix: str) -> dict:
    """Paths relative to the config's folder. A number (`output_dir: 2024`) is a name too."""
    section = dict(section)

    def resolve(key: str, value):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return value  # the type check names the problem
        value = str(value)
        if not value.strip():
            raise ConfigError(key, "must name a path, got an empty string")
        return value if os.path.isabs(value) else str(base_dir / value)

    for key in keys:
        value = section.get(key)
        if isinstance(value, list):
            section[key] = [resolve(f"{prefix}.{key}[{i}]", v) for i, v in enumerate(value)]
        elif value is not None:
            section[key] = resolve(f"{prefix}.{key}", value)
    return section


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean",
            int: "a number", float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)
