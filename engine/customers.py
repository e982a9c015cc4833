"""The customer registry (客户信息登记表): customers, every contact with them, merges.

Public functions take the caller's session and never commit, so they run inside a
workflow step (host functions pass ``current_step().session``) or inside a CLI/web
transaction alike. Audit rows go through the current step when there is one, else they
are appended in the given session. Personal data (phone, e-mail, ID / credit code,
names of individuals) never goes into the hash-chained audit content: contact changes
are audited with masked values.

Validation reports one ``Problem`` per field (``ValidationFailed``); duplicates (same
credit code, same ID number or same normalised phone) raise ``DuplicateCustomer``
naming the existing customer so the caller can offer a merge. A database unique index
on those keys (active customers only) makes the check race-proof.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine import pii
from engine import step as step_mod
from engine.audit import AuditEvent, append_events
from engine.clock import utcnow
from engine.errors import Conflict, NotFound, Problem, ValidationFailed
from engine.models import Base, BigId, UTCDateTime

if TYPE_CHECKING:
    from engine.runtime import Careflow

# ----------------------------------------------------------------------------- vocabulary

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
CUSTOMER_TYPES = {"enterprise": ("Enterprise", "企业"), "individual": ("Individual", "个人")}
NEED_TYPES = {
    "product_purchase": ("Product purchase", "产品购买"),
    "technical_consultation": ("Technical consultation", "技术咨询"),
    "after_sales_service": ("After-sales service", "售后服务"),
    "cooperation_inquiry": ("Cooperation inquiry", "合作洽谈"),
}
SOURCES = {
    "online_promotion": ("Online promotion", "线上推广"),
    "exhibition": ("Exhibition", "展会"),
    "referral": ("Referral", "转介绍"),
    "other": ("Other", "其他"),
}
STRATEGIC_VALUES = {"A": ("Strategic", "战略客户"), "B": ("Growth potential", "成长客户"), "C": ("Regular", "普通客户")}
CONTACT_KINDS = ("revisit", "ticket", "complaint", "survey", "note", "care")

# GB/T 4754-2017 national economic industry classification: sections and their division ranges.
INDUSTRIES: dict[str, tuple[str, str, range]] = {
    "A": ("Agriculture, forestry, animal husbandry and fishery", "农、林、牧、渔业", range(1, 6)),
    "B": ("Mining", "采矿业", range(6, 13)),
    "C": ("Manufacturing", "制造业", range(13, 44)),
    "D": ("Electricity, heat, gas and water supply", "电力、热力、燃气及水生产和供应业", range(44, 47)),
    "E": ("Construction", "建筑业", range(47, 51)),
    "F": ("Wholesale and retail trade", "批发和零售业", range(51, 53)),
    "G": ("Transport, storage and postal services", "交通运输、仓储和邮政业", range(53, 61)),
    "H": ("Accommodation and catering", "住宿和餐饮业", range(61, 63)),
    "I": ("Information transmission, software and IT services", "信息传输、软件和信息技术服务业", range(63, 66)),
    "J": ("Finance", "金融业", range(66, 70)),
    "K": ("Real estate", "房地产业", range(70, 71)),
    "L": ("Leasing and business services", "租赁和商务服务业", range(71, 73)),
    "M": ("Scientific research and technical services", "科学研究和技术服务业", range(73, 76)),
    "N": ("Water, environment and public facilities management", "水利、环境和公共设施管理业", range(76, 80)),
    "O": ("Resident services, repair and other services", "居民服务、修理和其他服务业", range(80, 83)),
    "P": ("Education", "教育", range(83, 84)),
    "Q": ("Health and social work", "卫生和社会工作", range(84, 86)),
    "R": ("Culture, sports and entertainment", "文化、体育和娱乐业", range(86, 91)),
    "S": ("Public administration, social security and social organisations", "公共管理、社会保障和社会组织",
          range(91, 97)),
    "T": ("International organisations", "国际组织", range(97, 98)),
}

# Field key -> (English label, Chinese label); the order is the export column order.
FIELDS: dict[str, tuple[str, str]] = {
    "customer_type": ("Customer type", "客户类型"),
    "name": ("Name", "客户名称"),
    "industry": ("Industry", "所属行业"),
    "credit_code": ("Unified social credit code", "统一社会信用代码"),
    "id_number": ("ID number", "身份证号"),
    "contact_person": ("Contact person", "联系人"),
    "contact_title": ("Contact title", "联系人职务"),
    "phone": ("Phone", "联系电话"),
    "email": ("E-mail", "电子邮箱"),
    "first_contact_date": ("First contact date", "首次接触日期"),
    "need_types": ("Need types", "需求类型"),
    "source": ("Source", "客户来源"),
    "notes": ("Notes", "备注"),
    "annual_spend": ("Annual spend (CNY)", "年消费额（元）"),
    "has_inquiries": ("Has inquiries", "有咨询"),
    "strategic_value": ("Strategic value", "战略价值"),
    "account_manager": ("Account manager", "客户经理"),
    "birthday": ("Birthday", "生日"),
    "signing_date": ("Signing date", "签约日期"),
}
REQUIRED = ("customer_type", "name", "phone")
CONTACT_FIELDS = ("phone", "email", "contact_person", "contact_title")
PII_FIELDS = ("phone", "email", "credit_code", "id_number", "contact_person", "birthday")
_MERGE_FILL = ("industry", "credit_code", "id_number", "contact_person", "contact_title", "email",
               "first_contact_date", "source", "annual_spend", "strategic_value", "account_manager", "birthday",
               "signing_date")


# ---------------------------------------------------------------------------------- tables


class Customer(Base):
    """One customer (enterprise or individual) with its computed tier and revisit schedule."""

    __tablename__ = "customers"
    __table_args__ = (
        Index("ux_customers_credit_code_active", "credit_code", unique=True,
              sqlite_where=text("status = 'active' AND credit_code IS NOT NULL"),
              postgresql_where=text("status = 'active' AND credit_code IS NOT NULL")),
        Index("ux_customers_id_number_active", "id_number", unique=True,
              sqlite_where=text("status = 'active' AND id_number IS NOT NULL"),
              postgresql_where=text("status = 'active' AND id_number IS NOT NULL")),
        Index("ux_customers_phone_key_active", "phone_key", unique=True,
              sqlite_where=text("status = 'active'"), postgresql_where=text("status = 'active'")),
        Index("ix_customers_status_due", "status", "revisit_due_at"),
        Index("ix_customers_name", "name"),
        Index("ix_customers_account_manager", "account_manager"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_type: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    industry: Mapped[str | None] = mapped_column(String(10))
    credit_code: Mapped[str | None] = mapped_column(String(18))
    id_number: Mapped[str | None] = mapped_column(String(18))
    contact_person: Mapped[str | None] = mapped_column(String(100))
    contact_title: Mapped[str | None] = mapped_column(String(100))
    phone: Mapped[str] = mapped_column(String(40))
    phone_key: Mapped[str] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(254))
    first_contact_date: Mapped[date | None] = mapped_column(Date)
    need_types: Mapped[list] = mapped_column(JSON, default=list)
    source: Mapped[str | None] = mapped_column(String(30))
    notes: Mapped[str | None] = mapped_column(Text)
    annual_spend: Mapped[int | None] = mapped_column(BigInteger)  # whole CNY
    has_inquiries: Mapped[bool] = mapped_column(Boolean, default=False)
    strategic_value: Mapped[str | None] = mapped_column(String(1))
    tier: Mapped[str | None] = mapped_column(String(30))
    account_manager: Mapped[str | None] = mapped_column(String(150))
    birthday: Mapped[date | None] = mapped_column(Date)
    signing_date: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), default="active")  # active | merged
    merged_into: Mapped[int | None] = mapped_column(BigInteger)
    revisit_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_revisit_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_contact_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(200))


class CustomerContact(Base):
    """One contact with a customer: a revisit, ticket, complaint, survey, greeting or note."""

    __tablename__ = "customer_contacts"
    __table_args__ = (Index("ix_customer_contacts_customer_at", "customer_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    original_customer_id: Mapped[int | None] = mapped_column(BigInteger)  # set when moved by a merge
    kind: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    summary: Mapped[str] = mapped_column(Text)
    instance_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    by: Mapped[str | None] = mapped_column("by_user", String(200))
    details: Mapped[dict | None] = mapped_column(JSON)


class CustomerMerge(Base):
    """A merge of a duplicate into the customer kept: both records and histories are kept."""

    __tablename__ = "customer_merges"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kept_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    dropped_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    by: Mapped[str | None] = mapped_column("by_user", String(200))
    filled_fields: Mapped[list] = mapped_column(JSON, default=list)
    moved_contacts: Mapped[int] = mapped_column(Integer, default=0)
    kept_before: Mapped[dict] = mapped_column(JSON)
    dropped_snapshot: Mapped[dict] = mapped_column(JSON)


class DuplicateCustomer(Conflict):
    """The data matches existing customers (same credit code, ID number or phone): merge instead."""

    def __init__(self, matches: list[dict]):
        self.matches = matches
        parts = [f"customer #{m['id']} '{m['name']}' ({', '.join(m['reasons'])})" for m in matches]
        hint = (f"update #{matches[0]['id']} instead, or merge duplicates with "
                "'careflow customers merge KEEP_ID DROP_ID'")
        super().__init__(f"duplicate of {' and '.join(parts)}; {hint}")


# ----------------------------------------------------------------------------- validation

_CC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
MOBILE_RE = re.compile(r"^1[3-9]\d{9}$")
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,150}$")
_DATE_RE = re.compile(r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?$")
_SPLIT_RE = re.compile(r"[,;，；、|/]+")


def local_today(now: datetime | None = None) -> date:
    """Today's date in China (where "born in the future" and "first contact tomorrow" are judged)."""
    return (now or utcnow()).astimezone(LOCAL_TZ).date()


