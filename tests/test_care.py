"""Care (关怀): birthday, holiday and signing-anniversary greetings, each sent once."""

from __future__ import annotations

import json
from datetime import date

import pytest
from sqlalchemy import func, select

from careflow.cli import cli
from engine.care import festival_on, run_care
from engine.clock import FrozenClock
from engine.customers import CustomerContact, merge_customers
from engine.models import OutboxMessage
from engine.runtime import Careflow

from crm_helpers import add, enterprise, race, sh, utc


@pytest.fixture
def clock():
    return FrozenClock(sh(2026, 10, 1, 0, 5))  # National Day, just after midnight


@pytest.fixture
def crm(settings, clock):
    eng = Careflow(settings, clock=clock)
    yield eng
    eng.close()


def _people(crm) -> dict[str, int]:
    return {
        "birthday": add(crm, {"customer_type": "individual", "name": "张丽华", "phone": "13612345678",
                              "birthday": "1985-10-01", "email": "zlh@example.com"}),
        "anniversary": add(crm, enterprise(1, signing_date="2023-10-01", annual_spend=200_000)),
        "signed_today": add(crm, enterprise(2, signing_date="2026-10-01")),
        "leapling": add(crm, {"customer_type": "individual", "name": "李明", "phone": "13512349876",
                              "birthday": "1988-02-29"}),
    }


def _outbox(crm) -> list[OutboxMessage]:
    with crm.Session() as s:
        return list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def _contacts(crm) -> int:
    with crm.Session() as s:
        return s.scalar(select(func.count()).select_from(CustomerContact).where(CustomerContact.kind == "care"))


def test_greetings_are_sent_once(crm):
    who = _people(crm)
    first = run_care(crm)
    assert first == {"date": "2026-10-01", "sent": 6, "already_sent": 0,
                     "by_occasion": {"birthday": 1, "anniversary": 1, "holiday": 4}}
    assert run_care(crm) == {"date": "2026-10-01", "sent": 0, "already_sent": 6, "by_occasion": {}}
    assert run_care(crm, date(2026, 10, 2))["sent"] == 0  # same festival, already greeted
    rows = _outbox(crm)
    assert len(rows) == 6 and _contacts(crm) == 6
    by_key = {r.idempotency_key: r for r in rows}
    birthday = by_key[f"care:{who['birthday']}:birthday:2026-10-01"]
    assert (birthday.topic, birthday.recipient, birthday.channel) == ("care_birthday", "customer", None)
    assert birthday.payload["email"] == "zlh@example.com" and birthday.payload["phone"] == "13612345678"
    assert birthday.next_attempt_at == utc(sh(2026, 10, 1, 9))  # not at midnight
    anniversary = by_key[f"care:{who['anniversary']}:anniversary:2026-10-01"]
    assert anniversary.payload["years"] == 3 and anniversary.payload["loyal"] is True
    holiday = by_key[f"care:{who['signed_today']}:holiday-national_day:2026-10-01"]
    assert holiday.payload["holiday_name"] == {"en": "National Day", "zh": "国庆节"}
    assert not any(k.startswith(f"care:{who['signed_today']}:anniversary") for k in by_key)


def test_leap_day_birthdays_and_days_without_greetings(crm):
    who = _people(crm)
    assert run_care(crm, date(2027, 2, 28))["by_occasion"] == {"birthday": 1}
    assert run_care(crm, date(2028, 2, 28))["sent"] == 0
    assert run_care(crm, date(2028, 2, 29))["by_occasion"] == {"birthday": 1}
    keys = [r.idempotency_key for r in _outbox(crm)]
    assert keys == [f"care:{who['leapling']}:birthday:2027-02-28", f"care:{who['leapling']}:birthday:2028-02-29"]
    assert run_care(crm, date(2026, 4, 5))["sent"] == 0  # Qingming: a day of mourning, no greeting
    assert run_care(crm, date(2026, 3, 17))["sent"] == 0


def test_a_festival_missed_on_its_first_day_is_greeted_once_later(crm):
    _people(crm)
    assert festival_on(date(2026, 2, 17))[0] == "spring_festival"
    assert festival_on(date(2026, 2, 17))[3] == date(2026, 2, 16)  # New Year's Eve starts it
    assert run_care(crm, date(2026, 2, 17))["by_occasion"] == {"holiday": 4}
    assert run_care(crm, date(2026, 2, 16))["sent"] == 0
    assert all(r.idempotency_key.endswith(":holiday-spring_festival:2026-02-16") for r in _outbox(crm))


def test_merged_customers_are_not_greeted_twice(crm):
    a = add(crm, enterprise(1))
    b = add(crm, enterprise(2))
    with crm.Session() as s, s.begin():
        merge_customers(s, a, b, pm=crm.pm)
    assert run_care(crm)["sent"] == 1


def test_two_schedulers_at_once_send_each_greeting_once(crm, settings):
    _people(crm)
    engines = [Careflow(settings, clock=FrozenClock(crm.now())) for _ in range(3)]
    results = race(engines, run_care)
    assert sum(r["sent"] for r in results) == 6
    assert len(_outbox(crm)) == 6 and _contacts(crm) == 6


def test_cli_care_run(runner, crm):
    _people(crm)
    out = runner.invoke(cli, ["care", "run", "--date", "2026-10-01", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["sent"] == 6
    again = runner.invoke(cli, ["care", "run", "--date", "2026-10-01"])
    assert again.output.strip() == "2026-10-01: 0 greeting(s) queued; 6 already sent earlier."
    bad = runner.invoke(cli, ["care", "run", "--date", "10/01/2026"])
    assert bad.exit_code == 2
