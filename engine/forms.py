"""Server-side validation of submitted form data against the form's JSON Schema.

Every completed task validates its form, so accepting a valid submission is on the step
path. jsonschema interprets the schema on each call (keyword dispatch, error generators,
and for a ``oneOf`` of choices an error object per branch that does not match): 30 to 100 µs
per form. So when a schema is first seen, ``compile_acceptance`` turns it into plain Python
closures, one per schema node, and a valid submission costs a few dict lookups and
``isinstance`` tests per field (3 to 8 µs per form).

What the compiled check guarantees: it answers True only for data jsonschema's
``Draft202012Validator`` (with a ``FormatChecker``) finds valid. Each keyword uses
jsonschema's own rules: its type tests (a bool is neither integer nor number, 1.0 is an
integer), ``len`` of a string (code points), ``re.search`` for ``pattern``, the same
``FormatChecker.conforms`` for ``format``, jsonschema's ``equal`` for ``enum``/``const``.
When it answers False (or trips over odd data) jsonschema validates the submission and
its errors are the ones reported, so messages never change. The compiler handles the
keywords forms use (``_KEYWORDS``, annotations, ``x-*``) and ``$ref`` as a JSON pointer
into the form itself; a schema with anything else (another keyword, a malformed keyword
value, a nested ``$id``, an anchor, a recursive ``$ref``, another dialect) is not
compiled and goes through jsonschema, as do all rejected submissions.

For those schemas the ``enum`` rewrite keeps acceptance cheaper: a ``oneOf`` of distinct
labelled constants (``{"const", "title", "x-title-zh"}``) accepts exactly what an ``enum``
of them accepts, so a valid submission is accepted by a validator of the rewritten schema.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

# jsonschema's equality for enum/const/oneOf constants and uniqueItems (1 == 1.0, True != 1,
# recursive for arrays and objects): the compiled check must use the very same rules
from jsonschema._utils import equal, uniq

from engine.errors import Problem, ValidationFailed

Check = Callable[[Any], bool]


def validate_form(schema: dict, data: Any) -> None:
    """Validate submitted data against a form's JSON Schema; raise ``ValidationFailed`` with field errors."""
    form = _form_for(schema)
    if form.accepts is not None:
        if _accepts(form.accepts, data):
            return
    elif form.fast().is_valid(data):
        return
    errors = sorted(form.full().iter_errors(data), key=lambda e: list(e.absolute_path))
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


def _accepts(check: Check, data: Any) -> bool:
    try:
        return check(data)
    except Exception:  # data the closures cannot handle (deep nesting, odd types): jsonschema decides
        return False


class _Form:
    """One schema's compiled check and (built when first needed) its jsonschema validators."""

    __slots__ = ("schema", "formats", "accepts", "_full", "_fast")

    def __init__(self, schema: dict) -> None:
        self.schema = schema
        self.formats = FormatChecker()
        self.accepts = compile_acceptance(schema, self.formats)
        self._full: Draft202012Validator | None = None
        self._fast: Draft202012Validator | None = None

    def full(self) -> Draft202012Validator:
        """The validator of the schema as written (its errors are reported)."""
        if self._full is None:
            self._full = Draft202012Validator(self.schema, format_checker=self.formats)
        return self._full

    def fast(self) -> Draft202012Validator:
        """The validator of the schema's ``enum`` rewrite, for schemas the compiler leaves alone."""
        if self._fast is None:
            rewritten = self.schema if _refers_into_one_of(self.schema) else enum_rewrite(self.schema)
            self._fast = (self.full() if rewritten is self.schema
                          else Draft202012Validator(rewritten, format_checker=self.formats))
        return self._fast


_forms: dict[int, _Form] = {}


def _form_for(schema: dict) -> _Form:
    """The schema's ``_Form``, built once per schema object.

    A version's forms never change, and the schema is kept alive in its entry, so its
    ``id`` cannot be reused by another object while the entry exists.
    """
    hit = _forms.get(id(schema))
    if hit is not None and hit.schema is schema:
        return hit
    if len(_forms) > 2048:
        _forms.clear()
    form = _forms[id(schema)] = _Form(schema)
    return form


