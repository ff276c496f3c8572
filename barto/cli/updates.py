"""
Summaries of package-manager output: what an update run would install.

A worker runs an updater (C{apt}, C{pacman}, CachyOS's or Garuda's
wrappers) as a schedule; C{barto-cli updates} shows what it found.  Each
parser takes the lines of one run, in order, and returns C{None} when
the lines are not that tool's output at all, so the server can pick the
most recent run that is.  An empty summary means the tool ran and had
nothing to update.

The parsers keep the original's patterns (see
C{reference/barto-rust-notes.md} section 4.4), with one fix: C{apt}
lists its packages over as many indented lines as it needs, and all of
them are read, not only the first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("apt", "pacman", "cachyos", "garuda")

_GARUDA = re.compile(
    r"(chaotic-aur|core|extra|garuda|multilib)/([^ ]+)\s+([^ ]+)\s+([^ ]+)"
    r"\s+(.+ MiB)\s+(.+ MiB)"
)
_CACHYOS = re.compile(
    r"(cachyos|cachyos-.*|core|extra|multilib)/([^ ]+)\s+([^ ]+)\s+([^ ]+)"
    r"\s+(.+ MiB)\s+(.+ MiB)"
)
_PACKAGES = re.compile(r"Packages \((\d+)\) (.*)")
_DOWNLOAD = re.compile(r"Total Download Size:[ ]+(\d+\.\d+) MiB")
_INSTALLED = re.compile(r"Total Installed Size:[ ]+(\d+\.\d+) MiB")
_NET = re.compile(r"Net Upgrade Size:[ ]+(\d+\.\d+) MiB")
_NOTHING = re.compile(r"there is nothing to do")
_APT_HEADER = re.compile(r"The following packages will be upgraded:\s*")
_APT_TALLY = re.compile(r"\d+ upgraded, \d+ newly installed")


@dataclass(frozen=True)
class GarudaUpdate:
    """
    One package C{garuda-update} would upgrade.
    """

    channel: str
    package: str
    old_version: str
    new_version: str
    size_change: str
    download_size: str


@dataclass(frozen=True)
class PacmanSummary:
    """
    The packages C{pacman} would upgrade and its size totals, in MiB.
    """

    update_count: int
    packages: tuple[str, ...]
    download_size: float
    install_size: float
    net_size: float


def parse_garuda(lines: Sequence[str]) -> list[GarudaUpdate] | None:
    """
    The packages in C{garuda-update}'s table, by channel then package.

    @return: C{None} when no line is a table row or pacman's "nothing to
        do".
    """
    updates = []
    recognized = False
    for line in lines:
        match = _GARUDA.search(line)
        if match is not None:
            updates.append(GarudaUpdate(*match.groups()))
        recognized = recognized or match is not None
        recognized = recognized or _NOTHING.search(line) is not None

    if not recognized:
        return None
    return sorted(updates, key=lambda update: (update.channel, update.package))


def parse_pacman(lines: Sequence[str]) -> PacmanSummary | None:
    """
    C{pacman -Syu}'s package list and totals.

    @return: C{None} when there is no C{Packages (N)} line, size total or
        "nothing to do".
    """
    count = 0
    packages: list[str] = []
    recognized = False
    for line in lines:
        match = _PACKAGES.search(line)
        if match is not None:
            count += int(match.group(1))
            packages.extend(match.group(2).split())
        recognized = recognized or match is not None
        recognized = recognized or _mentions_totals(line)

    if not recognized:
        return None
    return _with_totals(count, packages, lines)


def parse_cachyos(lines: Sequence[str]) -> PacmanSummary | None:
    """
    The packages in CachyOS's update table, and pacman's totals.

    @return: C{None} when no line is a table row, size total or "nothing
        to do".
    """
    packages = []
    recognized = False
    for line in lines:
        match = _CACHYOS.search(line)
        if match is not None:
            packages.append(match.group(2))
        recognized = recognized or match is not None
        recognized = recognized or _mentions_totals(line)

    if not recognized:
        return None
    return _with_totals(len(packages), packages, lines)


def parse_apt(lines: Sequence[str]) -> list[str] | None:
    """
    The packages after each "will be upgraded" header of C{apt}.

    The list continues over every following line that starts with white
    space, as C{apt} wraps it.

    @return: C{None} when there is neither such a header nor C{apt}'s
        "N upgraded, N newly installed" tally.
    """
    packages: list[str] = []
    recognized = False
    in_list = False
    for line in lines:
        if in_list and line[:1].isspace():
            packages.extend(line.split())
            continue

        in_list = _APT_HEADER.fullmatch(line) is not None
        recognized = recognized or in_list
        recognized = recognized or _APT_TALLY.search(line) is not None

    return packages if recognized else None


def _mentions_totals(line: str) -> bool:
    """
    Whether a line is one of pacman's size totals or "nothing to do".
    """
    patterns = (_DOWNLOAD, _INSTALLED, _NET, _NOTHING)
    return any(pattern.search(line) for pattern in patterns)


def _with_totals(
    count: int, packages: Sequence[str], lines: Sequence[str]
) -> PacmanSummary:
    """
    A summary with pacman's size totals summed over all lines.
    """
    return PacmanSummary(
        update_count=count,
        packages=tuple(packages),
        download_size=_total(_DOWNLOAD, lines),
        install_size=_total(_INSTALLED, lines),
        net_size=_total(_NET, lines),
    )


def _total(pattern: re.Pattern[str], lines: Sequence[str]) -> float:
    """
    The sum of the MiB figures C{pattern} finds in C{lines}.
    """
    total = 0.0
    for line in lines:
        match = pattern.search(line)
        if match is not None:
            total += float(match.group(1))
    return total


def summarize(kind: str, lines: Sequence[str]) -> dict[str, Any] | None:
    """
    The JSON form of the summary of C{lines} as output of C{kind}.

    @param kind: one of L{KINDS}.
    @return: C{{"packages": [...], ...}} (see C{docs/cli.md}), or C{None}
        when the lines are not that tool's output.
    @raise ValueError: C{kind} is not one of L{KINDS}.
    """
    parsers: dict[str, Callable[[Sequence[str]], Any]] = {
        "apt": parse_apt,
        "pacman": parse_pacman,
        "cachyos": parse_cachyos,
        "garuda": parse_garuda,
    }
    if kind not in parsers:
        raise ValueError(f"invalid update kind: {kind!r}")

    parsed = parsers[kind](lines)
    if parsed is None:
        return None
    if isinstance(parsed, PacmanSummary):
        summary = asdict(parsed)
        summary["packages"] = list(parsed.packages)
        return summary
    if kind == "garuda":
        return {"packages": [asdict(update) for update in parsed]}
    return {"packages": list(parsed)}


def render(kind: str, summary: dict[str, Any]) -> list[str]:
    """
    The original's text form of a summary made by L{summarize}.
    """
    if kind == "garuda":
        return _render_garuda(summary["packages"])
    if kind == "apt":
        return list(summary["packages"])

    packages = ", ".join(summary["packages"])
    return [
        f"Packages ({summary['update_count']}) {packages}".rstrip(),
        "",
        f"Total Download Size:   {summary['download_size']:.2f} MiB",
        f"Total Installed Size:  {summary['install_size']:.2f} MiB",
        f"Net Upgrade Size:      {summary['net_size']:.2f} MiB",
    ]


def _render_garuda(updates: Sequence[dict[str, str]]) -> list[str]:
    """
    One aligned line per package: name (channel): old -> new (sizes).
    """
    if not updates:
        return []

    names = [f"{u['package']} ({u['channel']}):" for u in updates]
    olds = [u["old_version"] for u in updates]
    news = [u["new_version"] for u in updates]
    name_width = max(map(len, names))
    old_width = max(map(len, olds))
    new_width = max(map(len, news))

    lines = []
    for name, old, new, update in zip(names, olds, news, updates, strict=True):
        sizes = f"({update['size_change']}, {update['download_size']})"
        before = f"{name:<{name_width}} {old:<{old_width}}"
        after = f"{new:<{new_width}} {sizes}"
        lines.append(f"{before} -> {after}")
    return lines
