"""Outbox delivery benchmark: how fast the delivery worker drains the outbox.

    .venv/bin/python bench/outbox.py [--messages N] [--database-url URL]

Rows are written as a step writes them (one ``notify`` with channel None each), then
``deliver_due`` fans them out and sends them through the log/file channel (a JSON-lines
file) and an in-memory channel. Prints ``name: value`` lines:
- outbox_messages: messages written;
- deliver_messages_per_s: messages fully delivered (fan-out + both channels) per second;
- deliver_rows_per_s: outbox rows handled per second (parent and children).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import delete  # noqa: E402

from engine.config import Settings, normalize_database_url  # noqa: E402
from engine.models import OutboxMessage  # noqa: E402
from engine.outbox import OutboxPolicy, deliver_due  # noqa: E402
from engine.runtime import Careflow  # noqa: E402
from plugins.hookspecs import hookimpl  # noqa: E402
from plugins.manager import get_plugin_manager  # noqa: E402


class Sink:
    """An in-memory channel that accepts everything."""

    name = "memory"

    def __init__(self) -> None:
        self.count = 0

    def send(self, message: dict) -> None:
        self.count += 1

    @hookimpl
    def careflow_notification_channels(self) -> list:
        return [self]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = normalize_database_url(args.database_url) if args.database_url else f"sqlite:///{tmp}/bench.db"
        pm = get_plugin_manager(load_entry_points=False, environ={"CAREFLOW_NOTIFY_LOG": f"{tmp}/sent.jsonl"})
        sink = Sink()
        pm.register(sink)
        cf = Careflow(Settings(database_url=url, home=Path(tmp)), plugin_manager=pm)
        cf.init_db()
        now = datetime.now(UTC)
        run = uuid.uuid4().hex[:12]  # a PostgreSQL database may hold earlier runs' rows
        with cf.Session() as s, s.begin():
            s.add_all(OutboxMessage(idempotency_key=f"bench:{run}:{i}", topic="ticket_opened", channel=None,
                                    recipient="customer", status="pending", attempts=0, next_attempt_at=now,
                                    created_at=now, payload={"number": f"SN{i:05d}", "customer": {
                                        "name": "ACME", "email": f"c{i}@example.cn"}})
                      for i in range(args.messages))
        policy = OutboxPolicy(concurrency=8)
        started = time.perf_counter()
        rows = 0
        while True:
            handled = deliver_due(cf, limit=500, policy=policy)
            rows += handled
            if not handled:
                break
        elapsed = time.perf_counter() - started
        with cf.Session() as s, s.begin():
            s.execute(delete(OutboxMessage).where(OutboxMessage.idempotency_key.like(f"bench:{run}:%")))
        cf.close()
    assert sink.count == args.messages, (sink.count, args.messages)
    print(f"outbox_messages: {args.messages}")
    print(f"deliver_messages_per_s: {args.messages / elapsed:.0f}")
    print(f"deliver_rows_per_s: {rows / elapsed:.0f}")


if __name__ == "__main__":
    main()