# ----------------------------------------------------------------------------- compiled check

_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# keywords jsonschema has no validator for (no effect on validity); ``x-*`` keywords too
_ANNOTATIONS = frozenset(("title", "description", "$comment", "examples", "default", "deprecated",
                          "readOnly", "writeOnly"))

_STRING = ("minLength", "maxLength", "pattern", "format")
_NUMBER = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_OBJECT = ("properties", "required", "additionalProperties")
_ARRAY = ("items", "minItems", "maxItems", "uniqueItems")
_KEYWORDS = frozenset((*_STRING, *_NUMBER, *_OBJECT, *_ARRAY, "type", "enum", "const", "allOf", "anyOf",
                       "oneOf", "not", "if", "then", "else", "$ref", "$defs"))
_ROOT_ONLY = frozenset(("$schema", "$id"))
_INDEX = re.compile(r"[0-9]+")


def _is_integer(v: Any) -> bool:
    return not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and v.is_integer()))


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, numbers.Number)


# jsonschema's Draft 2020-12 type checker, test for test
_TYPES: dict[str, Check] = {
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_integer,
    "null": lambda v: v is None,
    "number": _is_number,
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
}


def _accept(v: Any) -> bool:
    return True


def _refuse(v: Any) -> bool:
    return False


class _Unsupported(Exception):
    """The schema uses something the compiler cannot vouch for."""


def compile_acceptance(schema: Any, format_checker: FormatChecker | None = None) -> Check | None:
    """A function telling whether data is valid against ``schema`` exactly as jsonschema's
    ``Draft202012Validator`` with ``format_checker`` (default: a new ``FormatChecker()``) would;
    ``None`` when the schema uses something the compiler does not handle."""
    formats = format_checker if format_checker is not None else FormatChecker()
    if _embeds_resource(schema):
        return None
    try:
        return _Compiler(schema, formats.conforms).node(schema)
    except (_Unsupported, RecursionError):
        return None


def _embeds_resource(schema: Any) -> bool:
    """Does any object below the root carry ``$id`` or ``$schema``? Such a resource (even one no
    keyword reaches) may change what a ``$ref`` resolves to, so the compiler leaves the schema alone."""
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node is not schema and not _ROOT_ONLY.isdisjoint(node):
                return True
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