def credit_code_check_char(first17: str) -> str:
    """The GB 32100-2015 check character of the first 17 characters of a credit code."""
    total = sum(_CC_CHARS.index(c) * w for c, w in zip(first17, _CC_WEIGHTS, strict=True))
    return _CC_CHARS[(31 - total % 31) % 31]


def credit_code_problem(code: str) -> str | None:
    """Why ``code`` is not a valid unified social credit code, or None if it is."""
    if len(code) != 18:
        return f"must be 18 characters, got {len(code)}"
    bad = sorted({c for c in code if c not in _CC_CHARS})
    if bad:
        return f"contains {''.join(bad)!r}; only digits and capital letters except I, O, Z, S, V are used"
    if not code[2:8].isdigit():
        return "characters 3-8 must be the 6-digit administrative division code"
    expected = credit_code_check_char(code[:17])
    if code[17] != expected:
        return f"check character is wrong (GB 32100-2015 gives '{expected}', not '{code[17]}'); check for typos"
    return None


def id_number_check_char(first17: str) -> str:
    """The GB 11643-1999 check character of the first 17 digits of a resident ID number."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def id_number_problem(number: str, today: date | None = None) -> str | None:
    """Why ``number`` is not a valid 18-digit resident ID number, or None if it is."""
    if len(number) != 18:
        return f"must be 18 characters, got {len(number)}"
    if not number[:17].isdigit() or not (number[17].isdigit() or number[17] == "X"):
        return "must be 17 digits followed by a digit or X"
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return f"digits 7-14 are not a valid birth date ({number[6:14]})"
    if born.year < 1900 or born > (today or local_today()):
        return f"birth date {born.isoformat()} is not plausible"
    expected = id_number_check_char(number[:17])
    if number[17] != expected:
        return f"check digit is wrong (GB 11643 gives '{expected}', not '{number[17]}'); check for typos"
    return None


def normalize_phone(raw: str) -> tuple[str, str]:
    """``(display, key)`` of a mainland mobile, landline or 400/800 number; ``ValueError`` if it is none.

    ``+86 138 0000 0000`` -> ``('13800000000', '13800000000')``; ``(010) 1234-5678 转 12`` ->
    ``('010-12345678-12', '0101234567812')``. The key (digits only) finds duplicates.
    """
    s = unicodedata.normalize("NFKC", str(raw)).strip()
    if not s:
        raise ValueError("is empty")
    ext = ""
    m = re.search(r"(?:转|分机|ext\.?|x|#)\s*(\d{1,6})\s*$", s, re.IGNORECASE)
    if m:
        ext, s = m.group(1), s[:m.start()]
    compact = re.sub(r"[\s\-()（）.]", "", s)
    international = False
    for prefix in ("+86", "0086"):
        if compact.startswith(prefix):
            compact, international = compact[len(prefix):], True
    if compact.startswith("86") and len(compact) == 13 and MOBILE_RE.match(compact[2:]):
        compact = compact[2:]
    if not compact.isdigit():
        raise ValueError("may only contain digits, spaces, dashes, brackets and a +86 prefix")
    if MOBILE_RE.match(compact) and not ext:
        return compact, compact
    if re.fullmatch(r"[48]00\d{7}", compact):
        display = f"{compact[:3]}-{compact[3:6]}-{compact[6:]}"
        return (display + (f"-{ext}" if ext else "")), compact + ext
    if international and not compact.startswith("0"):
        compact = "0" + compact
    if compact.startswith("0") and len(compact) >= 10:
        area_len = 3 if compact[1] in "12" else 4
        area, local = compact[:area_len], compact[area_len:]
        if 7 <= len(local) <= 8 and local[0] != "0":
            display = f"{area}-{local}" + (f"-{ext}" if ext else "")
            return display, area + local + ext
    raise ValueError("is not a mainland mobile number (11 digits starting 13-19) or a landline with area "
                     "code (e.g. 010-12345678)")


def normalize_email(raw: str) -> str:
    """An e-mail address with the domain lower-cased; ``ValueError`` if it does not look like one."""
    s = unicodedata.normalize("NFKC", str(raw)).strip()
    if len(s) > 254 or not _EMAIL_RE.match(s):
        raise ValueError("is not an e-mail address like name@example.com")
    local, _, domain = s.rpartition("@")
    return f"{local}@{domain.lower()}"


def parse_date(value: Any) -> date:
    """A date from a ``date``, ``2024-03-15``, ``2024/3/15``, ``2024.3.15`` or ``2024年3月15日``."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    s = unicodedata.normalize("NFKC", str(value)).strip()
    m = _DATE_RE.match(s)
    if not m:
        raise ValueError("is not a date like 2024-03-15")
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise ValueError(f"{s} is not a valid date") from None


