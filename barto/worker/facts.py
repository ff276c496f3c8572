"""
Host facts: what a worker tells C{bartos} about its machine in C{hello}.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from barto import wire

OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")


def parse_os_release(text: str) -> dict[str, str]:
    """
    Parse the shell-like C{KEY=value} lines of an C{os-release} file.

    Comments, blank lines and lines without C{=} are skipped; one level of
    single or double quotes around a value is removed.

    @param text: the file's content.
    @return: the keys and their values.
    """
    values = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue

        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_os_release(paths: tuple[str, ...] = OS_RELEASE_PATHS) -> dict[str, str]:
    """
    The first readable C{os-release} file, parsed; empty if none is.

    @param paths: where to look, in order.
    """
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        return parse_os_release(text)
    return {}


def host_facts(
    os_release: dict[str, str] | None = None,
    uname: os.uname_result | None = None,
    hostname: str | None = None,
) -> wire.HostFacts:
    """
    The facts of this machine: host name, OS name and version, kernel.

    Each argument replaces what would be read from the machine, for tests.

    @param os_release: parsed C{os-release}; read from the file if C{None}.
    @param uname: the kernel's identification; C{os.uname()} if C{None}.
    @param hostname: the host name; C{socket.gethostname()} if C{None}.
    """
    release = read_os_release() if os_release is None else os_release
    kernel = os.uname() if uname is None else uname
    name = socket.gethostname() if hostname is None else hostname

    return wire.HostFacts(
        hostname=name,
        os=release.get("NAME", kernel.sysname),
        os_version=release.get("VERSION_ID", release.get("VERSION", "")),
        kernel=f"{kernel.sysname} {kernel.release}",
    )
