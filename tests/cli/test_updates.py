"""
Tests for L{barto.cli.updates}: the package-manager summary parsers.
"""

from __future__ import annotations

import pytest

from barto.cli import updates
from barto.cli.updates import GarudaUpdate, PacmanSummary

GARUDA = [
    ":: Synchronizing package databases...",
    "extra/kio    6.19.0-1     6.19.0-2       0.00 MiB       3.59 MiB",
    "core/glibc   2.41-1       2.41-2         1.00 MiB       5.00 MiB",
    "Total Download Size:    8.59 MiB",
]

APT = [
    "The following packages will be upgraded:",
    "  libtdb-dev libtdb1",
    "2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.",
    "",
    "",
    "The following packages will be upgraded:",
    "  libssh-4 libxml2 libxml2-dev",
    "3 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.",
]


def test_garuda_original_vector() -> None:
    """
    A Garuda table row gives all six fields, as in the original's test.
    """
    assert updates.parse_garuda([GARUDA[1]]) == [
        GarudaUpdate(
            "extra",
            "kio",
            "6.19.0-1",
            "6.19.0-2",
            "0.00 MiB",
            "3.59 MiB",
        ),
    ]


def test_garuda_sorted_by_channel_then_package() -> None:
    """
    Garuda updates come sorted by channel, then package.
    """
    parsed = updates.parse_garuda(GARUDA)

    assert parsed is not None
    assert [(u.channel, u.package) for u in parsed] == [
        ("core", "glibc"),
        ("extra", "kio"),
    ]


def test_garuda_nothing_to_do_is_empty_not_none() -> None:
    """
    pacman's "nothing to do" is recognised as a run with no updates.
    """
    lines = [":: Starting full system upgrade...", " there is nothing to do"]

    assert updates.parse_garuda(lines) == []


def test_garuda_unrelated_output_is_none() -> None:
    """
    Output that is not Garuda's gives None, so another run can be tried.
    """
    assert updates.parse_garuda(["hello", "world"]) is None


def test_pacman_original_vector() -> None:
    """
    The original's pacman vector: count, packages and the three sizes.
    """
    lines = [
        "Packages (2) foo bar",
        "Total Download Size:   1.50 MiB",
        "Total Installed Size:  2.00 MiB",
        "Net Upgrade Size:   0.50 MiB",
    ]

    assert updates.parse_pacman(lines) == PacmanSummary(
        update_count=2,
        packages=("foo", "bar"),
        download_size=1.5,
        install_size=2.0,
        net_size=0.5,
    )


def test_pacman_sums_several_package_lines() -> None:
    """
    Several C{Packages (N)} lines add up, their names concatenated.
    """
    lines = ["Packages (1) a-1.0", "Packages (2) b-2.0  c-3.0"]
    parsed = updates.parse_pacman(lines)

    assert parsed is not None
    assert (parsed.update_count, parsed.packages) == (
        3,
        ("a-1.0", "b-2.0", "c-3.0"),
    )


def test_pacman_ignores_other_units() -> None:
    """
    Sizes in units other than MiB are not counted.
    """
    lines = ["Packages (1) a", "Total Download Size:   1.50 KiB"]
    parsed = updates.parse_pacman(lines)

    assert parsed is not None
    assert parsed.download_size == 0.0


def test_pacman_unrelated_output_is_none() -> None:
    """
    Output without a package list or a total is not pacman's.
    """
    assert updates.parse_pacman(["Reading package lists... Done"]) is None


def test_cachyos_original_vector() -> None:
    """
    The original's CachyOS vector: packages from table rows, pacman sizes.
    """
    lines = [
        "core/foo     1.0     2.0     0.00 MiB     3.00 MiB",
        "extra/bar    1.0     2.0     0.00 MiB     1.00 MiB",
        "Total Download Size:   4.00 MiB",
    ]

    assert updates.parse_cachyos(lines) == PacmanSummary(
        update_count=2,
        packages=("foo", "bar"),
        download_size=4.0,
        install_size=0.0,
        net_size=0.0,
    )


