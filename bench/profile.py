"""`python -m bench.profile [--messages N] [--cprofile]`: profile terminate_job.main's per-message path."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

from bench.calls import Ours, function_app
from bench.harness import JobIds, worker_logging
from bench.services import Services
from local.azurite import connection_string


def main(argv: list[str] | None = None) -> int:
    """Warm the function, then profile N messages against the emulator (latency 0, its own process)."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--cprofile", action="store_true", help="use cProfile even when pyinstrument is installed")
    args = parser.parse_args(argv)
    try:
        import pyinstrument
    except ImportError:
        pyinstrument = None  # type: ignore[assignment]
    # No poison write happens on this path, so the storage connection string only has to parse.
    with Services() as services, worker_logging(), function_app(services, connection_string(9)):
        ours = Ours(JobIds("profile"))
        ours.handle(200)
        work = ours.prepare(args.messages)
        if pyinstrument is not None and not args.cprofile:
            profiler = pyinstrument.Profiler(interval=0.0002)
            profiler.start()
            ours.run(work)
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=False))
        else:
            stats = cProfile.Profile()
            stats.enable()
            ours.run(work)
            stats.disable()
            pstats.Stats(stats, stream=sys.stdout).sort_stats("cumulative").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