def parse_money(value: Any) -> int:
    """Whole CNY from ``12000``, ``"¥12,000"``, ``"1.2万"`` or ``"12000元"``; ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError("must be an amount in CNY")
    if isinstance(value, int | float | Decimal):
        amount = Decimal(str(value))
    else:
        s = unicodedata.normalize("NFKC", str(value)).strip().replace(",", "").replace(" ", "")
        s = re.sub(r"^(¥|CNY|RMB)|(元|CNY|RMB)$", "", s, flags=re.IGNORECASE)
        factor = Decimal(1)
        if s.endswith("万"):
            s, factor = s[:-1], Decimal(10_000)
        try:
            amount = Decimal(s) * factor
        except InvalidOperation:
            raise ValueError("must be an amount in CNY, e.g. 120000 or 12万") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a positive amount in CNY")
    if amount > Decimal(10) ** 13:
        raise ValueError("is implausibly large")
    return int(amount.to_integral_value())


def parse_bool(value: Any) -> bool:
    """Yes/no from a bool or ``yes/no/true/false/1/0/是/否/有/无``."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "y", "是", "有", "t"):
        return True
    if s in ("0", "false", "no", "n", "否", "无", "没有", "f", ""):
        return False
    raise ValueError("must be yes or no")


def _vocab(value: Any, vocab: dict[str, tuple[str, ...]], what: str) -> str:
    s = unicodedata.normalize("NFKC", str(value)).strip()
    for key, labels in vocab.items():
        if s.lower() == key.lower() or any(s.lower() == str(label).lower() for label in labels[:2]):
            return key
    raise ValueError(f"{s!r} is not a {what}; use one of: {', '.join(vocab)}")


def parse_industry(value: Any) -> str:
    """A GB/T 4754-2017 section letter (``C``) or section + division (``C39``)."""
    s = unicodedata.normalize("NFKC", str(value)).strip()
    up = s.upper()
    if up in INDUSTRIES:
        return up
    m = re.fullmatch(r"([A-T])?\s*(\d{2})(\d*)", up)
    if m:
        division = int(m[2])
        section = next((k for k, v in INDUSTRIES.items() if division in v[2]), None)
        if section and (m[1] is None or m[1] == section):
            return f"{section}{m[2]}"
        if section:
            raise ValueError(f"division {m[2]} belongs to section {section}, not {m[1]}")
    for key, (en, zh, _) in INDUSTRIES.items():
        if s == zh or s.lower() == en.lower():
            return key
    raise ValueError("is not a GB/T 4754-2017 industry: give a section letter A-T (e.g. C = 制造业) or a "
                     "division like C39")


