"""Fuzzing every reader's pure code with 1,000,000 random and mutated messages.

Decoders (event, command, stored log record, work item), the driver core, the worker core
and the projections are fed mutations of the recorded sample logs (deep nesting, huge
strings, wrong types, stray fields, broken bytes) and valid events in impossible orders;
see :mod:`tests.fixtures.fuzz`. The run fails if anything but the decode error
escapes. The figures are the counts (what was quarantined, what the projections called
an anomaly, runs the driver rejected) and the messages per second on one core.

    .venv/bin/python benchmarks/bench_fuzz.py [--quick] [--messages N] [--seed S]

Prints a table and writes benchmarks/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import time

from _harness import print_table, write_results
from tests.fixtures.fuzz import fuzz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 messages (a smoke run)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    messages = 10_000 if args.quick else args.messages
    started = time.perf_counter()
    report = fuzz(messages, seed=args.seed)
    elapsed = time.perf_counter() - started
    rate = report.messages / elapsed
    print_table(
        ["messages", "rejected", "decoded", "anomalies", "runs rejected", "core defects",
         "seconds", "messages/s"],
        [[report.messages, report.rejected, report.decoded, report.anomalies,
          report.runs_rejected, report.core_defects, f"{elapsed:.1f}", f"{rate:,.0f}"]],
    )  # fmt: skip
    write_results(
        "fuzz",
        {
            "seed": args.seed,
            "messages": report.messages,
            "rejected": report.rejected,
            "rejected_by_decoder": report.by_decoder,
            "decoded": report.decoded,
            "anomalies": report.anomalies,
            "driver_effects": report.driver_effects,
            "runs_rejected": report.runs_rejected,
            "core_defects": report.core_defects,
            "seconds": round(elapsed, 2),
            "messages_per_s": round(rate),
        },
        quick=args.quick,
    )
    if report.core_defects:
        raise SystemExit(f"the driver core raised on {report.core_defects} runs: {report.defects}")


if __name__ == "__main__":
    main()
