"""
TLS context factories for the wss listener and for the clients.

The server presents C{cert_file_path}/C{key_file_path} and, when
C{client_ca_cert} is set, demands a client certificate signed by that CA.
Clients verify the server's certificate and host name (through
C{service_identity}) against a pinned C{ca_cert} or the system's trust
store, and present C{client_cert}/C{client_key} when both are set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator


class TLSConfigError(Exception):
    """
    A certificate or key that cannot be used; the message says which file.
    """


def _read(path: str, what: str) -> bytes:
    """
    The bytes of a PEM file, or a L{TLSConfigError} naming it.
    """
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TLSConfigError(f"cannot read {what} {path!r}: {error.strerror}") from None


def _certificates(path: str, what: str) -> list[ssl.Certificate]:
    """
    Every certificate in a PEM file (at least one).
    """
    data = _read(path, what)
    marker = b"-----END CERTIFICATE-----"
    blocks = [
        block + marker for block in data.split(marker) if b"BEGIN CERTIFICATE" in block
    ]
    if not blocks:
        raise TLSConfigError(f"no certificate found in {what} {path!r}")

    try:
        return [ssl.Certificate.loadPEM(block) for block in blocks]
    except (SSL.Error, crypto.Error, ValueError) as error:
        raise TLSConfigError(f"bad {what} {path!r}: {error}") from None


def _private_certificate(
    cert_path: str, key_path: str, what: str
) -> ssl.PrivateCertificate:
    """
    A certificate and its key, checked to belong together.
    """
    cert = _read(cert_path, f"{what} certificate")
    key = _read(key_path, f"{what} key")
    try:
        return ssl.PrivateCertificate.loadPEM(cert + b"\n" + key)
    except (SSL.Error, crypto.Error, ValueError, VerifyError) as error:
        raise TLSConfigError(
            f"bad {what} certificate {cert_path!r} or key {key_path!r}: {error}"
        ) from None


def server_context_factory(
    cert_file_path: str,
    key_file_path: str,
    client_ca_cert: str | None = None,
) -> ssl.CertificateOptions:
    """
    The context factory of the wss listener.

    @param client_ca_cert: when set, clients must present a certificate
        signed by one of the CAs in this PEM file.
    @raise TLSConfigError: a file is missing or unusable.
    """
    private = _private_certificate(cert_file_path, key_file_path, "server")
    options: dict[str, Any] = {}
    if client_ca_cert is not None:
        cas = _certificates(client_ca_cert, "client CA")
        options = {
            "verify": True,
            "requireCertificate": True,
            "caCerts": [ca.original for ca in cas],
        }

    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        **options,
    )


def client_context_factory(
    host: str,
    ca_cert: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> IOpenSSLClientConnectionCreator:
    """
    The context factory a client uses for C{wss://host}.

    @param ca_cert: a PEM file of CAs to trust instead of the system store.
    @param client_cert: with C{client_key}, a certificate to present.
    @raise TLSConfigError: a file is missing or unusable, or only one of
        C{client_cert} and C{client_key} is set.
    """
    trust: Any = ssl.platformTrust()
    if ca_cert is not None:
        cas = _certificates(ca_cert, "CA certificate")
        trust = ssl.trustRootFromCertificates(cas)

    if (client_cert is None) != (client_key is None):
        raise TLSConfigError("client_cert and client_key must be set together")

    client = None
    if client_cert is not None and client_key is not None:
        client = _private_certificate(client_cert, client_key, "client")

    return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)
