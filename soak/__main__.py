"""`./dev soak`: run a soak (or, with --worker, be its host process) and print the reconciliation."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from soak.config import (
    SoakConfig,
)
from soak.run import run, say
from soak.worker import run_worker


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The soak's flags."""
    parser = argparse.ArgumentParser(prog="./dev soak", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000, help="how many messages (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="seed for job kinds and fault draws (default 1)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before unfinished messages count as lost")
    parser.add_argument(
        "--incidents", type=int, default=16, help="incidents in the kill-switch phase (default 16; 0: no phase)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (Azurite data, host logs)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--generation", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a soak (or, with --worker, be its host process) and print the table; 1 when anything is lost."""
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker, args.generation)
    if args.messages < 1:
        raise SystemExit("--messages must be at least 1")
    if args.incidents < 0:
        raise SystemExit("--incidents must not be negative")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    config = SoakConfig(
        messages=args.messages, seed=args.seed, timeout=args.timeout, keep=args.keep, incidents=args.incidents
    )
    report = run(config)
    say("")
    say(report.table())
    say("")
    say(report.details())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
