"""Care (关怀): birthday, holiday and signing-anniversary greetings, sent as outbox notifications.

``run_care(engine, day)`` writes one outbox row per customer and occasion with the
idempotency key ``care:<customer>:<occasion>:<date>``, inserted with ON CONFLICT DO
NOTHING: running the scheduler twice (or two schedulers at once) sends each greeting
once, and only newly written greetings are recorded as contacts. Holidays come from the
business calendar (China's public holidays): a festival is greeted on its first day, or
on a later day of the same festival if the scheduler missed the first. Greetings are
queued for 09:00 China time, never at midnight. The delivery worker sends them through
the notification plugins (recipient ``customer``; the payload carries the addresses).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from engine.customers import Customer, record_contact
from engine.models import OutboxMessage

if TYPE_CHECKING:
    from engine.runtime import Careflow

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
SEND_TIME = time(9, 0)
LOYAL_TIERS = ("core", "A")
# Festivals greeted, by the English names of the holidays package (Qingming is a day of mourning: no greeting).
FESTIVALS: dict[str, tuple[str, str, str]] = {
    "New Year's Day": ("new_year", "New Year", "元旦"),
    "Chinese New Year's Eve": ("spring_festival", "Spring Festival", "春节"),
    "Chinese New Year (Spring Festival)": ("spring_festival", "Spring Festival", "春节"),
    "Labor Day": ("labor_day", "Labour Day", "劳动节"),
    "Dragon Boat Festival": ("dragon_boat", "Dragon Boat Festival", "端午节"),
    "Mid-Autumn Festival": ("mid_autumn", "Mid-Autumn Festival", "中秋节"),
    "National Day": ("national_day", "National Day", "国庆节"),
}
TOPICS = {"birthday": "care_birthday", "anniversary": "care_anniversary", "holiday": "care_holiday"}


def _calendar():
    try:
        from engine.sla import get_calendar

        return get_calendar()
    except Exception:  # the SLA module is optional here; China's calendar is the default
        from engine.calendar import BusinessCalendar

        return BusinessCalendar.china()


def festival_on(day: date, cal=None) -> tuple[str, str, str, date] | None:
    """``(key, English name, Chinese name, first day)`` of the festival ``day`` belongs to, or None."""
    cal = cal or _calendar()
    name = cal.holiday_name(day, "en") if hasattr(cal, "holiday_name") else None
    if not name or name not in FESTIVALS:
        return None
    key, en, zh = FESTIVALS[name]
    first = day
    for _ in range(10):
        before = cal.holiday_name(first - timedelta(days=1), "en")
        if before in FESTIVALS and FESTIVALS[before][0] == key:
            first -= timedelta(days=1)
        else:
            break
    return key, en, zh, first


def _birthday_this_year(born: date, day: date) -> date:
    try:
        return born.replace(year=day.year)
    except ValueError:  # 29 February in a common year: greet on the 28th
        return date(day.year, 2, 28)


def planned_greetings(session, day: date, cal=None) -> list[dict[str, Any]]:
    """The greetings due on ``day`` (China date): ``[{customer, occasion, key, topic, payload}]``."""
    festival = festival_on(day, cal)
    out = []
    rows = session.scalars(select(Customer).where(Customer.status == "active").order_by(Customer.id)
                           .execution_options(yield_per=1000))
    for c in rows:
        base = {"customer_id": c.id, "customer_name": c.name, "contact_person": c.contact_person,
                "phone": c.phone, "email": c.email, "tier": c.tier, "loyal": c.tier in LOYAL_TIERS}
        if c.birthday and _birthday_this_year(c.birthday, day) == day:
            out.append({"customer": c, "occasion": "birthday", "key": f"care:{c.id}:birthday:{day.isoformat()}",
                        "payload": {**base, "occasion": "birthday", "date": day.isoformat()}})
        if c.signing_date and day.year > c.signing_date.year and _birthday_this_year(c.signing_date, day) == day:
            years = day.year - c.signing_date.year
            out.append({"customer": c, "occasion": "anniversary",
                        "key": f"care:{c.id}:anniversary:{day.isoformat()}",
                        "payload": {**base, "occasion": "anniversary", "years": years, "date": day.isoformat(),
                                    "signing_date": c.signing_date.isoformat()}})
        if festival:
            key, en, zh, first = festival
            out.append({"customer": c, "occasion": "holiday", "key": f"care:{c.id}:holiday-{key}:{first.isoformat()}",
                        "payload": {**base, "occasion": "holiday", "holiday": key, "holiday_name": {"en": en, "zh": zh},
                                    "date": first.isoformat()}})
    return out


def _insert(session, values: dict[str, Any]) -> bool:
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    stmt = (module.insert(OutboxMessage).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(OutboxMessage.id))
    return session.execute(stmt).scalar() is not None


def run_care(engine: Careflow, day: date | datetime | None = None) -> dict[str, Any]:
    """Queue the greetings of ``day`` (default: today in China); each greeting at most once, ever.

    Returns ``{"date", "sent", "already_sent", "by_occasion": {occasion: sent}}``.
    """
    now = engine.now()
    if isinstance(day, datetime):
        day = day.astimezone(LOCAL_TZ).date()
    day = day or now.astimezone(LOCAL_TZ).date()
    send_at = max(now, datetime.combine(day, SEND_TIME, LOCAL_TZ).astimezone(ZoneInfo("UTC")))
    sent, already = 0, 0
    by_occasion: dict[str, int] = {}
    with engine.Session() as session, session.begin():
        for g in planned_greetings(session, day):
            inserted = _insert(session, {
                "idempotency_key": g["key"], "instance_id": None, "topic": TOPICS[g["occasion"]], "channel": None,
                "recipient": "customer", "payload": g["payload"], "status": "pending", "attempts": 0,
                "next_attempt_at": send_at, "created_at": now})
            if not inserted:
                already += 1
                continue
            sent += 1
            by_occasion[g["occasion"]] = by_occasion.get(g["occasion"], 0) + 1
            label = {"birthday": "Birthday greeting", "anniversary": "Signing anniversary greeting",
                     "holiday": "Holiday greeting"}[g["occasion"]]
            if g["occasion"] == "holiday":
                label += f" ({g['payload']['holiday_name']['en']})"
            elif g["occasion"] == "anniversary":
                label += f" ({g['payload']['years']} years)"
            record_contact(session, g["customer"].id, "care", f"{label} queued", by="system", at=now,
                           details={"idempotency_key": g["key"], "topic": TOPICS[g["occasion"]]})
    return {"date": day.isoformat(), "sent": sent, "already_sent": already, "by_occasion": by_occasion}
