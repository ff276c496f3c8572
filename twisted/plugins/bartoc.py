"""
twistd plugin for C{bartoc}, the barto worker.
"""

from twisted.application.service import ServiceMaker

bartoc = ServiceMaker(
    "bartoc",
    "barto.worker.tap",
    "The barto worker: runs what bartos sends and reports back.",
    "bartoc",
)
