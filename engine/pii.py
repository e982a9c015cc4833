"""Personal data in the audit trail: recognising it, keeping it out of the hash chain,
masking it for display, and erasing it (PIPL) without breaking the chain.

Phones, e-mails and ID / unified-social-credit-code numbers are recognised by the name
of the field they sit in (``phone``, ``contact_email``, ``id_number``, ``credit_code``…)
or by their shape (``13800000000``, ``a@b.cn``, an 18-character ID or credit code, also
inside free text).

Before an audit row is hashed, each such value in its ``data_diff`` / ``details`` is
replaced by a reference ``pii:<hmac>``: HMAC-SHA256 of the value under a random key of its
own. The clear value and that key live in ``audit_pii`` (audit seq + path → value), which
the chain does not cover. Reading a row puts the values back (masked unless unmasking was
asked for). Erasing a subject blanks their values *and the per-value keys*: the hashed
rows stay as they were, so the chain still verifies, and with the key gone the reference
can no longer be linked to the erased value, not even by guessing phone numbers. While
a value exists, ``careflow audit verify`` checks it against its reference.

A per-value key is deliberate: one deployment-wide HMAC key would let anyone holding it
confirm a guessed phone number against an erased reference (11 digits are quickly
enumerated), and would have to be identical on every machine writing or verifying.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import BigInteger, Index, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.errors import CareflowError, Problem, ValidationFailed
from engine.models import Base, BigId, UTCDateTime

TOKEN_PREFIX = "pii:"
TOKEN_RE = re.compile(r"pii:[0-9a-f]{64}")
ERASED = "[erased]"

# Roles allowed to see personal data unmasked in audit views and exports (each time audited).
UNMASK_ROLES = frozenset({"admin"})

# Shapes. Look-arounds keep matches off longer alphanumeric runs (hashes, UUIDs, order numbers).
_PHONE = r"(?<![0-9A-Za-z+])(?:\+?86[- ]?)?1[3-9][0-9](?:[- ]?[0-9]{4}){2}(?![0-9A-Za-z])"
_LANDLINE = r"(?<![0-9A-Za-z])0[1-9][0-9]{1,2}-[0-9]{7,8}(?![0-9A-Za-z])"
_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
_ID = (r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
       r"[0-9]{3}[0-9Xx](?![0-9A-Za-z])")
_CREDIT = r"(?<![0-9A-Za-z])[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}(?![0-9A-Za-z])"
_ANY = re.compile(f"(?P<email>{_EMAIL})|(?P<phone>{_PHONE}|{_LANDLINE})|(?P<id_number>{_ID})|"
                  f"(?P<credit_code>{_CREDIT})")
_NUMBERS = re.compile(f"(?P<phone>{_PHONE}|{_LANDLINE})|(?P<id_number>{_ID})|(?P<credit_code>{_CREDIT})")
# Every number shape holds 7 digits in a row, or 3 + 4 split by a dash or space (e-mails hold an @).
_GATE = re.compile(r"[0-9]{3}[- ]?[0-9]{4}")


@lru_cache(maxsize=8192)
def key_kind(key: str) -> str | None:
    """The kind of personal data a field of this name holds (``phone``, ``email``, ``id_number``,
    ``credit_code``), or None. ``contactPhone``, ``customer_phone``, ``手机`` … all count."""
    if not isinstance(key, str) or not key:
        return None
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()
    parts = [p for p in re.split(r"[^0-9a-z]+", snake) if p]
    words = set(parts)
    pairs = {f"{a}_{b}" for a, b in zip(parts, parts[1:], strict=False)}
    if (words & {"phone", "phones", "mobile", "tel", "telephone", "cellphone", "fax", "phonenumber"}
            or any(w.endswith(("phone", "mobile")) for w in words) or re.search("手机|电话|联系方式|传真", key)):
        return "phone"
    if words & {"email", "emails", "mailbox"} or "e_mail" in pairs or any(w.endswith("email") for w in words) \
            or re.search("邮箱|邮件", key):
        return "email"
    if words & {"uscc", "creditcode"} or "credit_code" in pairs or re.search("信用代码", key):
        return "credit_code"
    if (words & {"idnumber", "idno", "idcard", "passport", "identity"}
            or pairs & {"id_number", "id_no", "id_card", "identity_number", "identity_card"}
            or re.search("身份证|证件", key)):
        return "id_number"
    return None


def _find(text: str) -> re.Match | None:
    """The first personal-data match in ``text`` (cheap for the many strings that have none)."""
    if "@" in text:
        return _ANY.search(text)
    return _NUMBERS.search(text) if _GATE.search(text) else None


def shape_kind(text: str) -> str | None:
    """``phone`` / ``email`` / ``id_number`` / ``credit_code`` if the whole text is one such
    value, ``text`` if it contains one, else None."""
    return _short_shape_kind(text) if len(text) <= 200 else _shape_kind(text)


@lru_cache(maxsize=8192)
def _short_shape_kind(text: str) -> str | None:
    """``_shape_kind`` of a short text, remembered: the same values recur in the audit rows of
    every step of an instance."""
    return _shape_kind(text)


def _shape_kind(text: str) -> str | None:
    m = _find(text)
    if m is None:
        return None
    if m.start() == 0 and m.end() == len(text):
        return m.lastgroup
    stripped = text.strip()
    if stripped != text and _ANY.fullmatch(stripped):
        return _shape_kind(stripped)
    return "text"


# -- masking ---------------------------------------------------------------------------------
def _stars(s: str, head: int, tail: int) -> str:
    """Keep ``head`` and ``tail`` characters, at least three stars between (so masking is idempotent)."""
    if len(s) - head - tail < 3:
        return "***"
    return s[:head] + "*" * (len(s) - head - tail) + (s[len(s) - tail:] if tail else "")


def _is_masked(s: str) -> bool:
    return s == ERASED or ("***" in s and _find(s) is None)


_AREA_LANDLINE = re.compile(r"(0[1-9][0-9]{1,2})-([0-9]{7,8})(?:-[0-9]+)?")


def mask_phone(value: Any, *, keep_area_code: bool = False) -> str | None:
    """``13800000000`` → ``138****0000``; landlines ``010-12345678`` → ``010****5678``.

    ``keep_area_code``: a landline written as the customer registry stores it keeps its area
    code and dash, and drops its extension: ``0571-87651234-12`` → ``0571-****1234``.
    ``None`` stays ``None``.
    """
    if value is None:
        return value
    s = str(value)
    if _is_masked(s):
        return s
    if keep_area_code and (m := _AREA_LANDLINE.fullmatch(s)):
        area, local = m.groups()
        return f"{area}-{'*' * (len(local) - 4)}{local[-4:]}"
    digits = re.sub(r"\D", "", s)
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if len(digits) >= 11:
        return _stars(digits, 3, 4)
    if len(digits) >= 7:
        return _stars(digits, 2, 2)
    return _stars(s, 0, 0) if s else s


def mask_email(value: Any) -> str | None:
    """``zhangsan@example.com`` → ``z***@example.com`` (the length of the name is not shown).
    ``None`` stays ``None``."""
    if value is None:
        return value
    s = str(value)
    if _is_masked(s):
        return s
    local, at, domain = s.partition("@")
    if not at:
        return _stars(s, 1, 0)
    return (local[:1] or "*") + "***@" + domain


def mask_id_number(value: Any, *, head: int = 3) -> str | None:
    """ID card / credit code: ``110101199003071234`` → ``110***********1234``; ``head``: how many
    leading characters stay (the customer registry shows 4: ``1101**********1234``). ``None`` stays ``None``."""
    if value is None:
        return value
    s = str(value)
    if _is_masked(s):
        return s
    compact = re.sub(r"\s", "", s)
    if len(compact) >= 11:
        return _stars(compact, head, 4)
    return _stars(compact, 1, 1)


def mask_text(text: str) -> str:
    """Free text with every phone, e-mail, ID and credit code inside it masked."""
    return _ANY.sub(lambda m: _MASKERS[m.lastgroup](m.group(0)), text)


_MASKERS = {"phone": mask_phone, "email": mask_email, "id_number": mask_id_number,
            "credit_code": mask_id_number}


def mask_kind(kind: str | None, value: Any) -> Any:
    """Mask ``value`` as personal data of ``kind`` (as returned by ``key_kind``)."""
    if value is None or isinstance(value, bool | float):
        return value
    if kind in _MASKERS:
        return _MASKERS[kind](value)
    if isinstance(value, str):
        return mask_text(value)
    return value


def mask_value(path: str | Iterable[Any], value: Any) -> Any:
    """Mask one value found at ``path`` (``"data_diff/changed/phone/1"`` or a list of keys):
    by the name of the innermost named field, else by its shape. Containers are masked deeply."""
    parts = path.split("/") if isinstance(path, str) else list(path)
    kind = None
    for part in reversed(parts):
        if isinstance(part, str) and not part.isdigit():
            kind = key_kind(part)
            if kind is None and part in ("added", "changed", "removed"):
                continue
            break
    return _mask(value, kind) if isinstance(value, dict | list) else mask_kind(kind, value)


def mask_data(obj: Any) -> Any:
    """A copy of a JSON value with personal data masked, by field name and by shape, recursively."""
    return _mask(obj, None)


def _mask(obj: Any, kind: str | None) -> Any:
    if isinstance(obj, dict):
        return {k: _mask(v, key_kind(k) or kind) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask(v, kind) for v in obj]
    if isinstance(obj, str):
        if kind:
            return mask_kind(kind, obj)
        return mask_text(obj) if _find(obj) else obj
    if kind and isinstance(obj, int) and not isinstance(obj, bool):
        return mask_kind(kind, obj)
    return obj


def can_unmask(role: str | None) -> bool:
    """May a user of this role see personal data unmasked (an audited action)?"""
    return role in UNMASK_ROLES


# -- keeping personal data out of the hashed content ------------------------------------------
class AuditPii(Base):
    """A personal-data value of an audit row, kept outside the hash chain so it can be erased."""

    __tablename__ = "audit_pii"
    __table_args__ = (
        UniqueConstraint("seq", "path", name="uq_audit_pii_seq_path"),
        Index("ix_audit_pii_norm", "norm"),
        Index("ix_audit_pii_kind", "kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger)  # the audit row (no FK: both tables are append-only)
    path: Mapped[str] = mapped_column(Text)  # JSON pointer in the row: data_diff/added/phone
    kind: Mapped[str] = mapped_column(String(20))
    ref: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256(secret, value) = the reference in the row
    secret: Mapped[str | None] = mapped_column(String(64))  # per-value HMAC key (hex); gone once erased
    value: Mapped[str | None] = mapped_column(Text)  # the clear value as JSON; None or redacted once erased
    norm: Mapped[str | None] = mapped_column(String(200))  # normalised identifier, to find a subject's values
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    erased_by: Mapped[str | None] = mapped_column(String(200))


@dataclass
class PiiValue:
    """A personal-data value taken out of a row before hashing."""

    path: str
    kind: str
    ref: str
    secret: str
    value: Any
    value_json: str  # exactly the text the reference was computed over

    def to_row(self, seq: int) -> AuditPii:
        """The ``audit_pii`` row keeping this value for audit row ``seq``."""
        return AuditPii(**self.to_values(seq))

    def to_values(self, seq: int) -> dict[str, Any]:
        """The column values of ``to_row`` (for a Core insert)."""
        return {"seq": seq, "path": self.path, "kind": self.kind, "ref": self.ref, "secret": self.secret,
                "value": self.value_json, "norm": normalize(self.kind, self.value), "erased_at": None,
                "erased_by": None}


def reference(secret: bytes | str, value_json: str) -> str:
    """HMAC-SHA256 of a value's JSON text under its own key (hex)."""
    key = bytes.fromhex(secret) if isinstance(secret, str) else secret
    return hmac.new(key, value_json.encode(), hashlib.sha256).hexdigest()


