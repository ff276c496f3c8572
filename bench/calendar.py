"""
Time barto's calendar engine against the C{oncalendar} package.

For a mixed set of expressions (dense, sparse, ranges, steps, days from
the end of the month, time zones) both libraries parse each expression
and compute its next 100 elapses from the same base time, in one
process.  The script checks that both give the same elapses wherever
both accept an expression, names the ones C{oncalendar} rejects, and
prints the throughput of each and their ratio.

Run: C{python bench/calendar.py [--rounds N]}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

# Run as a script, this file's folder comes first on sys.path and the
# file would shadow the standard library's calendar module, which
# oncalendar imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from oncalendar import OnCalendar  # noqa: E402

from barto.calendar import elapses, parse  # noqa: E402

EXPRESSIONS = (
    "*:*:00",
    "*-*-* *:00/15:00",
    "hourly",
    "daily",
    "Mon..Fri *-*-* 09:00",
    "Sat,Sun *-*-* 10:00:00",
    "*-*-1,15 08:00",
    "quarterly",
    "*-01..06-* 00/6:00",
    "2026..2030-*-01 12:00",
    "*:0/5:30",
    "*-02-29 00:00:00",
    "Mon *-*-13 00:00",
    "Fri *-*-13 00:00",
    "*-*~01 23:00",
    "Mon *-05~07/1 06:00",
    "*-*-* 02:30:00 Europe/Berlin",
    "*:30 America/New_York",
    "*-*-* 01..03:00/20 Australia/Lord_Howe",
    "weekly Pacific/Chatham",
    "*-*-* 12:00 Asia/Kolkata",
)
COUNT = 100
BASE = datetime(2025, 1, 1, tzinfo=timezone.utc)

Elapses = list[datetime]


def barto_elapses(expression: str) -> Elapses:
    """
    Parse with barto and take the next elapses.
    """
    return elapses(parse(expression), BASE, COUNT)


def oncalendar_elapses(expression: str) -> Elapses:
    """
    Parse with oncalendar and take the next elapses.
    """
    iterator = OnCalendar(expression, BASE)
    found = []
    for moment in iterator:
        found.append(moment)
        if len(found) == COUNT:
            break
    return found


def in_utc(moments: Elapses) -> list[datetime]:
    return [moment.astimezone(timezone.utc) for moment in moments]


def agree(expression: str) -> bool:
    """
    Whether both libraries find the same elapses.
    """
    ours = in_utc(barto_elapses(expression))
    return ours == in_utc(oncalendar_elapses(expression))


def accepted(expression: str) -> bool:
    """
    Whether oncalendar takes the expression at all.
    """
    try:
        oncalendar_elapses(expression)
    except Exception:
        return False
    return True


def throughput(
    runners: list[Callable[[str], Elapses]], expressions: list[str], rounds: int
) -> list[float]:
    """
    Elapses per CPU second of each runner, best of C{rounds}.

    The runners take turns round by round and the clock is this
    process's CPU time, so other load on the machine tilts neither side.
    """
    best = [float("inf")] * len(runners)
    total = 0
    for _ in range(rounds):
        for index, run in enumerate(runners):
            started = time.process_time()
            total = sum(len(run(expression)) for expression in expressions)
            best[index] = min(best[index], time.process_time() - started)
    return [total / seconds for seconds in best]


def main() -> None:
    """
    Compare, time and print.
    """
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--rounds", type=int, default=9)
    rounds = options.parse_args().rounds

    common = [e for e in EXPRESSIONS if accepted(e)]
    rejected = [e for e in EXPRESSIONS if e not in common]
    differing = [e for e in common if not agree(e)]

    ours, theirs = throughput([barto_elapses, oncalendar_elapses], common, rounds)
    print(f"expressions: {len(EXPRESSIONS)}, {COUNT} elapses each")
    print(f"oncalendar rejects: {', '.join(rejected) or 'none'}")
    print(f"different elapses: {', '.join(differing) or 'none'}")
    print(f"compared on {len(common)} expressions, best of {rounds} rounds")
    print(f"barto:      {ours:12,.0f} elapses per CPU second")
    print(f"oncalendar: {theirs:12,.0f} elapses per CPU second")
    print(f"ratio:      {ours / theirs:12.2f}x")


if __name__ == "__main__":
    main()
