"""The webhook channel: an HTTP POST of the message as JSON (``CAREFLOW_WEBHOOK_URL``),
signed with HMAC-SHA256 (``CAREFLOW_WEBHOOK_SECRET``).

Headers: ``X-Careflow-Signature: sha256=<hex HMAC of the raw body>``,
``Idempotency-Key`` (the same on every retry of one message), ``X-Careflow-Topic``.
A 2xx answer is success; 4xx other than 408/409/425/429 is permanent; anything else is retried.
Unsigned requests are never sent: without a secret every delivery fails (and ends as an
incident an operator sees), so nothing is silently dropped either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request

from plugins.channels.base import Channel, PermanentDeliveryError

SIGNATURE_HEADER = "X-Careflow-Signature"
RETRYABLE_4XX = (408, 409, 425, 429)


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Check a received signature header (for receivers written in Python)."""
    return bool(header) and hmac.compare_digest(sign(secret, body), header)


class WebhookChannel(Channel):
    """POSTs every message it accepts (all of them) to one URL."""

    name = "webhook"

    def __init__(self, url: str, secret: str | None, timeout: float | None = None) -> None:
        self.url, self.secret, self.timeout = url, secret, timeout

    def send(self, message: dict) -> None:
        """POST the message; raise unless the receiver answers 2xx."""
        if not self.secret:
            raise RuntimeError("CAREFLOW_WEBHOOK_SECRET is not set: webhooks are only sent signed")
        body = json.dumps({k: message.get(k) for k in (
            "idempotency_key", "topic", "recipient", "to", "instance_id", "created_at", "attempt",
            "subject", "body", "payload")}, ensure_ascii=False, default=str).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "careflow-webhook",
            "Idempotency-Key": str(message.get("idempotency_key") or ""),
            "X-Careflow-Topic": str(message.get("topic") or ""),
            SIGNATURE_HEADER: sign(self.secret, body),
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout or 30) as response:
                response.read(1024)
        except urllib.error.HTTPError as err:
            detail = err.read(300).decode("utf-8", "replace") if err.fp else ""
            text = f"webhook answered HTTP {err.code} {err.reason}: {detail}".strip()
            if 400 <= err.code < 500 and err.code not in RETRYABLE_4XX:
                raise PermanentDeliveryError(text) from err
            raise RuntimeError(text) from err

    def describe(self) -> str:
        """The URL, and whether requests are signed."""
        return f"webhook → {self.url}" + ("" if self.secret else " (CAREFLOW_WEBHOOK_SECRET missing: sends fail)")
