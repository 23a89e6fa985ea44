"""OpenFlow over TLS, controller side: the server context and the handshake.

os-ken's own TLS path is not used for either. Its native hub treats every Exception in a
connection thread as a normal task exit, so a refused switch certificate disappears without
a word, and a key file that cannot be read (loaded in the listener thread) leaves the
controller running but listening nowhere; its handshake has no time limit either. Here the
files are loaded before anything starts (a bad one is a clear error), every refused
handshake is logged with the peer address and the reason, and a peer that says nothing is
dropped after HANDSHAKE_TIMEOUT_S.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger("satupintu.openflow")

HANDSHAKE_TIMEOUT_S = 10.0


class TlsConfigError(ValueError):
    """A TLS key, certificate or CA file cannot be used; the message names the file."""


def _readable(what: str, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise TlsConfigError(f"TLS {what} {path}: cannot read it: {error.strerror}") from None


def server_context(key_path: str, cert_path: str, ca_path: str | None) -> ssl.SSLContext:
    """TLS 1.2 or newer; with `ca_path`, every switch must present a certificate that chains to
    that CA (mutual authentication). Raises TlsConfigError naming the file that is wrong."""
    for what, path in (("private key", key_path), ("certificate", cert_path), ("CA certificate", ca_path)):
        if path is not None:
            _readable(what, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as error:
        what = ("the private key does not belong to the certificate" if error.reason == "KEY_VALUES_MISMATCH"
                else f"expected a PEM certificate and its PEM private key ({error.reason or error})")
        raise TlsConfigError(f"TLS certificate {cert_path} with private key {key_path}: {what}") from None
    if ca_path is not None:
        try:
            context.load_verify_locations(ca_path)
        except ssl.SSLError as error:
            raise TlsConfigError(f"TLS CA certificate {ca_path}: not a PEM certificate ({error.reason or error})") \
                from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_name(certificate: dict | None) -> str:
    """The subject's common name of a peer certificate (as ssl.getpeercert() returns it)."""
    if not certificate:
        return "no certificate"
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return f"CN={value}"
    return "certificate without a common name"


def accept(context: ssl.SSLContext, handle: Callable[[Any, Any], None], sock: socket.socket, address: Any,
           timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Handshake on an accepted connection, then hand the TLS socket to `handle`; a refused
    or timed-out handshake is logged and the connection closed."""
    peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)
    sock.settimeout(timeout_s)
    try:
        secure = context.wrap_socket(sock, server_side=True)
    except OSError as error:  # ssl.SSLError, a timeout or a reset
        reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error) or "timeout"
        log.warning("refused OpenFlow TLS connection from %s: %s", peer, reason)
        sock.close()
        return
    secure.settimeout(None)
    log.info("OpenFlow TLS connection from %s (%s, %s)", peer, secure.version(), peer_name(secure.getpeercert()))
    handle(secure, address)