def test_cachyos_own_repositories() -> None:
    """
    Rows from C{cachyos-*} repositories count too.
    """
    lines = ["cachyos-v3/linux  6.1-1  6.2-1  1.00 MiB  100.00 MiB"]
    parsed = updates.parse_cachyos(lines)

    assert parsed is not None
    assert parsed.packages == ("linux",)


def test_apt_original_vector() -> None:
    """
    The original's apt vector: the packages under each header, in order.
    """
    assert updates.parse_apt(APT) == [
        "libtdb-dev",
        "libtdb1",
        "libssh-4",
        "libxml2",
        "libxml2-dev",
    ]


def test_apt_reads_every_continuation_line() -> None:
    """
    A list apt wraps over several lines is read whole (the original read
    only the first line).
    """
    lines = [
        "The following packages will be upgraded:",
        "  a b c",
        "  d e",
        "5 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.",
    ]

    assert updates.parse_apt(lines) == ["a", "b", "c", "d", "e"]


def test_apt_nothing_to_upgrade_is_empty() -> None:
    """
    apt's tally without a header is a run with nothing to upgrade.
    """
    lines = ["0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded."]

    assert updates.parse_apt(lines) == []


@pytest.mark.parametrize("lines", [[], ["nothing here"]])
def test_apt_without_header_or_tally_is_none(lines: list[str]) -> None:
    """
    Empty or unrelated output is not apt's.
    """
    assert updates.parse_apt(lines) is None


def test_summarize_shapes() -> None:
    """
    L{updates.summarize} gives the documented JSON shape for each kind.
    """
    assert updates.summarize("apt", APT) == {
        "packages": [
            "libtdb-dev",
            "libtdb1",
            "libssh-4",
            "libxml2",
            "libxml2-dev",
        ],
    }
    garuda = updates.summarize("garuda", GARUDA)
    assert garuda is not None
    assert garuda["packages"][0] == {
        "channel": "core",
        "package": "glibc",
        "old_version": "2.41-1",
        "new_version": "2.41-2",
        "size_change": "1.00 MiB",
        "download_size": "5.00 MiB",
    }
    assert updates.summarize("pacman", ["Packages (1) x"]) == {
        "update_count": 1,
        "packages": ["x"],
        "download_size": 0.0,
        "install_size": 0.0,
        "net_size": 0.0,
    }


def test_summarize_unknown_kind() -> None:
    """
    An unknown kind is a ValueError naming it.
    """
    with pytest.raises(ValueError, match="invalid update kind: 'yum'"):
        updates.summarize("yum", [])


def test_render_pacman_like_the_original() -> None:
    """
    pacman and CachyOS summaries render as the original printed them.
    """
    summary = updates.summarize("pacman", ["Packages (2) foo bar"])
    assert summary is not None

    assert updates.render("pacman", summary) == [
        "Packages (2) foo, bar",
        "",
        "Total Download Size:   0.00 MiB",
        "Total Installed Size:  0.00 MiB",
        "Net Upgrade Size:      0.00 MiB",
    ]


def test_render_garuda_aligned() -> None:
    """
    Garuda lines are aligned in columns: name, old -> new, sizes.
    """
    summary = updates.summarize("garuda", GARUDA)
    assert summary is not None

    assert updates.render("garuda", summary) == [
        "glibc (core): 2.41-1   -> 2.41-2   (1.00 MiB, 5.00 MiB)",
        "kio (extra):  6.19.0-1 -> 6.19.0-2 (0.00 MiB, 3.59 MiB)",
    ]


def test_render_apt_one_per_line() -> None:
    """
    apt packages render one per line.
    """
    assert updates.render("apt", {"packages": ["a", "b"]}) == ["a", "b"]