def _clean_text(value: Any, max_len: int) -> str:
    s = unicodedata.normalize("NFKC", str(value))
    s = re.sub(r"\s+", " ", s).strip()
    if len(s) > max_len:
        raise ValueError(f"is longer than {max_len} characters")
    return s


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def validate_customer(data: Mapping[str, Any], today: date | None = None) -> dict[str, Any]:
    """Check and normalise a customer record; return the clean fields or raise ``ValidationFailed``.

    Every problem names its field. Blank values count as absent. ``phone_key`` is added
    (for duplicate detection) and an individual's birthday is taken from the ID number
    when not given.
    """
    today = today or local_today()
    problems: list[Problem] = []
    clean: dict[str, Any] = {}

    def bad(key: str, message: str, hint: str | None = None) -> None:
        problems.append(Problem(message, field=key, hint=hint))

    for key in data:
        if key == "tier":
            bad(key, "the tier is computed by the tier rule, not entered",
                "set annual_spend (or strategic_value for the A/B/C scheme) instead")
        elif key not in FIELDS:
            bad(key, "unknown field", f"known fields: {', '.join(FIELDS)}")
    for key in REQUIRED:
        if _blank(data.get(key)):
            bad(key, "is required")

    def take(key: str, parse: Callable[[Any], Any]) -> None:
        value = data.get(key)
        if _blank(value):
            return
        try:
            clean[key] = parse(value)
        except ValueError as err:
            bad(key, str(err))

    take("customer_type", lambda v: _vocab(v, CUSTOMER_TYPES, "customer type"))
    take("name", lambda v: _clean_text(v, 200))
    take("industry", parse_industry)
    take("contact_person", lambda v: _clean_text(v, 100))
    take("contact_title", lambda v: _clean_text(v, 100))
    take("notes", lambda v: str(v).strip()[:4000])
    take("annual_spend", parse_money)
    take("has_inquiries", parse_bool)
    take("strategic_value", lambda v: _vocab(v, STRATEGIC_VALUES, "strategic value"))
    take("source", lambda v: _vocab(v, SOURCES, "source"))
    take("email", normalize_email)
    for key in ("first_contact_date", "birthday", "signing_date"):
        take(key, parse_date)
    for key in ("first_contact_date", "birthday", "signing_date"):
        if key in clean and clean[key] > today:
            bad(key, f"{clean[key].isoformat()} is in the future")

    def account_manager(v: Any) -> str:
        s = str(v).strip()
        if not _USERNAME_RE.match(s):
            raise ValueError("must be a username (letters, digits, '.', '_', '-', '@')")
        return s

    take("account_manager", account_manager)

    def need_types(v: Any) -> list[str]:
        items = v if isinstance(v, list | tuple) else _SPLIT_RE.split(str(v))
        out: list[str] = []
        for item in items:
            if str(item).strip():
                key = _vocab(item, NEED_TYPES, "need type")
                if key not in out:
                    out.append(key)
        return out

    take("need_types", need_types)

    phone = data.get("phone")
    if not _blank(phone):
        try:
            clean["phone"], clean["phone_key"] = normalize_phone(phone)
        except ValueError as err:
            bad("phone", str(err), "e.g. 13812345678, +86 138 1234 5678 or 010-12345678")

    ctype = clean.get("customer_type")
    code = data.get("credit_code")
    if not _blank(code):
        code = unicodedata.normalize("NFKC", str(code)).strip().upper().replace(" ", "")
        why = credit_code_problem(code)
        if why:
            bad("credit_code", why)
        elif ctype == "individual":
            bad("credit_code", "an individual customer has no credit code",
                "use customer_type 'enterprise', or give id_number")
        else:
            clean["credit_code"] = code
    elif ctype == "enterprise":
        bad("credit_code", "is required for an enterprise", "the 18-character code on the business licence")
    number = data.get("id_number")
    if not _blank(number):
        number = unicodedata.normalize("NFKC", str(number)).strip().upper().replace(" ", "")
        why = id_number_problem(number, today)
        if why:
            bad("id_number", why)
        elif ctype == "enterprise":
            bad("id_number", "an enterprise is identified by its credit code, not an ID number",
                "use customer_type 'individual', or put the person in contact_person")
        else:
            clean["id_number"] = number
            if "birthday" not in clean and _blank(data.get("birthday")):
                clean["birthday"] = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    if problems:
        raise ValidationFailed(problems)
    clean.setdefault("need_types", [])
    clean.setdefault("has_inquiries", False)
    return clean


# ------------------------------------------------------------------------------- masking


def mask_phone(phone: str | None) -> str | None:
    """``13800000000`` -> ``138****0000``; ``010-12345678`` -> ``010-****5678`` (blank stays blank)."""
    return pii.mask_phone(phone, keep_area_code=True) if phone else phone


def mask_email(email: str | None) -> str | None:
    """``zhang.san@example.com`` -> ``z***@example.com`` (blank stays blank)."""
    return pii.mask_email(email) if email else email


def mask_id(value: str | None) -> str | None:
    """A credit code or ID number with all but the first and last four characters hidden."""
    return pii.mask_id_number(value, head=4) if value else value


def mask_name(name: str | None) -> str | None:
    """A person's name with all but the first character hidden (``张三丰`` -> ``张**``)."""
    if not name:
        return name
    return name[:1] + "*" * max(len(name) - 1, 1)


# -------------------------------------------------------------------------------- helpers


def _active_step(session: Session) -> step_mod.Step | None:
    try:
        step = step_mod.current_step()
    except RuntimeError:
        return None
    return step if step.session is session else None


def _now(session: Session, now: datetime | None) -> datetime:
    if now is not None:
        return now
    step = _active_step(session)
    return step.now if step else utcnow()


def audit(session: Session, action: str, *, actor: str, at: datetime, details: dict,
          instance_id: int | None = None) -> None:
    """Audit a registry event: through the current step if it uses ``session``, else appended now."""
    step = _active_step(session)
    if step is not None:
        step.audit(action, actor=actor, details=details)
        return
    cause = "system" if actor in ("system", "timer") else "user"
    append_events(session, [AuditEvent(action=action, actor=actor, cause=cause, at=at, instance_id=instance_id,
                                       details=details)])


def _iso(value: date | datetime | None) -> str | None:
    return value.isoformat() if value else None


def customer_input(c: Customer) -> dict[str, Any]:
    """The registration fields of a customer, as ``validate_customer`` takes them."""
    return {k: getattr(c, k) for k in FIELDS if not _blank(getattr(c, k))}


def tier_input(c: Customer | Mapping[str, Any]) -> dict[str, Any]:
    """What the tier hook sees of a customer (``annual_spend`` in CNY, ``has_inquiries``, ``strategic_value``...)."""
    get = c.get if isinstance(c, Mapping) else (lambda k, d=None: getattr(c, k, d))
    spend = get("annual_spend")
    return {
        "id": get("id"), "customer_type": get("customer_type"), "name": get("name"), "industry": get("industry"),
        "annual_spend": float(spend) if spend is not None else None, "has_inquiries": bool(get("has_inquiries")),
        "strategic_value": get("strategic_value"), "need_types": list(get("need_types") or []),
        "source": get("source"), "tier": get("tier"),
        "first_contact_date": _iso(get("first_contact_date")) if not isinstance(get("first_contact_date"), str)
        else get("first_contact_date"),
    }


def compute_tier(pm, customer: Customer | Mapping[str, Any]) -> str | None:
    """The tier the ``careflow_customer_tier`` hook gives for a customer record."""
    result = pm.hook.careflow_customer_tier(customer=tier_input(customer))
    if isinstance(result, list):  # tolerate a non-firstresult spec
        result = next((r for r in result if r), None)
    return str(result) if result else None


def customer_to_dict(c: Customer) -> dict[str, Any]:
    """A customer as JSON-ready data: raw fields plus a ``masked`` copy of the personal ones."""
    out: dict[str, Any] = {"id": c.id}
    for key in FIELDS:
        value = getattr(c, key)
        out[key] = _iso(value) if isinstance(value, date) else value
    out.update({
        "tier": c.tier, "status": c.status, "merged_into": c.merged_into,
        "revisit_due_at": _iso(c.revisit_due_at), "last_revisit_at": _iso(c.last_revisit_at),
        "last_contact_at": _iso(c.last_contact_at), "created_at": _iso(c.created_at),
        "updated_at": _iso(c.updated_at), "created_by": c.created_by,
        "customer_type_label": _labels(CUSTOMER_TYPES, c.customer_type),
    })
    out["masked"] = masked_fields(out)
    return out


