"""What a notification channel is: a ``name``, ``send(message)``, optionally ``accepts(message)``
and ``timeout``. Channels are called by the delivery worker (``engine.outbox``), in a
worker thread with a deadline, never inside a step."""

from __future__ import annotations

import abc

from engine.pii import mask_email, mask_phone

__all__ = ["Channel", "PermanentDeliveryError", "mask_email", "mask_phone"]  # masking: engine.pii


class PermanentDeliveryError(Exception):
    """A delivery failure a retry cannot fix (address refused, request rejected): the
    outbox row becomes an incident at once instead of being retried."""


class Channel(abc.ABC):
    """Base class for channels (duck typing works too: see ``careflow_notification_channels``)."""

    name: str = "channel"
    timeout: float | None = None  # seconds; None: CAREFLOW_CHANNEL_TIMEOUT

    def accepts(self, message: dict) -> bool:
        """Whether a message that names no channel should go through this one."""
        return True

    @abc.abstractmethod
    def send(self, message: dict) -> None:
        """Deliver ``message``; raise on failure (``PermanentDeliveryError`` if retrying is pointless)."""

    def describe(self) -> str:
        """Where this channel sends to, for ``careflow plugins`` (no secrets)."""
        return self.name
