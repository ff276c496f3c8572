"""
The one HTTP site of C{bartos}: the worker and CLI WebSocket endpoints.

Anything else on the port answers 404.
"""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from barto import wire


class Folder(Resource):
    """
    A path segment with fixed children; anything else is 404.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        """
        An unknown child: not found.
        """
        return notFound()


def make_site(
    worker_factory: WebSocketServerFactory, cli_factory: WebSocketServerFactory
) -> Site:
    """
    A site serving C{/v1/ws/worker} and C{/v1/ws/cli}.
    """
    endpoints = {
        wire.WORKER_PATH: worker_factory,
        wire.CLI_PATH: cli_factory,
    }
    root = Folder()
    for path, factory in endpoints.items():
        node = root
        *parents, leaf = path.strip(b"/").split(b"/")
        for part in parents:
            child = node.children.get(part)
            if child is None:
                child = Folder()
                node.putChild(part, child)
            node = child
        node.putChild(leaf, WebSocketResource(factory))

    site = Site(root)
    site.noisy = False
    return site