def _labels(vocab: Mapping[str, tuple[str, ...]], key: str | None) -> dict[str, str | None]:
    en, zh = vocab.get(key or "", (key, key))[:2]
    return {"en": en, "zh": zh}


def masked_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The personal fields of a customer dict, masked as agents without access see them."""
    individual = record.get("customer_type") == "individual"
    return {
        "phone": mask_phone(record.get("phone")), "email": mask_email(record.get("email")),
        "credit_code": mask_id(record.get("credit_code")), "id_number": mask_id(record.get("id_number")),
        "contact_person": mask_name(record.get("contact_person")),
        "name": mask_name(record.get("name")) if individual else record.get("name"),
        "birthday": "****-**-**" if record.get("birthday") else None,
    }


def _load(session: Session, customer_id: Any, *, lock: bool = False) -> Customer:
    try:
        cid = int(customer_id)
    except (TypeError, ValueError):
        raise NotFound(f"no customer {customer_id!r} (customer ids are numbers)") from None
    q = select(Customer).where(Customer.id == cid)
    if lock and session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    c = session.scalar(q)
    if c is None:
        raise NotFound(f"no customer {cid}")
    return c


def resolve_customer(session: Session, customer_id: Any, *, lock: bool = False) -> Customer:
    """The active customer for an id, following merges (a merged id leads to the customer kept)."""
    c = _load(session, customer_id, lock=lock)
    for _ in range(20):
        if c.status != "merged" or c.merged_into is None:
            return c
        c = _load(session, c.merged_into, lock=lock)
    raise Conflict(f"customer {customer_id}: merge chain too long")


# ---------------------------------------------------------------------------- reading API


def get_customer(session: Session, customer_id: Any) -> dict[str, Any]:
    """One customer as a dict (raw personal fields and a ``masked`` copy); ``NotFound`` if missing.

    A merged customer is returned as it was, with ``status='merged'`` and ``merged_into``.
    """
    return customer_to_dict(_load(session, customer_id))


def list_contacts(session: Session, customer_id: Any, limit: int = 500) -> list[dict[str, Any]]:
    """Every contact recorded with a customer (newest first), including those of customers merged into it."""
    c = _load(session, customer_id)
    rows = session.scalars(select(CustomerContact).where(CustomerContact.customer_id == c.id)
                           .order_by(CustomerContact.at.desc(), CustomerContact.id.desc()).limit(limit))
    return [contact_to_dict(r) for r in rows]


def contact_to_dict(r: CustomerContact) -> dict[str, Any]:
    """A contact row as JSON-ready data."""
    return {"id": r.id, "customer_id": r.customer_id, "original_customer_id": r.original_customer_id,
            "kind": r.kind, "at": _iso(r.at), "summary": r.summary, "instance_id": r.instance_id, "by": r.by,
            "details": r.details}


def _search_query(q: str | None, *, tier: str | None, account_manager: str | None, include_merged: bool):
    stmt = select(Customer)
    if not include_merged:
        stmt = stmt.where(Customer.status == "active")
    if tier:
        stmt = stmt.where(Customer.tier == tier)
    if account_manager:
        stmt = stmt.where(Customer.account_manager == account_manager)
    term = unicodedata.normalize("NFKC", q or "").strip()
    if term:
        like = f"%{term.lower()}%"
        conds = [func.lower(Customer.name).like(like), func.lower(Customer.contact_person).like(like),
                 func.lower(Customer.email).like(like), Customer.credit_code == term.upper(),
                 Customer.id_number == term.upper()]
        digits = re.sub(r"\D", "", term)
        if len(digits) >= 4:
            conds.append(Customer.phone_key.like(f"%{digits}%"))
        if term.isdigit():
            conds.append(Customer.id == int(term))
        stmt = stmt.where(or_(*conds))
    return stmt


def search_customers(session: Session, q: str | None = None, limit: int = 50, offset: int = 0, *,
                     tier: str | None = None, account_manager: str | None = None,
                     include_merged: bool = False) -> list[dict[str, Any]]:
    """Customers matching ``q`` (name, contact, e-mail, phone digits, credit code/ID number, id), by name.

    Each item is ``customer_to_dict`` (raw fields plus ``masked``). ``count_customers``
    gives the total for paging.
    """
    stmt = _search_query(q, tier=tier, account_manager=account_manager, include_merged=include_merged)
    stmt = stmt.order_by(Customer.name, Customer.id).limit(max(1, min(int(limit), 1000))).offset(max(0, int(offset)))
    return [customer_to_dict(c) for c in session.scalars(stmt)]


def count_customers(session: Session, q: str | None = None, *, tier: str | None = None,
                    account_manager: str | None = None, include_merged: bool = False) -> int:
    """How many customers ``search_customers`` would find without paging."""
    stmt = _search_query(q, tier=tier, account_manager=account_manager, include_merged=include_merged)
    return session.scalar(select(func.count()).select_from(stmt.subquery())) or 0


# ------------------------------------------------------------------------------ writing API


def find_duplicates(session: Session, clean: Mapping[str, Any], exclude_id: int | None = None) -> list[dict]:
    """Active customers with the same credit code, ID number or phone as ``clean`` (validated data)."""
    conds = []
    if clean.get("credit_code"):
        conds.append(Customer.credit_code == clean["credit_code"])
    if clean.get("id_number"):
        conds.append(Customer.id_number == clean["id_number"])
    if clean.get("phone_key"):
        conds.append(Customer.phone_key == clean["phone_key"])
    if not conds:
        return []
    stmt = select(Customer).where(Customer.status == "active", or_(*conds)).order_by(Customer.id)
    if exclude_id is not None:
        stmt = stmt.where(Customer.id != exclude_id)
    out = []
    for c in session.scalars(stmt):
        reasons = []
        if clean.get("credit_code") and c.credit_code == clean["credit_code"]:
            reasons.append("same credit code")
        if clean.get("id_number") and c.id_number == clean["id_number"]:
            reasons.append("same ID number")
        if clean.get("phone_key") and c.phone_key == clean["phone_key"]:
            reasons.append(f"same phone {mask_phone(c.phone)}")
        out.append({"id": c.id, "name": c.name, "reasons": reasons})
    return out


def add_customer(session: Session, data: Mapping[str, Any], *, pm, actor: str = "system",
                 now: datetime | None = None, on_duplicate: str = "error") -> Customer:
    """Register a customer: validate, refuse duplicates, compute the tier and the revisit schedule.

    ``on_duplicate='merge'``: when the data matches exactly one existing customer, that
    customer is updated with the given fields instead (audited). Raises
    ``ValidationFailed`` or ``DuplicateCustomer``.
    """
    now = _now(session, now)
    clean = validate_customer(data, local_today(now))
    dups = find_duplicates(session, clean)
    if dups:
        if on_duplicate == "merge" and len(dups) == 1:
            return update_customer(session, dups[0]["id"], dict(data), pm=pm, actor=actor, now=now)
        raise DuplicateCustomer(dups)
    c = _insert_customer(session, clean, pm=pm, actor=actor, now=now)
    event = _created_event(c, actor, now)
    audit(session, event.action, actor=actor, at=now, details=event.details)
    return c


def _insert_customer(session: Session, clean: dict[str, Any], *, pm, actor: str, now: datetime,
                     tier: str | None = None) -> Customer:
    """Insert validated, duplicate-checked data (in a savepoint: a concurrent twin raises ``DuplicateCustomer``)."""
    c = Customer(**clean, status="active", created_at=now, updated_at=now, created_by=actor)
    c.tier = tier or compute_tier(pm, c)
    from engine.revisits import reschedule

    reschedule(c, now)
    try:
        with session.begin_nested():
            session.add(c)
            session.flush()
    except IntegrityError:
        raise DuplicateCustomer(find_duplicates(session, clean) or
                                [{"id": 0, "name": clean.get("name"), "reasons": ["registered concurrently"]}]) \
            from None
    return c


def _created_event(c: Customer, actor: str, now: datetime) -> AuditEvent:
    return AuditEvent(action="customer_created", actor=actor, cause="system" if actor in ("system", "timer") else "user",
                      at=now, details={"customer_id": c.id, "customer_type": c.customer_type, "tier": c.tier,
                                       "source": c.source, "account_manager": c.account_manager})


def _audit_change(key: str, old: Any, new: Any, *, individual: bool) -> list:
    if key == "notes":
        return ["(changed)"]
    if key == "name" and individual:
        return [mask_name(old), mask_name(new)]
    if key in PII_FIELDS:
        return [_mask_value(key, old), _mask_value(key, new)]
    return [_iso(v) if isinstance(v, date) else v for v in (old, new)]


def update_customer(session: Session, customer_id: Any, changes: Mapping[str, Any], *, pm, actor: str = "system",
                    now: datetime | None = None) -> Customer:
    """Change fields of a customer (``None``/blank clears an optional field); re-tier and reschedule.

    Contact changes (phone, e-mail, contact person/title) are audited with masked values;
    other changes with their values (personal ones masked). Raises ``ValidationFailed``,
    ``DuplicateCustomer``, ``NotFound`` or ``Conflict`` (merged customer).
    """
    now = _now(session, now)
    c = _load(session, customer_id, lock=True)
    if c.status != "active":
        raise Conflict(f"customer #{c.id} was merged into #{c.merged_into}; change #{c.merged_into} instead")
    merged = customer_input(c)
    for key, value in changes.items():
        if key == "tier" and (_blank(value) or str(value) == (c.tier or "")):
            continue
        merged[key] = value
    clean = validate_customer({k: v for k, v in merged.items() if not _blank(v)}, local_today(now))
    dups = find_duplicates(session, clean, exclude_id=c.id)
    if dups:
        raise DuplicateCustomer(dups)
    changed: dict[str, tuple[Any, Any]] = {}
    for key in (*FIELDS, "phone_key"):
        new = clean.get(key, [] if key == "need_types" else (False if key == "has_inquiries" else None))
        old = getattr(c, key)
        if old != new:
            changed[key] = (old, new)
            setattr(c, key, new)
    if not changed:
        return c
    c.updated_at = now
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise DuplicateCustomer(find_duplicates(session, clean, exclude_id=c.id)) from None
    contact = {k: [_mask_value(k, v[0]), _mask_value(k, v[1])] for k, v in changed.items() if k in CONTACT_FIELDS}
    individual = c.customer_type == "individual"
    other = {k: _audit_change(k, *v, individual=individual)
             for k, v in changed.items() if k not in CONTACT_FIELDS and k != "phone_key"}
    if contact:
        audit(session, "customer_contact_changed", actor=actor, at=now,
              details={"customer_id": c.id, "changes": contact})
    if other:
        audit(session, "customer_updated", actor=actor, at=now, details={"customer_id": c.id, "changes": other})
    refresh_tier(session, c, pm=pm, actor=actor, now=now)
    return c


def _mask_value(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key == "phone":
        return mask_phone(value)
    if key == "email":
        return mask_email(value)
    if key in ("credit_code", "id_number"):
        return mask_id(value)
    if key == "contact_person":
        return mask_name(value)
    if key == "birthday":
        return "****-**-**"
    return value


def refresh_tier(session: Session, c: Customer, *, pm, actor: str = "system", now: datetime | None = None) -> bool:
    """Recompute a customer's tier with the tier hook; on a change, audit it and move the revisit schedule."""
    now = _now(session, now)
    new = compute_tier(pm, c)
    if new == c.tier:
        return False
    old, c.tier = c.tier, new
    old_due = c.revisit_due_at
    from engine.revisits import reschedule

    reschedule(c, now)
    c.updated_at = now
    audit(session, "customer_tier_changed", actor=actor, at=now,
          details={"customer_id": c.id, "from": old, "to": new, "revisit_due_before": _iso(old_due),
                   "revisit_due_at": _iso(c.revisit_due_at)})
    return True


