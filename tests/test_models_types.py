"""UTCDateTime writes on SQLite exactly the text SQLAlchemy's own chain writes, faster."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator

from engine.models import UTCDateTime


def _chain(dialect):
    """The processor TypeDecorator builds (process_bind_param, then the dialect's DATETIME's)."""
    return TypeDecorator.bind_processor(UTCDateTime().dialect_impl(dialect), dialect)


def test_sqlite_text_equals_the_decorator_chain():
    dialect = sqlite.dialect()
    fast, slow = UTCDateTime().dialect_impl(dialect).bind_processor(dialect), _chain(dialect)
    rng = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30)), timezone(timedelta(0))]
    for _ in range(20_000):
        value = datetime(rng.randint(2, 9998), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                         rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, rng.randint(0, 999_999)]),
                         tzinfo=rng.choice(zones))
        assert fast(value) == slow(value)
    assert fast(None) is slow(None) is None
    with pytest.raises(ValueError, match="naive"):
        fast(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        slow(datetime(2024, 1, 1))
