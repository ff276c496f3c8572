"""
Packaging for barto.

The twistd plugins live in C{twisted/plugins/}, which is listed explicitly:
it must not become a regular package, so there is no C{__init__.py} in
C{twisted/} or C{twisted/plugins/}.
"""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent

VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (HERE / "barto" / "__init__.py").read_text(encoding="utf-8"),
    re.MULTILINE,
)

setup(
    name="barto",
    version=VERSION.group(1) if VERSION else "0",
    description="A distributed job scheduler on Twisted",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=[
        "barto",
        "barto.cli",
        "barto.cli.commands",
        "barto.etc",
        "barto.server",
        "barto.worker",
        "twisted.plugins",
    ],
    package_dir={"barto.etc": "etc"},
    package_data={
        "barto": ["py.typed"],
        "barto.etc": ["*.toml", "*.service"],
        "barto.server": ["sql/*/*.sql"],
    },
    install_requires=[
        "twisted[tls]>=24.7",
        "autobahn>=24.4",
        "txaio>=23.1",
        "pyopenssl>=24.0",
        "service-identity>=24.1",
        "mysql-connector-python>=9.0",
        "tomli>=2.0; python_version < '3.11'",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "oncalendar>=1.1",
        ],
        "lint": [
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0",
        ],
    },
    entry_points={"console_scripts": ["barto-cli = barto.cli.main:run"]},
    zip_safe=False,
)