def retier_all(session: Session, *, pm, actor: str = "system", now: datetime | None = None) -> list[dict]:
    """Re-tier every active customer (after the tier rule changed); returns ``[{id, from, to}]`` of changes."""
    now = _now(session, now)
    out = []
    for c in session.scalars(select(Customer).where(Customer.status == "active").order_by(Customer.id)):
        before = c.tier
        if refresh_tier(session, c, pm=pm, actor=actor, now=now):
            out.append({"id": c.id, "from": before, "to": c.tier})
    return out


def record_contact(session: Session, customer_id: Any, kind: str, summary: str, *, by: str | None = None,
                   at: datetime | None = None, instance_id: int | None = None,
                   details: dict | None = None) -> CustomerContact:
    """Record a contact with a customer (a merged id records it on the customer kept)."""
    if kind not in CONTACT_KINDS:
        raise ValidationFailed([Problem(f"unknown contact kind {kind!r}", field="kind",
                                        hint=f"use one of: {', '.join(CONTACT_KINDS)}")])
    summary = str(summary or "").strip()
    if not summary:
        raise ValidationFailed([Problem("a contact needs a summary (no promise without a record)", field="summary")])
    step = _active_step(session)
    at = at or (step.now if step else utcnow())
    if instance_id is None and step is not None:
        instance_id = step.instance_id
    if by is None and step is not None:
        by = step.actor
    c = resolve_customer(session, customer_id)
    row = CustomerContact(customer_id=c.id, kind=kind, at=at, summary=summary[:4000], instance_id=instance_id,
                          by=by, details=details)
    session.add(row)
    if c.last_contact_at is None or c.last_contact_at < at:
        c.last_contact_at = at
    session.flush()
    return row


