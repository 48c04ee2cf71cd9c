"""Webhooks shared by web (checking a callback URL) and worker (signing and sending).

Signed as Standard Webhooks (standardwebhooks.com) sign: headers ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")).
A WEBHOOK_SECRET of the form ``whsec_<base64>`` is used as its decoded bytes (the spec's format);
any other value as its UTF-8 bytes.
"""

import base64
import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit


class CallbackRefused(ValueError):
    """A callback URL the service will not call."""


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


def check_callback_url(url: str, allow_private: bool) -> None:
    """Raise CallbackRefused for a URL that is not http(s), or resolves to an address inside a network.

    Loopback, private, link-local (cloud metadata at 169.254.169.254), multicast, reserved and
    unspecified addresses are refused unless ``allow_private``: a callback must not turn the
    service into a way to reach what only it can reach (SSRF). Checked at submission and again
    before each delivery, since DNS answers change.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url must be an absolute http or https URL")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url must not carry credentials")
    if allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (OSError, ValueError, UnicodeError) as error:
        raise CallbackRefused(f"callback_url's host does not resolve: {error}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise CallbackRefused(
                f"callback_url resolves to {ip}, a loopback, private or link-local address (WEBHOOK_ALLOW_PRIVATE=1 allows it)"
            )
