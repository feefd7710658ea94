"""Entry point: `batch-terminator` (console script) and `python -m ops`."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from ops.errors import CliError
from ops.exit_codes import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ops.parser import build_parser
from ops.target import resolve_incident_target, resolve_target
from shared.contract.errors import ConfigurationError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "enqueue" and (args.file is None) == (args.job_id is None):
        print(f"{parser.prog} enqueue: error: give JOB_ID or --file (exactly one)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if getattr(args, "settings", None) == "incidents":
            return int(args.handler(args, resolve_incident_target(args.connection_string)))
        target = resolve_target(args.connection_string, args.queue, args.poison_queue)
        return int(args.handler(args, target))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> int:
    """Console entry: keep the Azure SDK's own log lines off the terminal, survive a closed pipe."""
    logging.getLogger("azure").addHandler(logging.NullHandler())
    logging.getLogger("azure").propagate = False
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(entry())
