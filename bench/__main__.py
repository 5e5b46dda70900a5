"""``python -m bench run [--quick]`` and ``python -m bench compare A B`` (``make bench``,
``make bench-quick``, ``make bench-compare A=... B=...``).

The individual benchmarks keep their own entry points: ``python -m
bench.api_load``, ``bench.read_models``, ``bench.freshness``,
``bench.search_latency``, ``bench.reconciliation``, ``bench.trigger_overhead``.
"""

from __future__ import annotations

import sys

USAGE = ("usage: python -m bench run [--quick] [options]   (the guide's success-metrics table; --help for options)\n"
         "       python -m bench compare A.json B.json     (two result files side by side)")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from bench.run import main as run_main

        return run_main(rest)
    if command == "compare":
        from bench.results import ResultError, compare

        if len(rest) != 2 or not all(rest):
            print("bench compare: give two result files: python -m bench compare A.json B.json "
                  "(make bench-compare A=... B=...)", file=sys.stderr)
            return 2
        try:
            return compare(rest[0], rest[1])
        except ResultError as exc:
            print(f"bench compare: {exc}", file=sys.stderr)
            return 1
    print(f"bench: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