def _pointer(parent: str, key: Any) -> str:
    return f"{parent}/{str(key).replace('~', '~0').replace('/', '~1')}"


def extract_pii(obj: Any, root: str, out: list[PiiValue]) -> Any:
    """Replace the personal data inside ``obj`` (a plain JSON value, modified in place) by
    references; append what was taken to ``out``. Returns ``obj`` (or its replacement)."""
    if isinstance(obj, dict | list):
        _walk(obj, None, root, out)
    return obj


def _walk(container: dict | list, kind: str | None, path: str, out: list[PiiValue]) -> None:
    """Tokenize the personal data in a dict or list in place (this runs in every step: the
    path of an item is only built when something is taken or a container is entered)."""
    items = container.items() if isinstance(container, dict) else enumerate(container)
    taken = None
    for key, v in items:
        t = type(v)
        if t is str or t is int:
            k = _leaf_kind(key, v, t, kind)
        elif t is dict or t is list:
            _walk(v, (key_kind(key) if isinstance(key, str) else None) or kind, _pointer(path, key), out)
            continue
        else:
            continue
        if k is not None:
            taken = taken or []
            taken.append((key, _tokenize(v, k, _pointer(path, key), out)))
    for key, token in taken or ():
        container[key] = token


class NotPlain(Exception):
    """A value ``extract_pii_copy`` leaves to ``extract_pii(to_jsonable(value))``."""


