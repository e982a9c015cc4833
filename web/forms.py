"""Task forms from JSON Schema: fields to render, posted fields back to typed JSON, and
validation errors as translated messages next to the fields.

Field names in the HTML form are the JSON paths the engine uses for field errors
(``customer``, ``address/city``, ``items/0/qty``), so an error from the engine and one
from here land on the same field. Supported: strings (text, textarea for
``maxLength`` > 200 or ``x-widget: textarea``, formats ``email``, ``date``,
``date-time``), enums (``oneOf`` of ``const`` + ``title`` + ``x-title-zh``, or ``enum``),
integers and numbers with ``minimum``/``maximum``, booleans, nested objects (fieldsets),
arrays of enums (checkboxes), arrays of strings (one per line) and arrays of objects
(repeatable rows; without JavaScript a fixed number of rows).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask_babel import gettext as _
from jsonschema import Draft202012Validator, FormatChecker
from werkzeug.datastructures import MultiDict

from web.i18n import schema_description, schema_title

SPARE_ROWS = 2  # empty rows offered for arrays of objects when JavaScript is off
INDEX_TOKEN = "__index__"


@dataclass
class Field:
    """One thing to render: an input, a fieldset (object) or a repeatable table (array)."""

    path: str
    kind: str
    label: str
    description: str = ""
    required: bool = False
    options: list[tuple[str, str]] = field(default_factory=list)
    value: Any = ""
    errors: list[str] = field(default_factory=list)
    children: list[Field] = field(default_factory=list)
    rows: list[list[Field]] = field(default_factory=list)
    template: list[Field] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def html_id(self) -> str:
        """A DOM id derived from the path."""
        return "f-" + re.sub(r"[^A-Za-z0-9_-]", "-", self.path)


def _enum_options(node: dict) -> list[tuple[Any, dict]] | None:
    if isinstance(node.get("oneOf"), list) and node["oneOf"] and all("const" in o for o in node["oneOf"]):
        return [(o["const"], o) for o in node["oneOf"]]
    if isinstance(node.get("anyOf"), list) and node["anyOf"] and all("const" in o for o in node["anyOf"]):
        return [(o["const"], o) for o in node["anyOf"]]
    if isinstance(node.get("enum"), list):
        return [(v, {}) for v in node["enum"]]
    return None


def _type(node: dict) -> str:
    t = node.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t:
        return t
    if "properties" in node:
        return "object"
    opts = _enum_options(node)
    if opts and all(isinstance(v, bool) for v, _o in opts):
        return "boolean"
    if opts and all(isinstance(v, int) and not isinstance(v, bool) for v, _o in opts):
        return "integer"
    return "string"


def _kind(node: dict) -> str:
    t = _type(node)
    if t == "object":
        return "object"
    if t == "array":
        items = node.get("items") or {}
        if _type(items) == "object":
            return "rows"
        if _enum_options(items):
            return "checkboxes"
        return "lines"
    if t == "boolean":
        return "boolean"
    if _enum_options(node):
        return "select"
    if t in ("integer", "number"):
        return t
    fmt = node.get("format")
    if fmt in ("email", "date", "date-time"):
        return {"date-time": "datetime"}.get(fmt, fmt)
    if node.get("x-widget") == "textarea" or (node.get("maxLength") or 0) > 200:
        return "textarea"
    return "text"


def _join(prefix: str, key: str | int) -> str:
    return f"{prefix}/{key}" if prefix else str(key)


def _display(kind: str, value: Any, tz: ZoneInfo) -> Any:
    """A data value as the form shows it."""
    if value is None:
        return ""
    if kind == "boolean":
        return "true" if value is True else "false" if value is False else str(value)
    if kind == "datetime" and isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if dt.tzinfo is not None:
            dt = dt.astimezone(tz)
        return dt.strftime("%Y-%m-%dT%H:%M")
    if kind == "checkboxes":
        return [str(v) for v in value] if isinstance(value, list) else []
    if kind == "lines":
        return "\n".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if isinstance(value, (dict, list)):
        return ""
    return str(value)


def build_fields(schema: dict, values: dict | MultiDict | None = None, errors: dict[str, list[str]] | None = None,
                 *, raw: bool = False, tz: str = "Asia/Shanghai") -> list[Field]:
    """The fields of a form schema, filled with ``values`` and annotated with ``errors``.

    ``values`` is task data (``raw=False``) or the posted form (``raw=True``: strings as typed).
    """
    errors = errors or {}
    zone = ZoneInfo(tz)
    return _object_fields(schema, "", values if values is not None else ({} if not raw else MultiDict()),
                          errors, raw, zone)


def _object_fields(node: dict, prefix: str, values, errors, raw: bool, zone: ZoneInfo) -> list[Field]:
    required = set(node.get("required") or [])
    out = []
    for key, child in (node.get("properties") or {}).items():
        if not isinstance(child, dict) or child.get("readOnly") or child.get("x-hidden"):
            continue
        out.append(_field(child, _join(prefix, key), key in required, values, errors, raw, zone, key))
    return out


def _field(node: dict, path: str, required: bool, values, errors, raw: bool, zone: ZoneInfo,
           key: str | int) -> Field:
    kind = _kind(node)
    f = Field(path=path, kind=kind, label=schema_title(node, str(key)), description=schema_description(node),
              required=required, errors=list(errors.get(path, [])))
    if kind == "object":
        sub = values if raw else (values.get(key) if isinstance(values, dict) else None) or {}
        f.children = _object_fields(node, path, sub, errors, raw, zone)
        return f
    if kind == "rows":
        items = node.get("items") or {}
        if raw:
            indices = sorted({int(m.group(1)) for k in values.keys()
                              if (m := re.match(re.escape(path) + r"/(\d+)/", k))})
            row_values = [values] * len(indices)
        else:
            data = values.get(key) if isinstance(values, dict) else None
            data = data if isinstance(data, list) else []
            indices = list(range(len(data)))
            row_values = [d if isinstance(d, dict) else {} for d in data]
        n_rows = max(len(indices), int(node.get("minItems") or 0), 1)
        spare = SPARE_ROWS if not raw else 0
        next_index = (max(indices) + 1) if indices else 0
        all_indices = indices + list(range(next_index, next_index + (n_rows - len(indices)) + spare))
        for pos, i in enumerate(all_indices):
            vals = row_values[pos] if pos < len(row_values) else ({} if not raw else MultiDict())
            f.rows.append(_object_fields(items, _join(path, i), vals, errors, raw, zone))
        f.template = _object_fields(items, _join(path, INDEX_TOKEN), {}, {}, False, zone)
        f.attrs = {"min_items": node.get("minItems"), "max_items": node.get("maxItems"),
                   "row_label": schema_title(items, "")}
        return f
    if kind == "checkboxes":
        options = _enum_options(node.get("items") or {}) or []
        f.options = [(str(v), schema_title(o, str(v))) for v, o in options]
    elif kind == "select":
        f.options = [(str(v), schema_title(o, str(v))) for v, o in _enum_options(node) or []]
    elif kind == "boolean":
        opts = _enum_options(node)
        titled = {v: o for v, o in opts} if opts else {}
        f.options = [("true", schema_title(titled.get(True), _("Yes"))),
                     ("false", schema_title(titled.get(False), _("No")))]
    if kind in ("integer", "number"):
        for a, k in (("min", "minimum"), ("max", "maximum")):
            if k in node:
                f.attrs[a] = node[k]
        f.attrs["step"] = "1" if kind == "integer" else "any"
    if kind in ("text", "textarea", "email"):
        if "maxLength" in node:
            f.attrs["maxlength"] = node["maxLength"]
    if raw:
        f.value = values.getlist(path) if kind == "checkboxes" else values.get(path, "")
    else:
        v = values.get(key) if isinstance(values, dict) else None
        if v is None and "default" in node:
            v = node["default"]
        f.value = _display(kind, v, zone)
    return f


# -- posted form → JSON ----------------------------------------------------------------------

def parse_submission(schema: dict, form: MultiDict, *,
                     tz: str = "Asia/Shanghai") -> tuple[dict, dict[str, list[str]], dict[str, str]]:
    """Typed data from a posted form; the fields that could not even be converted (by form
    path); and where each submitted row of a repeatable table landed in the data
    (data path → form path: empty rows are dropped, so positions can shift)."""
    errors: dict[str, list[str]] = {}
    positions: dict[str, str] = {}
    data = _parse_object(schema, "", "", form, errors, positions, ZoneInfo(tz))
    return data or {}, errors, positions


def to_form_paths(errors: dict[str, list[str]], positions: dict[str, str]) -> dict[str, list[str]]:
    """Error paths of the data (``items/0/qty``) as the paths of the submitted form fields."""
    if not positions:
        return errors
    out: dict[str, list[str]] = {}
    keys = sorted(positions, key=len, reverse=True)
    for path, msgs in errors.items():
        target = path
        for k in keys:
            if path == k or path.startswith(k + "/"):
                target = positions[k] + path[len(k):]
                break
        out.setdefault(target, []).extend(msgs)
    return out


def _parse_object(node: dict, prefix: str, dprefix: str, form: MultiDict, errors, positions,
                  zone: ZoneInfo) -> dict:
    out: dict[str, Any] = {}
    for key, child in (node.get("properties") or {}).items():
        if not isinstance(child, dict) or child.get("readOnly") or child.get("x-hidden"):
            continue
        value = _parse_value(child, _join(prefix, key), _join(dprefix, key), form, errors, positions, zone)
        if value is not _MISSING:
            out[key] = value
    return out


_MISSING = object()


def _parse_value(node: dict, path: str, dpath: str, form: MultiDict, errors, positions, zone: ZoneInfo) -> Any:
    kind = _kind(node)
    if kind == "object":
        value = _parse_object(node, path, dpath, form, errors, positions, zone)
        return value if value else _MISSING
    if kind == "rows":
        indices = sorted({int(m.group(1)) for k in form.keys() if (m := re.match(re.escape(path) + r"/(\d+)/", k))})
        rows = []
        for i in indices:
            before = len(errors)
            row = _parse_object(node.get("items") or {}, _join(path, i), _join(dpath, len(rows)), form, errors,
                                positions, zone)
            if row or len(errors) > before:
                positions[_join(dpath, len(rows))] = _join(path, i)
                rows.append(row)
        return rows if rows else _MISSING
    if kind == "checkboxes":
        options = _enum_options(node.get("items") or {}) or []
        by_text = {str(v): v for v, _o in options}
        chosen = form.getlist(path)
        return [by_text.get(c, c) for c in chosen] if chosen else _MISSING
    raw = form.get(path)
    if raw is None:
        return _MISSING
    if kind == "lines":
        lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
        return lines if lines else _MISSING
    if kind != "textarea":
        raw = raw.strip()
    if raw.strip() == "":
        return _MISSING
    if kind == "boolean":
        if raw in ("true", "false"):
            return raw == "true"
        errors.setdefault(path, []).append(_("Choose yes or no."))
        return _MISSING
    if kind == "select":
        for v, _o in _enum_options(node) or []:
            if str(v) == raw:
                return v
        return raw  # validation reports it as not one of the options
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            errors.setdefault(path, []).append(_("Enter a whole number."))
            return _MISSING
    if kind == "number":
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            errors.setdefault(path, []).append(_("Enter a number."))
            return _MISSING
        return int(number) if number.is_integer() and "." not in raw and "e" not in raw.lower() else number
    if kind == "datetime":
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            errors.setdefault(path, []).append(_("Enter a valid date and time."))
            return _MISSING
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=zone)
        return dt.isoformat()
    return raw


# -- validation with translated messages ---------------------------------------------------------

def validate(schema: dict, data: dict) -> dict[str, list[str]]:
    """Field errors (translated) of ``data`` against ``schema``; empty when valid."""
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    out: dict[str, list[str]] = {}
    for e in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path)
        if e.validator == "required" and isinstance(e.instance, dict):
            for missing in e.validator_value:
                if missing not in e.instance:
                    out.setdefault(_join(path, missing), []).append(_("This field is required."))
            continue
        out.setdefault(path, []).append(message_for(e))
    return out


def message_for(e) -> str:
    """A translated message for one jsonschema error."""
    v, val, inst = e.validator, e.validator_value, e.instance
    if v == "type":
        t = val if isinstance(val, str) else next((x for x in val if x != "null"), "string")
        return {"integer": _("Enter a whole number."), "number": _("Enter a number."),
                "boolean": _("Choose yes or no."), "array": _("Choose one or more entries."),
                "object": _("This group of fields is not valid.")}.get(t, _("Enter text."))
    if v == "minimum":
        return _("Must be at least %(limit)s.", limit=val)
    if v == "maximum":
        return _("Must be at most %(limit)s.", limit=val)
    if v == "exclusiveMinimum":
        return _("Must be greater than %(limit)s.", limit=val)
    if v == "exclusiveMaximum":
        return _("Must be less than %(limit)s.", limit=val)
    if v == "multipleOf":
        return _("Must be a multiple of %(limit)s.", limit=val)
    if v == "minLength":
        if val <= 1:
            return _("This field is required.")
        return _("Enter at least %(count)d characters.", count=val)
    if v == "maxLength":
        return _("Enter at most %(count)d characters.", count=val)
    if v == "pattern":
        return _("The value does not have the expected format.")
    if v == "format":
        return {"email": _("Enter a valid e-mail address."), "date": _("Enter a valid date (YYYY-MM-DD)."),
                "date-time": _("Enter a valid date and time.")}.get(val, _("The value does not have the "
                                                                           "expected format."))
    if v in ("enum", "const", "oneOf", "anyOf"):
        return _("Choose one of the options.")
    if v == "minItems":
        return _("Add at least %(count)d entries.", count=val)
    if v == "maxItems":
        return _("Add at most %(count)d entries.", count=val)
    if v == "uniqueItems":
        return _("Entries must not repeat.")
    if v == "additionalProperties":
        return _("This form does not have such a field.")
    del inst
    return _("The value is not valid.")
