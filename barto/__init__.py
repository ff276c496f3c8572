"""
barto: a distributed job scheduler on Twisted.

C{bartos} owns the schedules and stores every run, C{bartoc} runs the
commands it is sent, and C{barto-cli} asks a running C{bartos} about them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