_INT_LIMIT = 1 << 63


def extract_pii_copy(obj: Any, root: str, out: list[PiiValue]) -> Any:
    """``extract_pii(to_jsonable(obj), root, out)`` in one walk, for values made only of dicts
    with string keys, lists, strings, numbers, booleans and None: returns a tokenized copy
    (``obj`` is left as it is). Anything else raises ``NotPlain`` with ``out`` unchanged."""
    t = type(obj)
    if t is dict or t is list:
        mark = len(out)
        try:
            return _copy_walk(obj, None, root, out)
        except (NotPlain, RecursionError):
            del out[mark:]
            raise NotPlain from None
    if t is str or t is bool or t is float or obj is None or (t is int and -_INT_LIMIT < obj < _INT_LIMIT):
        return obj
    raise NotPlain


def _copy_walk(container: dict | list, kind: str | None, path: Any, out: list[PiiValue]) -> dict | list:
    """``_walk`` building a new container instead of changing this one.

    This runs for every audit row of every step, so the common items are handled inline
    (``_leaf_kind``'s rules, one cached look-up per string) and the path of a nested container
    is the pair ``(parent path, key)``, spelled out (``_path``) only when something is taken.
    """
    if type(container) is dict:
        copy = {}
        for key, v in container.items():
            if type(key) is not str:
                raise NotPlain
            t = type(v)
            if t is str:
                k = key_kind(key) or kind
                if k is None:
                    k = _short_str_kind(v) if len(v) <= 200 else _str_kind(v)
                elif _is_masked(v):
                    k = None  # already masked by whoever wrote it (``139****0001``)
            elif t is dict or t is list:
                copy[key] = _copy_walk(v, key_kind(key) or kind, (path, key), out)
                continue
            elif t is int:
                if not -_INT_LIMIT < v < _INT_LIMIT:
                    raise NotPlain
                k = key_kind(key) or kind
                if k is None and v >= 10_000_000_000:  # a phone number typed as a number
                    k = shape_kind(str(v))
            elif t is float or t is bool or v is None:
                k = None
            else:
                raise NotPlain
            copy[key] = v if k is None else _tokenize(v, k, _pointer(_path(path), key), out)
        return copy
    items = []
    for i, v in enumerate(container):
        t = type(v)
        if t is str:
            k = kind
            if k is None:
                k = _short_str_kind(v) if len(v) <= 200 else _str_kind(v)
            elif _is_masked(v):
                k = None
        elif t is dict or t is list:
            items.append(_copy_walk(v, kind, (path, i), out))
            continue
        elif t is int:
            if not -_INT_LIMIT < v < _INT_LIMIT:
                raise NotPlain
            k = kind
            if k is None and v >= 10_000_000_000:
                k = shape_kind(str(v))
        elif t is float or t is bool or v is None:
            k = None
        else:
            raise NotPlain
        items.append(v if k is None else _tokenize(v, k, _pointer(_path(path), i), out))
    return items


