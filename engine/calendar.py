"""Business calendars: which moments count as working time, and arithmetic on them.

Pure Python (no database, no Flask). Two calendars share one interface:

- :class:`BusinessCalendar`: working weekdays and hours in a time zone, public holidays
  from the ``holidays`` package (China by default, including the adjusted working days,
  调休, that the State Council moves onto weekends) and a per-company override file.
- :class:`TwentyFourSeven`: every moment counts (wall-clock budgets).

All datetimes must be timezone-aware; inputs may be in any zone, outputs are UTC.
Arithmetic walks whole working intervals (one or two per day), never minutes.

Precedence when deciding whether a date is a working day (first match wins):

1. the company's ``extra_holidays``  -> not a working day
2. the company's ``extra_workdays``  -> working day
3. a public holiday of ``country``   -> not a working day
4. an adjusted working day (调休) of ``country`` (when ``adjusted_workdays``) -> working day
5. otherwise: working day iff its weekday is in ``working_weekdays``
"""

from __future__ import annotations

import re
import threading
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_pkg

from engine.errors import CareflowError

UTC = UTC
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_COUNTRY = "CN"
DEFAULT_CONFIG_PATH = Path(__file__).with_name("calendars") / "cn-default.toml"
"""The sample override file shipped with the engine; it spells out the built-in defaults."""

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MAX_IDLE_DAYS = 3660  # ten years without a working moment means the calendar is broken
_CACHE_LIMIT = 50_000  # per-calendar cache entries (dates) before the cache is reset
_COUNTRY_LABELS_ZH = {"CN": "中国", "HK": "中国香港", "MO": "中国澳门", "TW": "中国台湾"}


class CalendarError(CareflowError, ValueError):
    """A calendar configuration is invalid, or a calendar has no working time at all."""


# --------------------------------------------------------------------------- helpers


def ensure_aware(dt: datetime, what: str = "datetime") -> datetime:
    """Return ``dt`` converted to UTC; raise ``ValueError`` if it is naive (or not a datetime)."""
    if not isinstance(dt, datetime):
        raise ValueError(f"{what} must be a timezone-aware datetime, got {type(dt).__name__} {dt!r}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(
            f"{what} must be timezone-aware, got naive datetime {dt.isoformat()}; "
            "attach a zone, e.g. dt.replace(tzinfo=ZoneInfo('Asia/Shanghai'))"
        )
    return dt.astimezone(UTC)


def parse_aware(value: str | datetime, what: str = "datetime") -> datetime:
    """Parse an ISO 8601 string (or take a datetime) into an aware UTC datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{what}: {value!r} is not an ISO 8601 datetime") from exc
    return ensure_aware(value, what)


def _parse_clock_time(value: Any, what: str) -> timedelta:
    """'09:00', '9:30', '24:00', '09:00:00' or a datetime.time -> offset from midnight."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise CalendarError(f"{what}: give a local time without a zone, got {value!r}")
        return timedelta(hours=value.hour, minutes=value.minute, seconds=value.second)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*", value)
        if m:
            h, mi, s = int(m[1]), int(m[2]), int(m[3] or 0)
            if (h < 24 and mi < 60 and s < 60) or (h == 24 and mi == 0 and s == 0):
                return timedelta(hours=h, minutes=mi, seconds=s)
    raise CalendarError(f"{what}: expected a time like '09:00' (or '24:00' for an end), got {value!r}")


def _format_offset(offset: timedelta) -> str:
    total = int(offset.total_seconds())
    h, rest = divmod(total, 3600)
    mi, s = divmod(rest, 60)
    return f"{h:02d}:{mi:02d}" + (f":{s:02d}" if s else "")


def _parse_date(value: Any, what: str) -> date:
    if isinstance(value, datetime):
        raise CalendarError(f"{what}: expected a date, got a datetime {value!r}")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise CalendarError(f"{what}: expected a date like 2026-10-01, got {value!r}")


def _parse_date_range(value: Any, what: str) -> list[date]:
    """A date, 'YYYY-MM-DD' or 'YYYY-MM-DD..YYYY-MM-DD' (inclusive) -> list of dates."""
    if isinstance(value, str) and ".." in value:
        first_s, _, last_s = value.partition("..")
        first, last = _parse_date(first_s, what), _parse_date(last_s, what)
        if last < first:
            raise CalendarError(f"{what}: range {value!r} ends before it starts")
        if (last - first).days > 366:
            raise CalendarError(f"{what}: range {value!r} is longer than a year")
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]
    return [_parse_date(value, what)]


