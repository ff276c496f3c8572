"""
twistd plugin for C{bartos}, the barto server.
"""

from twisted.application.service import ServiceMaker

bartos = ServiceMaker(
    "bartos",
    "barto.server.tap",
    "The barto server: fires scheduled runs and stores their output.",
    "bartos",
)