def _path(path: Any) -> str:
    """The JSON pointer of a ``_copy_walk`` path: a root name or nested ``(parent path, key)`` pairs."""
    keys = []
    while type(path) is tuple:
        path, key = path
        keys.append(key)
    for key in reversed(keys):
        path = _pointer(path, key)
    return path


def _str_kind(v: str) -> str | None:
    """The kind of personal data a string holds by its shape alone (no field name says), or None."""
    k = shape_kind(v)
    if k is None and v.startswith(TOKEN_PREFIX):
        k = "other"  # data that looks like a reference is kept out too, so every reference is ours
    return k


# the same short values recur in the rows of every step of an instance
_short_str_kind = lru_cache(maxsize=8192)(_str_kind)


def _leaf_kind(key: str | int, v: str | int, t: type, kind: str | None) -> str | None:
    """The kind of personal data a string or int item holds (by its key, its container's kind or
    its shape), or None (``_copy_walk`` applies the same rules inline)."""
    k = (key_kind(key) if isinstance(key, str) else None) or kind
    if t is str:
        if k is None:
            k = _str_kind(v)
        elif _is_masked(v):
            k = None  # already masked by whoever wrote it (``139****0001``): nothing personal left
    elif k is None and v >= 10_000_000_000:  # a phone number typed as a number
        k = shape_kind(str(v))
    return k