def merge_customers(session: Session, keep_id: Any, drop_id: Any, *, pm, actor: str = "system",
                    now: datetime | None = None) -> CustomerMerge:
    """Merge customer ``drop_id`` into ``keep_id``: fill the kept record's gaps, move the contacts.

    Both records stay (the dropped one with ``status='merged'``, ``merged_into``); a
    ``CustomerMerge`` row keeps snapshots of both. Audited as ``customer_merged``.
    """
    now = _now(session, now)
    if str(keep_id) == str(drop_id):
        raise Conflict("a customer cannot be merged into itself")
    keep = _load(session, keep_id, lock=True)
    drop = _load(session, drop_id, lock=True)
    for c in (keep, drop):
        if c.status != "active":
            raise Conflict(f"customer #{c.id} was already merged into #{c.merged_into}")
    kept_before = _snapshot(keep)
    dropped = _snapshot(drop)
    drop.status, drop.merged_into, drop.updated_at = "merged", keep.id, now
    session.flush()  # the dropped row leaves the unique indexes before its keys move over
    filled = []
    for key in _MERGE_FILL:
        if _blank(getattr(keep, key)) and not _blank(getattr(drop, key)):
            setattr(keep, key, getattr(drop, key))
            filled.append(key)
    needs = list(keep.need_types or [])
    for n in drop.need_types or []:
        if n not in needs:
            needs.append(n)
    if needs != list(keep.need_types or []):
        keep.need_types = needs
        filled.append("need_types")
    if drop.notes and drop.notes not in (keep.notes or ""):
        keep.notes = ((keep.notes + "\n") if keep.notes else "") + f"[#{drop.id}] {drop.notes}"
        filled.append("notes")
    if drop.first_contact_date and keep.first_contact_date and drop.first_contact_date < keep.first_contact_date:
        keep.first_contact_date = drop.first_contact_date
        filled.append("first_contact_date")
    keep.has_inquiries = bool(keep.has_inquiries or drop.has_inquiries)
    for attr in ("last_revisit_at", "last_contact_at"):
        values = [v for v in (getattr(keep, attr), getattr(drop, attr)) if v]
        setattr(keep, attr, max(values) if values else None)
    moved = session.execute(
        update(CustomerContact).where(CustomerContact.customer_id == drop.id)
        .values(customer_id=keep.id,
                original_customer_id=func.coalesce(CustomerContact.original_customer_id, drop.id))
        .execution_options(synchronize_session=False)).rowcount or 0
    keep.updated_at = now
    merge = CustomerMerge(kept_id=keep.id, dropped_id=drop.id, at=now, by=actor, filled_fields=filled,
                          moved_contacts=moved, kept_before=kept_before, dropped_snapshot=dropped)
    session.add(merge)
    session.flush()
    if not refresh_tier(session, keep, pm=pm, actor=actor, now=now):
        from engine.revisits import reschedule

        reschedule(keep, now)
    record_contact(session, keep.id, "note", f"Customer #{drop.id} merged into this record "
                   f"({moved} contact(s) moved{', filled: ' + ', '.join(filled) if filled else ''}).",
                   by=actor, at=now, details={"merge_id": merge.id, "dropped_id": drop.id})
    audit(session, "customer_merged", actor=actor, at=now,
          details={"kept_id": keep.id, "dropped_id": drop.id, "filled_fields": filled, "moved_contacts": moved,
                   "merge_id": merge.id})
    return merge


def _snapshot(c: Customer) -> dict[str, Any]:
    d = customer_to_dict(c)
    d.pop("masked", None)
    d.pop("customer_type_label", None)
    return d


# ----------------------------------------------------------------------------- import/export

HEADER_ALIASES: dict[str, str] = {}
for _key, (_en, _zh) in FIELDS.items():
    for _alias in (_key, _en, _zh):
        HEADER_ALIASES[unicodedata.normalize("NFKC", _alias).lower()] = _key
for _alias, _key in {
    "type": "customer_type", "客户类别": "customer_type", "名称": "name", "公司名称": "name", "客户姓名": "name",
    "行业": "industry", "信用代码": "credit_code", "统一信用代码": "credit_code", "身份证": "id_number",
    "身份证号码": "id_number", "职务": "contact_title", "职位": "contact_title", "电话": "phone", "手机": "phone",
    "手机号": "phone", "联系方式": "phone", "邮箱": "email", "email": "email", "e-mail": "email",
    "首次接触时间": "first_contact_date", "需求": "need_types", "来源": "source", "年消费金额": "annual_spend",
    "年度消费额": "annual_spend", "年消费额": "annual_spend", "annual spend": "annual_spend", "负责人": "account_manager",
    "客户经理": "account_manager", "签约时间": "signing_date", "tier": "tier", "客户等级": "tier", "等级": "tier",
    "id": "id", "客户编号": "id", "status": "status", "状态": "status",
}.items():
    HEADER_ALIASES[unicodedata.normalize("NFKC", _alias).lower()] = _key
IGNORED_COLUMNS = ("id", "status")


