"""Server-side validation of submitted form data against the form's JSON Schema.

Forms list their choices as ``oneOf`` of ``{"const": ..., "title": ..., "x-title-zh": ...}``
(so each choice carries its labels). jsonschema checks such a ``oneOf`` by trying every
branch and building an error object for each one that does not match: most of the cost
of validating a valid submission. A ``oneOf`` of distinct constants accepts exactly what
an ``enum`` of them accepts, so a valid submission is accepted by a validator of the
schema with those ``oneOf`` rewritten as ``enum``; only a submission that fails goes
through the original schema, whose errors are the ones reported.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from engine.errors import Problem, ValidationFailed

_validators: dict[int, tuple[dict, Draft202012Validator, Draft202012Validator]] = {}


def validate_form(schema: dict, data: Any) -> None:
    """Validate submitted data against a form's JSON Schema; raise ``ValidationFailed`` with field errors."""
    full, fast = _validators_for(schema)
    if fast.is_valid(data):
        return
    errors = sorted(full.iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    problems = []
    for e in errors:
        path = "/".join(str(p) for p in e.absolute_path)
        if e.validator == "required" and isinstance(e.instance, dict):
            missing = [r for r in e.validator_value if r not in e.instance]
            for m in missing:
                problems.append(Problem("is required", field=f"{path}/{m}" if path else m))
            continue
        problems.append(Problem(e.message, field=path))
    raise ValidationFailed(problems)


def _validators_for(schema: dict) -> tuple[Draft202012Validator, Draft202012Validator]:
    """(validator of the schema, validator of its ``enum`` rewrite), built once per schema object.

    A version's forms never change, and the schema is kept alive next to its validators, so
    its ``id`` cannot be reused by another object while the entry exists.
    """
    hit = _validators.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1], hit[2]
    if len(_validators) > 2048:
        _validators.clear()
    full = Draft202012Validator(schema, format_checker=FormatChecker())
    rewritten = schema if _refers_into_one_of(schema) else enum_rewrite(schema)
    fast = full if rewritten is schema else Draft202012Validator(rewritten, format_checker=FormatChecker())
    _validators[id(schema)] = (schema, full, fast)
    return full, fast


def _refers_into_one_of(schema: Any) -> bool:
    """Does a ``$ref`` point inside a ``oneOf`` (which the rewrite would move)?"""
    if isinstance(schema, dict):
        return any((k in ("$ref", "$dynamicRef") and isinstance(v, str) and "oneOf" in v)
                   or _refers_into_one_of(v) for k, v in schema.items())
    if isinstance(schema, list):
        return any(_refers_into_one_of(v) for v in schema)
    return False


_ANNOTATIONS = frozenset(("title", "description", "$comment", "examples"))


def enum_rewrite(schema: Any) -> Any:
    """``schema`` with every ``oneOf`` of distinct labelled constants turned into an ``enum``
    (the same set of accepted values); returns ``schema`` itself when nothing changes."""
    if isinstance(schema, list):
        items = [enum_rewrite(s) for s in schema]
        return schema if all(a is b for a, b in zip(items, schema, strict=True)) else items
    if not isinstance(schema, dict):
        return schema
    changed = False
    out = {}
    for key, value in schema.items():
        new = enum_rewrite(value)
        changed = changed or new is not value
        out[key] = new
    consts = _constants(out.get("oneOf"))
    if consts is not None and "enum" not in out:
        del out["oneOf"]
        out["enum"] = consts
        changed = True
    return out if changed else schema


def _constants(branches: Any) -> list | None:
    """The constants of a ``oneOf`` whose branches are only ``const`` plus annotations, if all distinct."""
    if not isinstance(branches, list) or not branches:
        return None
    consts = []
    for b in branches:
        if not isinstance(b, dict) or "const" not in b:
            return None
        if any(k != "const" and k not in _ANNOTATIONS and not k.startswith("x-") for k in b):
            return None
        consts.append(b["const"])
    # distinct by JSON Schema equality (1 == 1.0, but True != 1): two equal constants would make
    # oneOf reject the value both match, which an enum accepts
    for i, a in enumerate(consts):
        for b in consts[i + 1:]:
            if _json_equal(a, b):
                return None
    return consts


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b if not (_number(a) and _number(b)) else a == b


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