def _tokenize(value: Any, kind: str, path: str, out: list[PiiValue]) -> str:
    secret = os.urandom(16)
    value_json = json.dumps(value, ensure_ascii=False)
    ref = reference(secret, value_json)
    out.append(PiiValue(path=path, kind=kind, ref=ref, secret=secret.hex(), value=value, value_json=value_json))
    return TOKEN_PREFIX + ref


def normalize(kind: str, value: Any) -> str | None:
    """The identifier a value is found by when its subject is erased (None for free text)."""
    if kind in ("text", "other") or value is None:
        return None
    s = str(value).strip()
    if kind == "phone":
        digits = re.sub(r"\D", "", s)
        if len(digits) == 13 and digits.startswith("86"):
            digits = digits[2:]
        return digits[:200] or None
    if kind == "email":
        return s.lower()[:200] or None
    return re.sub(r"\s", "", s).upper()[:200] or None


def _candidate_norms(value: str) -> set[str]:
    out = {n for kind in ("phone", "email", "id_number") if (n := normalize(kind, value))}
    return {n for n in out if len(n) >= 5}


def contains_tokens(obj: Any) -> bool:
    """Does a stored ``data_diff`` / ``details`` hold references to personal data?"""
    if isinstance(obj, str):
        return obj.startswith(TOKEN_PREFIX)
    if isinstance(obj, dict):
        return any(contains_tokens(v) for v in obj.values())
    if isinstance(obj, list):
        return any(contains_tokens(v) for v in obj)
    return False


def token_paths(obj: Any, root: str) -> dict[str, str]:
    """``{path: ref}`` of every reference inside a stored ``data_diff`` / ``details``."""
    found: dict[str, str] = {}

    def walk(v: Any, path: str) -> None:
        if isinstance(v, str):
            if TOKEN_RE.fullmatch(v):
                found[path] = v[len(TOKEN_PREFIX):]
        elif isinstance(v, dict):
            for k, item in v.items():
                walk(item, _pointer(path, k))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                walk(item, _pointer(path, i))

    walk(obj, root)
    return found


def clear_values(rows: Iterable[AuditPii]) -> dict[str, Any]:
    """``{ref: clear value}`` from ``audit_pii`` rows (``ERASED`` or redacted text once erased)."""
    out: dict[str, Any] = {}
    for r in rows:
        if r.value is None:
            out[r.ref] = ERASED
        else:
            out[r.ref] = json.loads(r.value)
    return out