@dataclass
class ImportRow:
    """The outcome of one CSV row."""

    row: int
    status: str  # created | updated | unchanged | error
    customer_id: int | None = None
    reasons: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class ImportResult:
    """What an import did: counts and the rows that were not imported."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[ImportRow] = field(default_factory=list)

    @property
    def bad(self) -> int:
        """Number of rows not imported."""
        return len(self.errors)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged, "bad": self.bad,
                "bad_rows": [{"row": e.row, "reasons": e.reasons} for e in self.errors]}


def read_csv(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Read a customer CSV (UTF-8 with or without BOM, or GB18030 as saved by Chinese Excel).

    Returns the original header and ``(row number, {field: cell})`` for each non-empty
    row; row numbers count the header as row 1, as spreadsheets do. Raises
    ``ValidationFailed`` for unknown or missing columns (nothing is imported then).
    """
    raw = Path(path).read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            content = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ValidationFailed([Problem("the file is neither UTF-8 nor GB18030 text", file=str(path))])
    try:
        dialect = csv.Sniffer().sniff(content[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(content), dialect)
    header = next(reader, None)
    if not header:
        raise ValidationFailed([Problem("the file is empty; the first row must name the columns", file=str(path))])
    keys: list[str | None] = []
    problems = []
    for col in header:
        name = unicodedata.normalize("NFKC", col).strip()
        key = HEADER_ALIASES.get(name.lower())
        if key is None and name:
            problems.append(Problem(f"unknown column {name!r}", file=str(path), field=name,
                                    hint=f"known columns: {', '.join(FIELDS)} (or their Chinese names)"))
        keys.append(key)
    missing = [k for k in REQUIRED if k not in keys]
    for k in missing:
        problems.append(Problem(f"required column {k!r} ({FIELDS[k][1]}) is missing", file=str(path), field=k))
    if problems:
        raise ValidationFailed(problems)
    rows = []
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        values = {}
        for key, cell in zip(keys, cells, strict=False):
            if key and cell.strip():
                values[key] = cell.strip()
        if len(cells) > len(keys) and any(c.strip() for c in cells[len(keys):]):
            values["__extra__"] = "|".join(cells[len(keys):])
        rows.append((number, values))
    return header, rows


def _same(c: Customer, clean: Mapping[str, Any]) -> bool:
    for key, value in clean.items():
        if key == "phone_key":
            continue
        current = getattr(c, key)
        if key == "need_types":
            if set(value or []) - set(current or []):
                return False
        elif key == "has_inquiries":
            if value and not current:
                return False
        elif current != value:
            return False
    return True


def import_customers(cf: Careflow, rows: Iterable[tuple[int, Mapping[str, str]]], *, actor: str = "system",
                     on_duplicate: str = "skip", batch_size: int = 200,
                     progress: Callable[[int], None] | None = None) -> ImportResult:
    """Import rows (from ``read_csv``): good rows are kept, bad rows are returned with their reasons.

    A row matching an existing customer (same credit code, ID number or phone) is
    ``unchanged`` when it adds nothing; otherwise it is reported as a duplicate, or, with
    ``on_duplicate='merge'``, used to update that customer. Importing the same file
    again therefore creates nothing. Each row runs in a savepoint; rows are committed in
    batches of ``batch_size``.
    """
    result = ImportResult()
    batch: list[tuple[int, Mapping[str, str]]] = []

    def flush_batch() -> None:
        if not batch:
            return
        with cf.Session() as session, session.begin():
            now = cf.now()
            events: list[AuditEvent] = []
            for number, values in batch:
                outcome = _import_row(session, cf.pm, number, values, actor=actor, now=now,
                                      on_duplicate=on_duplicate, events=events)
                if outcome.status == "error":
                    result.errors.append(outcome)
                else:
                    setattr(result, outcome.status, getattr(result, outcome.status) + 1)
            append_events(session, events)
        if progress:
            progress(len(batch))
        batch.clear()

    for item in rows:
        batch.append(item)
        if len(batch) >= batch_size:
            flush_batch()
    flush_batch()
    return result


def _import_row(session: Session, pm, number: int, values: Mapping[str, str], *, actor: str, now: datetime,
                on_duplicate: str, events: list[AuditEvent]) -> ImportRow:
    data = {k: v for k, v in values.items() if k not in IGNORED_COLUMNS and k != "__extra__"}
    out = ImportRow(row=number, status="error", values=dict(values))
    if "__extra__" in values:
        out.reasons.append("the row has more cells than the header has columns")
        return out
    claimed_tier = data.pop("tier", None)
    try:
        clean = validate_customer(data, local_today(now))
    except ValidationFailed as err:
        out.reasons = [f"{p.field}: {p.message}" if p.field else p.message for p in err.problems]
        return out
    tier = compute_tier(pm, clean)
    if claimed_tier and claimed_tier.strip() != (tier or ""):
        out.reasons.append(f"tier: the file says {claimed_tier.strip()!r} but the tier rule gives {tier!r} "
                           "from annual_spend/strategic_value; fix the row or leave the tier empty")
        return out
    dups = find_duplicates(session, clean)
    if len(dups) == 1:
        existing = session.get(Customer, dups[0]["id"])
        if _same(existing, clean):
            out.status, out.customer_id = "unchanged", existing.id
            return out
        if on_duplicate == "merge":
            try:
                with session.begin_nested():
                    update_customer(session, existing.id, data, pm=pm, actor=actor, now=now)
            except (ValidationFailed, Conflict) as err:
                out.reasons.append(f"could not update customer #{existing.id}: {err}")
                return out
            out.status, out.customer_id = "updated", existing.id
            return out
    if dups:
        desc = " and ".join(f"#{d['id']} {d['name']} ({', '.join(d['reasons'])})" for d in dups)
        hint = ("re-run with --on-duplicate merge to update it from this row" if len(dups) == 1
                else f"merge them first: careflow customers merge {dups[0]['id']} {dups[1]['id']}")
        out.reasons.append(f"duplicate of customer {desc}; not imported — {hint}")
        return out
    try:
        c = _insert_customer(session, clean, pm=pm, actor=actor, now=now, tier=tier)
    except DuplicateCustomer as err:
        out.reasons.append(str(err))
        return out
    events.append(_created_event(c, actor, now))
    out.status, out.customer_id = "created", c.id
    return out


EXPORT_COLUMNS = ("id", *FIELDS, "tier")


def export_rows(session: Session, *, unmask: bool = False, include_merged: bool = False) -> Iterator[dict[str, str]]:
    """Customers as CSV-ready rows (``EXPORT_COLUMNS``); personal fields masked unless ``unmask``."""
    stmt = select(Customer).order_by(Customer.id)
    if not include_merged:
        stmt = stmt.where(Customer.status == "active")
    for c in session.scalars(stmt.execution_options(yield_per=500)):
        d = customer_to_dict(c)
        if not unmask:
            d.update({k: v for k, v in d["masked"].items() if k in d})
        row = {}
        for col in EXPORT_COLUMNS:
            value = d.get(col)
            if isinstance(value, list):
                value = ";".join(value)
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            row[col] = "" if value is None else str(value)
        yield row
