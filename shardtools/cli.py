"""`shardtools` command line: build, status, verify, preview, demo. Errors end as one line
and an exit code.

Exit codes: 0 done, everything written; 1 unexpected failure; 2 bad usage or config, or an
unreadable dataset; 3 done, some records pending; 4 done, some rejected; 5 both;
6 the dataset is locked by another build; 7 `verify` found problems, or a build found
listed shards missing or cut.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys

from .errors import ConfigError, DatasetError, LockedError, ShardToolsError

logger = logging.getLogger("shardtools")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 6
EXIT_INVALID = 7


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose - args.quiet)
    # SIGTERM (a scheduler stopping the job) ends a build the way Ctrl-C does.
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.run(args)
    except LockedError as exc:
        print(f"shardtools: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except ConfigError as exc:
        print(f"shardtools: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DatasetError, ShardToolsError) as exc:
        print(f"shardtools: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        # The file system said no (a file where a folder should be, permissions, a full
        # disk): the user can act on the path and the reason; --traceback for the rest.
        if args.traceback:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"shardtools: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("shardtools: interrupted; the dataset is as after its last listed shard, "
              "run the build again to go on", file=sys.stderr)
        return 130
    except Exception:
        if args.traceback:
            raise
        logger.exception("unexpected failure (please report it with this traceback)")
        return EXIT_FAILURE
    finally:
        signal.signal(signal.SIGTERM, previous_term)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardtools", description=__doc__.splitlines()[0])
    _add_common(parser, defaults=True)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    # The same options after the command too (`shardtools build -q ...`); SUPPRESS keeps a
    # subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, defaults=False)
    original_add_parser = commands.add_parser
    commands.add_parser = lambda *a, **k: original_add_parser(*a, parents=[common], **k)

    build = commands.add_parser("build", help="build or extend a dataset from a config")
    build.add_argument("--config", required=True, help="YAML config with a 'build' section")
    build.add_argument("--drain-deadline", type=_seconds, metavar="SECONDS",
                       help="keep retrying pending records until none is left or this many "
                            "seconds have passed (overrides build.drain_deadline_s)")
    build.set_defaults(run=_run_build)

    status = commands.add_parser("status", help="summarise a dataset directory")
    status.add_argument("dataset_dir")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--few", type=int, default=5, metavar="N",
                        help="list classes with fewer than N samples in a split (default 5)")
    status.add_argument("--plot", metavar="PNG", help="also draw samples per class per split")
    status.set_defaults(run=_run_status)

    verify = commands.add_parser("verify", help="read every shard and check the dataset "
                                 "directory; exit 7 when anything is wrong")
    verify.add_argument("dataset_dir")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument("--strict", action="store_true",
                        help="also fail on what an unfinished build left (normally notes)")
    verify.set_defaults(run=_run_verify)

    preview = commands.add_parser("preview", help="contact sheet of random samples with labels")
    preview.add_argument("dataset_dir")
    preview.add_argument("--split", default="val")
    preview.add_argument("--out", required=True, metavar="PNG")
    preview.add_argument("--samples", type=_positive_int, default=48)
    preview.add_argument("--seed", type=int, help="pick the same samples again")
    preview.set_defaults(run=_run_preview)

    demo = commands.add_parser("demo", help="run the whole job on a built-in demo")
    demo.add_argument("--workdir", default="demo-run", help="folder for the demo's files (recreated)")
    demo.add_argument("--train-steps", type=int, default=60)
    demo.set_defaults(run=_run_demo)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds, a finite number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _add_common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="more log lines (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=default(0),
                        help="warnings and errors only")
    parser.add_argument("--traceback", action="store_true", default=default(False),
                        help="show tracebacks of unexpected errors")


def _run_build(args) -> int:
    import dataclasses

    from .config import load_config

    config = load_config(args.config)  # before the heavy imports: config errors come fast
    if config.build is None:
        raise ConfigError("build", f"{args.config} has no 'build' section")
    settings = config.build
    if args.drain_deadline is not None:
        settings = dataclasses.replace(settings, drain_deadline_s=args.drain_deadline)
    from .build import run_build
    from .progress import progress_for_terminal
    from .report import format_summary

    summary = run_build(settings, progress=progress_for_terminal(quiet=args.quiet > 0))
    print(format_summary(summary))
    return summary.exit_code


def _run_status(args) -> int:
    from .status import dataset_status, format_status

    status = dataset_status(args.dataset_dir, few=args.few)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print(format_status(status))
    if args.plot:
        from .preview import class_plot

        drawn = class_plot(args.dataset_dir, args.plot)
        print(f"wrote {args.plot} ({drawn} classes)", file=sys.stderr if args.json else sys.stdout)
    return 0


def _run_verify(args) -> int:
    from .verify import format_report, verify_dataset

    report = verify_dataset(args.dataset_dir, strict=args.strict)
    print(json.dumps(report.as_dict(), indent=1) if args.json else format_report(report))
    return 0 if report.ok else EXIT_INVALID


def _run_preview(args) -> int:
    from .preview import contact_sheet

    drawn = contact_sheet(args.dataset_dir, args.split, args.out, num_samples=args.samples,
                          seed=args.seed)
    print(f"wrote {args.out}: {drawn} random {args.split} samples with their labels")
    return 0


def _run_demo(args) -> int:
    from .demo.run import run_demo

    return run_demo(args.workdir, train_steps=args.train_steps)


def _configure_logging(level: int) -> None:
    levels = {-1: logging.WARNING, 0: logging.INFO, 1: logging.INFO, 2: logging.DEBUG}
    logging.basicConfig(level=levels[max(-1, min(2, level))],
                        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    if level < 1:
        # Per-request chatter from requests/urllib3 is for -vv only.
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