def rejoin(obj: Any, values: dict[str, Any]) -> Any:
    """A copy of a stored ``data_diff`` / ``details`` with references replaced by their values."""
    if isinstance(obj, str):
        if obj.startswith(TOKEN_PREFIX):
            return values.get(obj[len(TOKEN_PREFIX):], obj)
        return obj
    if isinstance(obj, dict):
        return {k: rejoin(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rejoin(v, values) for v in obj]
    return obj


def load_values(session: Session, seqs: Iterable[int]) -> dict[int, dict[str, Any]]:
    """``{seq: {ref: clear value}}`` for the given audit rows (one query per 500 rows)."""
    seqs = sorted(set(seqs))
    out: dict[int, dict[str, Any]] = {}
    for i in range(0, len(seqs), 500):
        chunk = seqs[i:i + 500]
        for r in session.scalars(select(AuditPii).where(AuditPii.seq.in_(chunk))):
            out.setdefault(r.seq, {}).update(clear_values([r]))
    return out


# -- erasure -----------------------------------------------------------------------------------
class UnmaskRefused(CareflowError):
    """The user may not see personal data unmasked."""


def erase_subject_pii(session: Session, values: list[str], by: str, reason: str | None = None) -> int:
    """Erase a data subject's phones, e-mails and ID numbers from the audit trail (PIPL).

    Every ``audit_pii`` value equal to one of ``values`` (compared normalised: ``+86 138-0000-0000``
    finds ``13800000000``; e-mails case-insensitively), and every free text containing one, is
    blanked together with its HMAC key; free text keeps its other words with the value replaced
    by ``[erased]``. The hashed rows are untouched, so the chain still verifies. The erasure is
    itself audited (``pii_erased``, naming the erased entries, never the values). Runs in the
    caller's transaction when one is open, else in its own. Returns how many values were erased.
    """
    values = [str(v).strip() for v in values if v is not None and str(v).strip()]
    if not values:
        raise ValidationFailed([Problem("give at least one phone, e-mail or ID number to erase", field="values")])
    if session.in_transaction():
        return _erase(session, values, by, reason)
    with session.begin():
        return _erase(session, values, by, reason)


def _erase(session: Session, values: list[str], by: str, reason: str | None) -> int:
    from engine.audit import AuditEvent, append_events
    from engine.clock import utcnow

    now = utcnow()
    norms: set[str] = set()
    for v in values:
        norms |= _candidate_norms(v)
    if not norms:
        raise ValidationFailed([Problem("nothing to search by: give full phone numbers, e-mails or ID numbers",
                                        field="values")])
    erased: list[int] = []
    norm_list = sorted(norms)
    for i in range(0, len(norm_list), 500):
        for row in session.scalars(select(AuditPii).where(AuditPii.norm.in_(norm_list[i:i + 500]),
                                                          AuditPii.erased_at.is_(None))):
            row.value = row.secret = row.norm = None
            row.erased_at, row.erased_by = now, by
            erased.append(row.id)
    for row in session.scalars(select(AuditPii).where(AuditPii.kind == "text", AuditPii.erased_at.is_(None))):
        text = json.loads(row.value) if row.value is not None else None
        if not isinstance(text, str):
            continue
        hit = False

        def redact(m: re.Match, _norms: set[str] = norms) -> str:
            nonlocal hit
            if normalize(m.lastgroup, m.group(0)) in _norms:
                hit = True
                return ERASED
            return m.group(0)

        redacted = _ANY.sub(redact, text)
        if hit:
            row.value = json.dumps(redacted, ensure_ascii=False)
            row.secret = None
            row.erased_at, row.erased_by = now, by
            erased.append(row.id)
    if erased:
        session.flush()
    details = {"pii_ids": sorted(erased), "erased": len(erased), "values_given": len(values)}
    if reason:
        details["reason"] = reason
    append_events(session, [AuditEvent(action="pii_erased", actor=by, cause="user", at=now, details=details)])
    return len(erased)
