"""
Tests for L{barto.tls}: real TLS handshakes over loopback with
certificates made in the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL.SSL import Error as SSLError
from service_identity import VerificationError
from support import certs
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IListeningPort

from barto.tls import (
    TLSConfigError,
    client_context_factory,
    server_context_factory,
)

REFUSED = (SSLError, ConnectionLost, VerificationError)


class Greeter(protocol.Protocol):
    """
    Server side: writes a greeting once the handshake is done.
    """

    def connectionMade(self) -> None:
        """
        Say hello.
        """
        self.transport.write(b"hello")


class Listener(protocol.Protocol):
    """
    Client side: fires C{done} with the greeting, or with the failure.
    """

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        """
        Keep what arrives.
        """
        self.data += data
        if self.data == b"hello" and not self.done.called:
            self.done.callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        """
        A connection that ends before the greeting fails the test's wait.
        """
        if not self.done.called:
            self.done.errback(reason)


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    """
    A CA with a server and a client certificate, and a second, unrelated CA.
    """
    ca = certs.Authority(tmp_path, "ca")
    other = certs.Authority(tmp_path, "other-ca")
    return {
        "ca": ca.pair,
        "server": ca.leaf("server"),
        "client": ca.leaf("client", ("client",)),
        "other": other.pair,
        "stranger": other.leaf("stranger", ("client",)),
    }


@pytest.fixture
def ports() -> Iterator[list[IListeningPort]]:
    """
    Listening ports to close at the end of the test.
    """
    opened: list[IListeningPort] = []
    yield opened
    for port in opened:
        port.stopListening()


def _listen(ports: list[IListeningPort], context: Any) -> int:
    factory = protocol.Factory.forProtocol(Greeter)
    port = reactor.listenSSL(0, factory, context, interface="127.0.0.1")
    ports.append(port)
    return int(port.getHost().port)


def _connect(port: int, context: Any) -> defer.Deferred[bytes]:
    done: defer.Deferred[bytes] = defer.Deferred()
    factory = protocol.ClientFactory.forProtocol(lambda: Listener(done))
    reactor.connectSSL("127.0.0.1", port, factory, context)
    return done


@pytest_twisted.inlineCallbacks
def test_pinned_ca_accepts(pki: Any, ports: list[IListeningPort]) -> Any:
    """
    A client pinned to the server's CA completes the handshake.
    """
    server = server_context_factory(pki["server"].cert, pki["server"].key)
    port = _listen(ports, server)

    greeting = yield _connect(port, client_context_factory("127.0.0.1", pki["ca"].cert))

    assert greeting == b"hello"


@pytest_twisted.inlineCallbacks
def test_other_ca_refused(pki: Any, ports: list[IListeningPort]) -> Any:
    """
    A client pinned to another CA refuses the server's certificate.
    """
    server = server_context_factory(pki["server"].cert, pki["server"].key)
    port = _listen(ports, server)

    with pytest.raises(REFUSED):
        yield _connect(port, client_context_factory("127.0.0.1", pki["other"].cert))


@pytest_twisted.inlineCallbacks
def test_wrong_hostname_refused(pki: Any, ports: list[IListeningPort]) -> Any:
    """
    A certificate for another host name is refused even from a trusted CA.
    """
    server = server_context_factory(pki["client"].cert, pki["client"].key)
    port = _listen(ports, server)

    with pytest.raises(REFUSED):
        yield _connect(port, client_context_factory("127.0.0.1", pki["ca"].cert))


@pytest_twisted.inlineCallbacks
def test_client_certificate_required(pki: Any, ports: list[IListeningPort]) -> Any:
    """
    With client_ca_cert set, only clients with a certificate from it get in.
    """
    server = server_context_factory(
        pki["server"].cert, pki["server"].key, client_ca_cert=pki["ca"].cert
    )
    port = _listen(ports, server)
    ca = pki["ca"].cert

    greeting = yield _connect(
        port,
        client_context_factory("127.0.0.1", ca, pki["client"].cert, pki["client"].key),
    )
    assert greeting == b"hello"

    with pytest.raises(REFUSED):
        yield _connect(port, client_context_factory("127.0.0.1", ca))
    with pytest.raises(REFUSED):
        yield _connect(
            port,
            client_context_factory(
                "127.0.0.1", ca, pki["stranger"].cert, pki["stranger"].key
            ),
        )


def test_bad_files_are_clear_errors(pki: Any, tmp_path: Path) -> None:
    """
    Missing or mismatched files raise TLSConfigError naming the file.
    """
    missing = str(tmp_path / "missing.pem")

    with pytest.raises(TLSConfigError, match=r"missing\.pem"):
        server_context_factory(missing, pki["server"].key)
    with pytest.raises(TLSConfigError, match="server certificate"):
        server_context_factory(pki["server"].cert, pki["client"].key)
    with pytest.raises(TLSConfigError, match="no certificate"):
        client_context_factory("localhost", pki["server"].key)
    with pytest.raises(TLSConfigError, match="together"):
        client_context_factory("localhost", None, pki["client"].cert, None)
