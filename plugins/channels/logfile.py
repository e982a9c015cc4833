"""The log/file channel: every notification as one JSON line, in a file
(``CAREFLOW_NOTIFY_LOG=/path/notifications.jsonl``) or on the ``careflow.notify`` logger
(the default). Addresses are masked; the text is kept, so operators can read what went out."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from engine.clock import utcnow
from plugins.channels.base import Channel, mask_email, mask_phone

log = logging.getLogger("careflow.notify")


class LogChannel(Channel):
    """Writes notifications to a JSON-lines file or the log; accepts every message."""

    name = "log"

    def __init__(self, path: str | None = None) -> None:
        self.path = Path(path).expanduser() if path else None
        self._lock = threading.Lock()

    def send(self, message: dict) -> None:
        """Append one JSON line (file) or log it at INFO (no file configured)."""
        record = {
            "at": utcnow().isoformat(),
            "idempotency_key": message.get("idempotency_key"),
            "topic": message.get("topic"),
            "recipient": message.get("recipient"),
            "to": [{**({"name": a.get("name")} if a.get("name") else {}),
                    **({"email": mask_email(a["email"])} if a.get("email") else {}),
                    **({"phone": mask_phone(a["phone"])} if a.get("phone") else {})}
                   for a in message.get("to") or []],
            "instance_id": message.get("instance_id"),
            "subject": message.get("subject"),
            "body": message.get("body"),
        }
        line = json.dumps(record, ensure_ascii=False, default=str)
        if self.path is None:
            log.info("notification %s", line)
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    def describe(self) -> str:
        """The file, or the logger."""
        return f"log → {self.path}" if self.path else "log → logger careflow.notify"