def _parse_weekday(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise CalendarError(f"{what}: bad weekday {value!r}")
    if isinstance(value, int) and 1 <= value <= 7:
        return value - 1  # ISO 1 = Monday
    if isinstance(value, str) and value.strip().lower()[:3] in WEEKDAY_NAMES:
        return WEEKDAY_NAMES.index(value.strip().lower()[:3])
    raise CalendarError(f"{what}: expected 'mon'..'sun' or ISO numbers 1..7, got {value!r}")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CalendarError(f"unknown time zone {name!r} (use an IANA name like 'Asia/Shanghai')") from exc


@lru_cache(maxsize=512)
def _statutory_year(country: str, year: int, language: str | None = None) -> tuple[Mapping[date, str], frozenset[date]]:
    """Public holidays and adjusted (weekend) working days of ``country`` in ``year``.

    Neighbouring years are loaded too, because a notice for year Y may move a working
    day into late December of Y-1 or early January of Y+1. Cached per (country, year).
    """
    kwargs: dict[str, Any] = {"years": range(year - 1, year + 2)}
    if language:
        kwargs["language"] = language
    table = holidays_pkg.country_holidays(country, **kwargs)
    days = {d: name for d, name in table.items() if d.year == year}
    workdays = frozenset(d for d in getattr(table, "weekend_workdays", ()) if d.year == year)
    return MappingProxyType(days), workdays


# ------------------------------------------------------------------------- interface


class Calendar(ABC):
    """What SLA arithmetic needs from a calendar; see :class:`BusinessCalendar`."""

    name: str
    label_zh: str
    timezone_name: str
    tz: ZoneInfo

    @abstractmethod
    def is_working_day(self, day: date | datetime) -> bool:
        """Whether ``day`` (a date, or an aware datetime taken in the calendar's zone) is a working day."""

    @property
    @abstractmethod
    def working_hours_per_day(self) -> timedelta:
        """Working time in one normal working day (what '1WD' means on this calendar)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description that :func:`calendar_from_dict` turns back into this calendar."""

    @abstractmethod
    def working_intervals(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals ``[s, e)`` inside ``[start, end)``, in order, as UTC datetimes."""

    @abstractmethod
    def is_working_time(self, dt: datetime) -> bool:
        """Whether the moment ``dt`` falls inside working hours of a working day."""

    @abstractmethod
    def next_working_moment(self, dt: datetime) -> datetime:
        """``dt`` itself (in UTC) if it is working time, else the start of the next working interval."""

    @abstractmethod
    def add_working_time(self, start: datetime, delta: timedelta) -> datetime:
        """The moment at which ``delta`` of working time has passed since ``start`` (UTC)."""

    def add_working_days(self, start: datetime, n: float) -> datetime:
        """``start`` plus ``n`` working days, i.e. ``n`` x :attr:`working_hours_per_day` of working time."""
        if isinstance(n, bool) or not isinstance(n, int | float) or n < 0:
            raise ValueError(f"number of working days must be a number >= 0, got {n!r}")
        return self.add_working_time(start, self.working_hours_per_day * n)

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Working time in ``[start, end)``; negative if ``end`` is before ``start``."""
        s, e = ensure_aware(start, "start"), ensure_aware(end, "end")
        if e < s:
            return -self.working_time_between(e, s)
        total = timedelta(0)
        for a, b in self.working_intervals(s, e):
            total += b - a
        return total

    def local(self, dt: datetime) -> datetime:
        """``dt`` (aware) expressed in the calendar's time zone."""
        return ensure_aware(dt).astimezone(self.tz)

    def describe(self) -> dict[str, str]:
        """Short human labels: ``{'en': 'CN (Asia/Shanghai)', 'zh': '中国（Asia/Shanghai）'}``."""
        return {
            "en": f"{self.name} ({self.timezone_name})",
            "zh": f"{self.label_zh}（{self.timezone_name}）",
        }

    def _local_date(self, day: date | datetime) -> date:
        if isinstance(day, datetime):
            return ensure_aware(day, "day").astimezone(self.tz).date()
        if isinstance(day, date):
            return day
        raise ValueError(f"expected a date or an aware datetime, got {day!r}")


# -------------------------------------------------------------------------- 24 x 7


class TwentyFourSeven(Calendar):
    """Every moment is working time: for wall-clock budgets such as ``PT24H``.

    The time zone only matters for display (explanations) and for ``is_working_day``.
    """

    def __init__(self, timezone: str = DEFAULT_TIMEZONE, name: str = "24x7", label_zh: str = "全天候"):
        self.timezone_name = timezone
        self.tz = _zone(timezone)
        self.name = name
        self.label_zh = label_zh

    def __repr__(self) -> str:
        return f"TwentyFourSeven(timezone={self.timezone_name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TwentyFourSeven) and other.to_dict() == self.to_dict()

    def __hash__(self) -> int:
        return hash(("24x7", self.timezone_name, self.name))

    def is_working_day(self, day: date | datetime) -> bool:
        """Always true (after validating the argument)."""
        self._local_date(day)
        return True

    @property
    def working_hours_per_day(self) -> timedelta:
        """24 hours."""
        return timedelta(hours=24)

    def is_working_time(self, dt: datetime) -> bool:
        """Always true (after validating the argument)."""
        ensure_aware(dt, "dt")
        return True

    def working_intervals(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The single interval ``(start, end)`` in UTC, if it is not empty."""
        s, e = ensure_aware(start, "start"), ensure_aware(end, "end")
        if s < e:
            yield s, e

    def next_working_moment(self, dt: datetime) -> datetime:
        """``dt`` in UTC."""
        return ensure_aware(dt, "dt")

    def add_working_time(self, start: datetime, delta: timedelta) -> datetime:
        """``start + delta`` in UTC (``delta`` must not be negative)."""
        _check_delta(delta)
        return ensure_aware(start, "start") + delta

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """``end - start``."""
        return ensure_aware(end, "end") - ensure_aware(start, "start")

    def to_dict(self) -> dict[str, Any]:
        """``{'kind': '24x7', 'timezone': ..., 'name': ..., 'label_zh': ...}``."""
        return {"kind": "24x7", "name": self.name, "label_zh": self.label_zh, "timezone": self.timezone_name}


def _check_delta(delta: timedelta) -> None:
    if not isinstance(delta, timedelta):
        raise ValueError(f"delta must be a timedelta, got {delta!r}")
    if delta < timedelta(0):
        raise ValueError(f"delta must not be negative, got {delta}")


# ------------------------------------------------------------------ business calendar

_CONFIG_KEYS = {
    "kind",
    "name",
    "label_zh",
    "timezone",
    "country",
    "adjusted_workdays",
    "working_weekdays",
    "working_hours",
    "extra_holidays",
    "extra_workdays",
}
_HOURS_KEYS = {"start", "end", "lunch"}


class BusinessCalendar(Calendar):
    """Working weekdays and hours in a time zone, minus public and company holidays.

    Build it with :meth:`from_config` (China defaults, optionally overridden by a TOML
    file) or :meth:`from_dict`; the constructor takes the already-parsed values.
    """

    def __init__(
        self,
        *,
        name: str = DEFAULT_COUNTRY,
        label_zh: str | None = None,
        timezone: str = DEFAULT_TIMEZONE,
        country: str | None = DEFAULT_COUNTRY,
        adjusted_workdays: bool = True,
        working_weekdays: Iterable[int] = (0, 1, 2, 3, 4),
        work_start: timedelta = timedelta(hours=9),
        work_end: timedelta = timedelta(hours=18),
        lunch: tuple[timedelta, timedelta] | None = None,
        extra_holidays: Mapping[date, str] | None = None,
        extra_workdays: Iterable[date] = (),
        source: str | None = None,
    ):
        self.name = name
        self.country = country.upper() if country else None
        self.label_zh = label_zh or _COUNTRY_LABELS_ZH.get(name.upper(), name)
        self.timezone_name = timezone
        self.tz = _zone(timezone)
        self.adjusted_workdays = bool(adjusted_workdays)
        self.working_weekdays = frozenset(working_weekdays)
        if not self.working_weekdays <= set(range(7)):
            raise CalendarError(f"working weekdays must be 0 (Mon) .. 6 (Sun), got {sorted(self.working_weekdays)}")
        self.work_start, self.work_end, self.lunch = work_start, work_end, lunch
        if not timedelta(0) <= work_start < work_end <= timedelta(hours=24):
            raise CalendarError(
                f"working hours must start before they end within one day, got "
                f"{_format_offset(work_start)}-{_format_offset(work_end)}"
            )
        if lunch is not None and not work_start < lunch[0] < lunch[1] < work_end:
            raise CalendarError(
                f"lunch break {_format_offset(lunch[0])}-{_format_offset(lunch[1])} must lie inside "
                f"working hours {_format_offset(work_start)}-{_format_offset(work_end)}"
            )
        self._windows: tuple[tuple[timedelta, timedelta], ...] = (
            ((work_start, lunch[0]), (lunch[1], work_end)) if lunch else ((work_start, work_end),)
        )
        self.extra_holidays: Mapping[date, str] = MappingProxyType(dict(extra_holidays or {}))
        self.extra_workdays: frozenset[date] = frozenset(extra_workdays)
        both = sorted(self.extra_workdays & set(self.extra_holidays))
        if both:
            raise CalendarError(
                "dates listed both as extra holidays and extra working days: " + ", ".join(map(str, both))
            )
        if self.country is not None and self.country not in holidays_pkg.list_supported_countries():
            raise CalendarError(f"the holidays package has no public holidays for country {self.country!r}")
        self.source = source
        self._lock = threading.Lock()
        self._day_cache: dict[date, tuple[tuple[datetime, datetime], ...]] = {}

    # ---- construction

    @classmethod
    def china(cls) -> BusinessCalendar:
        """The default calendar: CN holidays and 调休, Mon-Fri 09:00-18:00, Asia/Shanghai."""
        return cls()

    @classmethod
    def from_config(cls, path: str | Path | None = None) -> BusinessCalendar:
        """China defaults, overridden by the TOML file at ``path`` (``None``: defaults only).

        See ``engine/calendars/cn-default.toml`` for the format. Keys left out keep
        their default. Raises :class:`CalendarError` for unreadable or invalid files.
        """
        if path is None:
            return cls.china()
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise CalendarError(f"cannot read calendar file {p}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise CalendarError(f"calendar file {p} is not valid TOML: {exc}") from exc
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> BusinessCalendar:
        """Build from the mapping form used by the TOML file and by :meth:`to_dict`."""
        where = f"calendar {source}" if source else "calendar"
        unknown = set(data) - _CONFIG_KEYS
        if unknown:
            raise CalendarError(
                f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_CONFIG_KEYS)}"
            )
        if data.get("kind", "business") != "business":
            raise CalendarError(f"{where}: kind must be 'business', got {data.get('kind')!r}")
        kwargs: dict[str, Any] = {"source": source}
        for key in ("name", "label_zh", "timezone"):
            if key in data:
                if not isinstance(data[key], str) or not data[key].strip():
                    raise CalendarError(f"{where}: {key} must be a non-empty string, got {data[key]!r}")
                kwargs[key] = data[key].strip()
        if "country" in data:
            country = data["country"]
            if country is not None and not isinstance(country, str):
                raise CalendarError(f"{where}: country must be a code like 'CN' or '' for none, got {country!r}")
            country = (country or "").strip()
            kwargs["country"] = None if country.lower() in ("", "none") else country
        if "adjusted_workdays" in data:
            if not isinstance(data["adjusted_workdays"], bool):
                raise CalendarError(f"{where}: adjusted_workdays must be true or false")
            kwargs["adjusted_workdays"] = data["adjusted_workdays"]
        if "working_weekdays" in data:
            days = data["working_weekdays"]
            if not isinstance(days, list | tuple):
                raise CalendarError(f"{where}: working_weekdays must be a list like ['mon', 'tue']")
            kwargs["working_weekdays"] = {_parse_weekday(v, f"{where}: working_weekdays") for v in days}
        if "working_hours" in data:
            hours = data["working_hours"]
            if not isinstance(hours, Mapping):
                raise CalendarError(f"{where}: working_hours must be a table with start, end and optional lunch")
            bad = set(hours) - _HOURS_KEYS
            if bad:
                raise CalendarError(f"{where}: unknown keys in working_hours: {sorted(bad)}")
            if "start" in hours:
                kwargs["work_start"] = _parse_clock_time(hours["start"], f"{where}: working_hours.start")
            if "end" in hours:
                kwargs["work_end"] = _parse_clock_time(hours["end"], f"{where}: working_hours.end")
            lunch = hours.get("lunch")
            if lunch is not None:
                if not isinstance(lunch, list | tuple) or len(lunch) != 2:
                    raise CalendarError(f"{where}: working_hours.lunch must be [start, end], got {lunch!r}")
                kwargs["lunch"] = (
                    _parse_clock_time(lunch[0], f"{where}: working_hours.lunch"),
                    _parse_clock_time(lunch[1], f"{where}: working_hours.lunch"),
                )
        if "extra_holidays" in data:
            kwargs["extra_holidays"] = _parse_extra_holidays(data["extra_holidays"], where)
        if "extra_workdays" in data:
            raw = data["extra_workdays"]
            if not isinstance(raw, list | tuple):
                raise CalendarError(f"{where}: extra_workdays must be a list of dates")
            kwargs["extra_workdays"] = [
                d for v in raw for d in _parse_date_range(v, f"{where}: extra_workdays")
            ]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe mapping (same shape as the TOML file) that :meth:`from_dict` accepts."""
        hours: dict[str, Any] = {"start": _format_offset(self.work_start), "end": _format_offset(self.work_end)}
        if self.lunch:
            hours["lunch"] = [_format_offset(self.lunch[0]), _format_offset(self.lunch[1])]
        return {
            "kind": "business",
            "name": self.name,
            "label_zh": self.label_zh,
            "timezone": self.timezone_name,
            "country": self.country or "",
            "adjusted_workdays": self.adjusted_workdays,
            "working_weekdays": [WEEKDAY_NAMES[i] for i in sorted(self.working_weekdays)],
            "working_hours": hours,
            "extra_holidays": {d.isoformat(): n for d, n in sorted(self.extra_holidays.items())},
            "extra_workdays": [d.isoformat() for d in sorted(self.extra_workdays)],
        }

    def __repr__(self) -> str:
        return f"BusinessCalendar(name={self.name!r}, timezone={self.timezone_name!r}, source={self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BusinessCalendar) and other.to_dict() == self.to_dict()

    def __hash__(self) -> int:
        return hash((self.name, self.timezone_name, self.country))

    # ---- days

    @property
    def working_hours_per_day(self) -> timedelta:
        """Working time of a normal working day (09:00-18:00 without lunch: 9 h)."""
        return sum((b - a for a, b in self._windows), timedelta(0))

    def holiday_name(self, day: date | datetime, language: str = "en") -> str | None:
        """Name of the company or public holiday on ``day`` (``language`` 'en' or 'zh'), else None."""
        d = self._local_date(day)
        if d in self.extra_holidays:
            return self.extra_holidays[d]
        if self.country is None:
            return None
        lang = "zh_CN" if language.lower().startswith("zh") else "en_US"
        return _statutory_year(self.country, d.year, lang)[0].get(d)

    def is_public_holiday(self, day: date | datetime) -> bool:
        """Whether ``day`` is a public holiday of the configured country (ignoring company overrides)."""
        d = self._local_date(day)
        return self.country is not None and d in _statutory_year(self.country, d.year)[0]

    def is_adjusted_workday(self, day: date | datetime) -> bool:
        """Whether ``day`` is a weekend day the country declared a working day (调休)."""
        d = self._local_date(day)
        return self.country is not None and d in _statutory_year(self.country, d.year)[1]

    def is_working_day(self, day: date | datetime) -> bool:
        """Whether ``day`` is a working day (see the module docstring for the precedence)."""
        d = self._local_date(day)
        if d in self.extra_holidays:
            return False
        if d in self.extra_workdays:
            return True
        if self.country is not None:
            hols, workdays = _statutory_year(self.country, d.year)
            if d in hols:
                return False
            if self.adjusted_workdays and d in workdays:
                return True
        return d.weekday() in self.working_weekdays

    def _day_intervals(self, d: date) -> tuple[tuple[datetime, datetime], ...]:
        """Working intervals of local date ``d`` in UTC (cached)."""
        cached = self._day_cache.get(d)
        if cached is not None:
            return cached
        if self.is_working_day(d):
            midnight = datetime.combine(d, time())
            result = tuple(
                (
                    (midnight + a).replace(tzinfo=self.tz).astimezone(UTC),
                    (midnight + b).replace(tzinfo=self.tz).astimezone(UTC),
                )
                for a, b in self._windows
            )
        else:
            result = ()
        with self._lock:
            if len(self._day_cache) >= _CACHE_LIMIT:
                self._day_cache.clear()
            self._day_cache[d] = result
        return result

    def _intervals_from(self, start: datetime, end: datetime | None) -> Iterator[tuple[datetime, datetime]]:
        """Clipped working intervals from ``start`` (UTC) up to ``end`` (UTC) or forever."""
        d = start.astimezone(self.tz).date()
        last = end.astimezone(self.tz).date() if end is not None else None
        idle = 0
        while last is None or d <= last:
            found = False
            for a, b in self._day_intervals(d):
                a, b = max(a, start), b if end is None else min(b, end)
                if a < b:
                    found = True
                    yield a, b
            if found or self._day_intervals(d):
                idle = 0
            else:
                idle += 1
                if idle > _MAX_IDLE_DAYS:
                    raise CalendarError(
                        f"calendar {self.name} has no working time for {_MAX_IDLE_DAYS} days after {d}"
                    )
            d += timedelta(days=1)

    # ---- moments and arithmetic

    def is_working_time(self, dt: datetime) -> bool:
        """Whether ``dt`` lies in ``[start, end)`` of a working interval (lunch excluded)."""
        u = ensure_aware(dt, "dt")
        return any(a <= u < b for a, b in self._day_intervals(u.astimezone(self.tz).date()))

    def working_intervals(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals ``[s, e)`` inside ``[start, end)``, in order, as UTC datetimes."""
        s, e = ensure_aware(start, "start"), ensure_aware(end, "end")
        if s < e:
            yield from self._intervals_from(s, e)

    def next_working_moment(self, dt: datetime) -> datetime:
        """``dt`` (UTC) if it is working time, else the start of the next working interval."""
        u = ensure_aware(dt, "dt")
        return next(self._intervals_from(u, None))[0]

    def add_working_time(self, start: datetime, delta: timedelta) -> datetime:
        """Consume ``delta`` of working time from ``start``; return the UTC moment it runs out.

        A start outside working hours begins counting at the next working moment; a
        ``delta`` that runs out exactly at the end of an interval returns that end
        (Friday 15:00 + 3 h = Friday 18:00, not Monday 09:00). ``delta == 0`` returns ``start``.
        """
        _check_delta(delta)
        u = ensure_aware(start, "start")
        if not delta:
            return u
        remaining = delta
        for a, b in self._intervals_from(u, None):
            span = b - a
            if span >= remaining:
                return a + remaining
            remaining -= span
        raise AssertionError("unreachable: _intervals_from is endless")  # pragma: no cover


def _parse_extra_holidays(raw: Any, where: str) -> dict[date, str]:
    """Table ``{date or 'from..to': name}`` or list of dates/ranges -> {date: name}."""
    out: dict[date, str] = {}
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list | tuple):
        items = [(v, "Company holiday") for v in raw]
    else:
        raise CalendarError(f"{where}: extra_holidays must be a table of date = name, or a list of dates")
    for key, name in items:
        if not isinstance(name, str):
            raise CalendarError(f"{where}: extra_holidays name for {key!r} must be a string")
        for d in _parse_date_range(key, f"{where}: extra_holidays"):
            out[d] = name
    return out


def calendar_from_dict(data: Mapping[str, Any]) -> Calendar:
    """Rebuild a calendar from ``Calendar.to_dict()`` output (either kind)."""
    if data.get("kind") == "24x7":
        return TwentyFourSeven(
            timezone=data.get("timezone", DEFAULT_TIMEZONE),
            name=data.get("name", "24x7"),
            label_zh=data.get("label_zh", "全天候"),
        )
    return BusinessCalendar.from_dict(data)
