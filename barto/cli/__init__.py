"""
barto-cli: ask a running bartos about schedules, runs and workers, and
preview calendars offline.

L{barto.cli.main} parses the command line and dispatches to one module
per command.
"""