class _Compiler:
    """Compiles schema nodes into closures; raises ``_Unsupported`` on anything it does not handle."""

    def __init__(self, root: Any, conforms: Callable[[Any, str], bool]) -> None:
        self.root = root
        self.conforms = conforms
        self.done: dict[int, Check] = {}  # by id() of the node (``$defs`` used by several ``$ref``)
        self.open: set[int] = set()  # nodes being compiled: meeting one again is a recursive ``$ref``

    def node(self, schema: Any) -> Check:
        """The check of one schema node."""
        if schema is True:
            return _accept
        if schema is False:
            return _refuse
        if not isinstance(schema, dict):
            raise _Unsupported(f"not a schema: {schema!r}")
        key = id(schema)
        if key in self.done:
            return self.done[key]
        if key in self.open:
            raise _Unsupported("recursive $ref")
        self.open.add(key)
        try:
            check = self._build(schema)
        finally:
            self.open.discard(key)
        self.done[key] = check
        return check

    def _build(self, schema: dict) -> Check:
        for k in schema:
            if not (k in _KEYWORDS or k in _ANNOTATIONS or k.startswith("x-")
                    or (k in _ROOT_ONLY and schema is self.root)):
                raise _Unsupported(k)
        if schema is self.root:
            if schema.get("$schema", _DIALECT) != _DIALECT:
                raise _Unsupported("another dialect")
            base = schema.get("$id", "")
            if not isinstance(base, str) or "#" in base:
                raise _Unsupported("$id")
        types = self._types(schema)
        single = types[0] if types is not None and len(types) == 1 else None
        parts: list[Check] = []
        fused = False  # the type test is done by the group of keywords of that type
        for kind, keywords, build in (("string", _STRING, self._string), ("number", _NUMBER, self._number),
                                      ("object", _OBJECT, self._object), ("array", _ARRAY, self._array)):
            if any(k in schema for k in keywords):
                strict = single == kind or (kind == "number" and single == "integer")
                parts.append(build(schema, _TYPES[single] if strict else None))
                fused = fused or strict
        if types is not None and not fused:
            parts.insert(0, self._type(types))
        if "enum" in schema:
            if not isinstance(schema["enum"], list):
                raise _Unsupported("enum")
            parts.append(_enum(schema["enum"]))
        if "const" in schema:
            const = schema["const"]
            parts.append(lambda v: equal(v, const))
        if "allOf" in schema:
            parts.extend(self._branches(schema["allOf"]))
        if "anyOf" in schema:
            branches = tuple(self._branches(schema["anyOf"]))
            parts.append(lambda v: any(b(v) for b in branches))
        if "oneOf" in schema:
            parts.append(self._one_of(schema["oneOf"]))
        if "not" in schema:
            negated = self.node(schema["not"])
            parts.append(lambda v: not negated(v))
        if "if" in schema:
            parts.append(self._if(schema))
        if "$ref" in schema:
            parts.append(self._ref(schema["$ref"]))
        return _all(parts)

    def _types(self, schema: dict) -> tuple[str, ...] | None:
        if "type" not in schema:
            return None
        types = schema["type"]
        types = (types,) if isinstance(types, str) else types
        if not isinstance(types, list | tuple) or any(not isinstance(t, str) or t not in _TYPES for t in types):
            raise _Unsupported("type")
        return tuple(types)

    @staticmethod
    def _type(types: tuple[str, ...]) -> Check:
        if len(types) == 1:
            return _TYPES[types[0]]
        tests = tuple(_TYPES[t] for t in types)
        return lambda v: any(t(v) for t in tests)

    def _string(self, schema: dict, of_type: Check | None) -> Check:
        """minLength, maxLength, pattern, format; with ``of_type``, also ``"type": "string"``."""
        strict = of_type is not None
        lo, hi = _bound(schema, "minLength", 0), _bound(schema, "maxLength", math.inf)
        pattern, fmt = schema.get("pattern"), schema.get("format")
        if any(k in schema and not isinstance(schema[k], str) for k in ("pattern", "format")):
            raise _Unsupported("pattern/format")
        try:
            search = re.compile(pattern).search if pattern is not None else None
        except re.error as err:
            raise _Unsupported("pattern") from err
        conforms = self.conforms

        def check(v: Any) -> bool:
            if not isinstance(v, str):  # format checkers see every type; the rest is for strings
                return not strict and (fmt is None or conforms(v, fmt))
            n = len(v)
            if n < lo or n > hi:
                return False
            if search is not None and search(v) is None:
                return False
            return fmt is None or conforms(v, fmt)

        return check

    def _number(self, schema: dict, of_type: Check | None) -> Check:
        """minimum, maximum, exclusiveMinimum, exclusiveMaximum; with ``of_type``, also the type."""
        strict = of_type is not None
        is_type = of_type or _is_number
        lo, hi = _bound(schema, "minimum", None), _bound(schema, "maximum", None)
        above, below = _bound(schema, "exclusiveMinimum", None), _bound(schema, "exclusiveMaximum", None)

        def check(v: Any) -> bool:
            if not is_type(v):
                return not strict
            return not ((lo is not None and v < lo) or (hi is not None and v > hi)
                        or (above is not None and v <= above) or (below is not None and v >= below))

        return check

    def _object(self, schema: dict, of_type: Check | None) -> Check:
        """properties, required, additionalProperties; with ``of_type``, also ``"type": "object"``."""
        strict = of_type is not None
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(properties, dict) or not isinstance(required, list) \
                or any(not isinstance(r, str) for r in required):
            raise _Unsupported("properties/required")
        checks = {name: self.node(sub) for name, sub in properties.items()}
        get = checks.get
        additional = schema.get("additionalProperties", True)
        other = None if additional is True else self.node(additional)  # the check of other properties
        needed = frozenset(required)

        def check(v: Any) -> bool:
            if not isinstance(v, dict):
                return not strict
            if not v.keys() >= needed:
                return False
            for name, value in v.items():
                c = get(name, other)
                if c is not None and not c(value):
                    return False
            return True

        return check

    def _array(self, schema: dict, of_type: Check | None) -> Check:
        """items, minItems, maxItems, uniqueItems; with ``of_type``, also ``"type": "array"``."""
        strict = of_type is not None
        lo, hi = _bound(schema, "minItems", 0), _bound(schema, "maxItems", math.inf)
        item = self.node(schema["items"]) if "items" in schema else _accept
        unique = schema.get("uniqueItems", False)
        if not isinstance(unique, bool):
            raise _Unsupported("uniqueItems")

        def check(v: Any) -> bool:
            if not isinstance(v, list):
                return not strict
            n = len(v)
            if n < lo or n > hi:
                return False
            if unique and not uniq(v):
                return False
            return item is _accept or all(item(x) for x in v)

        return check

    def _branches(self, branches: Any) -> list[Check]:
        if not isinstance(branches, list):
            raise _Unsupported("allOf/anyOf/oneOf")
        return [self.node(b) for b in branches]

    def _one_of(self, branches: Any) -> Check:
        constants = _constants(branches)
        if constants is not None:  # distinct constants: at most one branch matches, as in an enum
            return _enum(constants)
        checks = tuple(self._branches(branches))

        def exactly_one(v: Any) -> bool:
            matches = 0
            for c in checks:
                if c(v):
                    matches += 1
                    if matches > 1:
                        return False
            return matches == 1

        return exactly_one

    def _if(self, schema: dict) -> Check:
        condition = self.node(schema["if"])
        then = self.node(schema["then"]) if "then" in schema else _accept
        otherwise = self.node(schema["else"]) if "else" in schema else _accept
        return lambda v: then(v) if condition(v) else otherwise(v)

    def _ref(self, ref: Any) -> Check:
        """A ``$ref`` that is a JSON pointer into this schema (``#`` or ``#/...``), no escapes."""
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")) or "~" in ref or "%" in ref:
            raise _Unsupported(f"$ref {ref!r}")
        target = self.root
        for segment in ref[2:].split("/") if ref != "#" else ():
            if isinstance(target, dict) and segment in target:
                target = target[segment]
            elif isinstance(target, list) and _INDEX.fullmatch(segment) and int(segment) < len(target):
                target = target[int(segment)]
            else:
                raise _Unsupported(f"$ref {ref!r}")
        return self.node(target)


def _bound(schema: dict, key: str, default: Any) -> Any:
    if key not in schema:
        return default
    value = schema[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Unsupported(key)
    return value


def _enum(values: list) -> Check:
    if all(type(x) is str for x in values):
        strings = frozenset(values)
        return lambda v: v in strings if type(v) is str else any(equal(x, v) for x in values)
    return lambda v: any(equal(x, v) for x in values)


def _all(parts: list[Check]) -> Check:
    if not parts:
        return _accept
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda v: first(v) and second(v)
    checks = tuple(parts)
    return lambda v: all(c(v) for c in checks)


# ----------------------------------------------------------------------------- enum rewrite

def _refers_into_one_of(schema: Any) -> bool:
    """Does a ``$ref`` point inside a ``oneOf`` (which the rewrite would move)?"""
    if isinstance(schema, dict):
        return any((k in ("$ref", "$dynamicRef") and isinstance(v, str) and "oneOf" in v)
                   or _refers_into_one_of(v) for k, v in schema.items())
    if isinstance(schema, list):
        return any(_refers_into_one_of(v) for v in schema)
    return False


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
            if equal(a, b):
                return None
    return consts
