"""Webhooks shared by web (checking a callback URL) and worker (signing and sending).

Signed as Standard Webhooks (standardwebhooks.com) sign: headers ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")).
A WEBHOOK_SECRET of the form ``whsec_<base64>`` is used as its decoded bytes (the spec's format);
any other value as its UTF-8 bytes.

A callback must not turn the service into a way to reach what only it can reach (SSRF): every
address its host resolves to is checked, and a delivery connects to an address that passed the
check, resolved once, so a DNS answer that changes between the check and the connection (DNS
rebinding) cannot send it elsewhere. The Host header, TLS SNI and certificate check keep the URL's
name. One deadline bounds a whole attempt: connect, TLS, send and reading the status line.
"""

import base64
import hashlib
import hmac
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


class CallbackRefused(ValueError):
    """A callback URL the service will not call; the message names the rule, never the addresses."""


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }


# Special-purpose ranges (the IANA registries) that Python's is_global lets through, or that carry
# another address inside (NAT64, 6to4, Teredo, IPv4-mapped and -compatible: a way back to 127.0.0.1
# or 169.254.169.254).
SPECIAL_PURPOSE = {
    "a 'this network' address (0.0.0.0/8)": ["0.0.0.0/8"],
    "a shared (carrier-grade NAT) address (100.64.0.0/10)": ["100.64.0.0/10"],
    "an IETF protocol assignment (192.0.0.0/24)": ["192.0.0.0/24"],
    "a documentation address": ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"],
    "a 6to4 relay address (192.88.99.0/24)": ["192.88.99.0/24"],
    "a benchmarking address (198.18.0.0/15)": ["198.18.0.0/15"],
    "a reserved address (240.0.0.0/4)": ["240.0.0.0/4"],
    "an IPv4-mapped IPv6 address (::ffff:0:0/96)": ["::ffff:0:0/96"],
    "an IPv4-compatible IPv6 address (::/96)": ["::/96"],
    "a NAT64 address (64:ff9b::/96, 64:ff9b:1::/48)": ["64:ff9b::/96", "64:ff9b:1::/48"],
    "a discard-only address (100::/64)": ["100::/64"],
    "a Teredo address (2001::/32)": ["2001::/32"],
    "a 6to4 address (2002::/16)": ["2002::/16"],
    "a site-local address (fec0::/10)": ["fec0::/10"],
}
_SPECIAL_NETWORKS = [(rule, ipaddress.ip_network(network)) for rule, networks in SPECIAL_PURPOSE.items() for network in networks]


def refusal_rule(address: str) -> str | None:
    """Why the service will not call ``address`` (the rule's name), or None for a public unicast address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    for rule, applies in (
        ("a loopback address", ip.is_loopback),
        ("an unspecified address", ip.is_unspecified),
        ("a link-local address (cloud metadata services live there)", ip.is_link_local),
        ("a multicast address", ip.is_multicast),
    ):
        if applies:
            return rule
    for rule, network in _SPECIAL_NETWORKS:
        if ip.version == network.version and ip in network:
            return rule
    for rule, applies in (
        ("a private address", ip.is_private),
        ("a reserved address", ip.is_reserved),
        ("a non-public address", not ip.is_global),
    ):
        if applies:
            return rule
    return None


Resolver = Callable[..., list]


@dataclass(frozen=True)
class Target:
    """Where a callback URL goes: the URL's parts, and the one address a delivery connects to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def check_callback_url(url: str, allow_private: bool, resolve: Resolver = socket.getaddrinfo) -> Target:
    """The Target of a callback URL; CallbackRefused for one that is not http(s) or resolves to a non-public address.

    Every resolved address must pass (unless ``allow_private``); the first is the one to connect to.
    Checked at submission and again at each delivery, which then connects to the address checked.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url must be an absolute http or https URL")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = list(dict.fromkeys(info[4][0] for info in resolve(parts.hostname, port, type=socket.SOCK_STREAM)))
    except (OSError, ValueError, UnicodeError):
        raise CallbackRefused("callback_url's host does not resolve") from None
    if not addresses:
        raise CallbackRefused("callback_url's host does not resolve")
    if not allow_private:
        for address in addresses:
            rule = refusal_rule(address)
            if rule is not None:
                raise CallbackRefused(
                    f"callback_url's host resolves to {rule}, which the service does not call"
                    " (WEBHOOK_ALLOW_PRIVATE=1 allows private addresses)"
                )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path, addresses[0])


class DeliveryFailed(Exception):
    """A webhook attempt that got no HTTP status: refused, timed out, reset, TLS or protocol error."""


# Most bytes read while looking for the answer's status line.
MAX_STATUS_LINE_BYTES = 8192


def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    connect: Callable[..., socket.socket] = socket.create_connection,
) -> int:
    """POST ``body`` to ``target``'s pinned address; the answer's HTTP status, all within ``timeout_s``.

    Raises DeliveryFailed when no status line arrives in time (a receiver that drips its answer a
    byte at a time is cut off at the deadline, not at each read's timeout).
    """
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeliveryFailed(f"no answer within {timeout_s}s")
        return left

    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    head = [f"POST {target.path} HTTP/1.1", f"Host: {host_header}", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    try:
        sock = connect((target.address, target.port), timeout=remaining())
        try:
            if target.scheme == "https":
                sock.settimeout(remaining())
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
            sock.settimeout(remaining())
            sock.sendall(request)
            answer = b""
            while b"\r\n" not in answer:
                if len(answer) > MAX_STATUS_LINE_BYTES:
                    raise DeliveryFailed("the answer's status line is too long")
                sock.settimeout(remaining())
                chunk = sock.recv(1024)
                if not chunk:
                    raise DeliveryFailed("the receiver closed the connection without an answer")
                answer += chunk
        finally:
            sock.close()
    except DeliveryFailed:
        raise
    except (OSError, ssl.SSLError) as error:  # refused, reset, timed out, certificate refused
        raise DeliveryFailed(str(error) or type(error).__name__) from None
    status_line = answer.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        raise DeliveryFailed("the answer is not HTTP")
    return int(status_line[1])
