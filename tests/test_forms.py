"""Form validation.

The compiled acceptance check (``compile_acceptance``) must give jsonschema's verdict:
realistic submissions of every shipped form are accepted, and thousands of mutated
submissions (seeded, so every run checks the same cases) and randomly generated schemas
get the same accept/refuse answer from both; ``validate_form`` reports exactly the errors
jsonschema finds. Schemas the compiler does not handle fall back to jsonschema, where the
``enum`` rewrite (``oneOf`` of constants as ``enum``) accepts and refuses what the form's
own schema does.
"""

import copy
import json
import math
import random
import sys
from functools import cache
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from engine.errors import Problem, ValidationFailed
from engine.forms import compile_acceptance, enum_rewrite, validate_form

ROOT = Path(__file__).parents[1]
FORMS = sorted((ROOT / "forms").glob("*.schema.json"))
PAYLOADS = json.loads((ROOT / "tests" / "fixtures" / "forms-valid-payloads.json").read_text("utf-8"))
BENCH_FORMS = {"ut_intake": "ticket-intake", "ut_diagnose": "ticket-diagnosis", "ut_remote": "ticket-remote",
               "ut_revisit": "ticket-revisit"}

CHOICE = {"type": "string", "oneOf": [{"const": "a", "title": "A", "x-title-zh": "甲"},
                                      {"const": "b", "title": "B", "x-title-zh": "乙"}]}


def _schema(form: str) -> dict:
    return json.loads((ROOT / "forms" / f"{form}.schema.json").read_text("utf-8"))


def _validator(schema) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _bench_payloads() -> dict[str, dict]:
    """The benchmark's payloads by form name."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from scenario import AFTER_SALES
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return {form: AFTER_SALES.data_for(task) for task, form in BENCH_FORMS.items()}


# ----------------------------------------------------------------------------- compiled check: shipped forms

def test_every_shipped_form_compiles_and_has_realistic_payloads():
    assert {p.name.removesuffix(".schema.json") for p in FORMS} == set(PAYLOADS)
    for path in FORMS:
        assert compile_acceptance(json.loads(path.read_text("utf-8"))) is not None, path.name


@pytest.mark.parametrize("form", sorted(PAYLOADS))
def test_realistic_payloads_are_accepted(form):
    schema = _schema(form)
    accepts = compile_acceptance(schema)
    payloads = PAYLOADS[form] + ([_bench_payloads()[form]] if form in BENCH_FORMS.values() else [])
    for payload in payloads:
        assert _validator(schema).is_valid(payload)
        assert accepts(payload) is True
        validate_form(schema, payload)


@cache
def _mutated_corpus() -> tuple[tuple[str, object], ...]:
    """(form, mutated payload): 250 seeded mutants of every realistic and benchmark payload."""
    payloads = [(form, p) for form, ps in sorted(PAYLOADS.items()) for p in ps]
    payloads += sorted(_bench_payloads().items())
    corpus = []
    for index, (form, payload) in enumerate(payloads):
        schema = _schema(form)
        rng = random.Random(f"forms:{form}:{index}")
        corpus += [(form, _mutate(rng, schema, payload)) for _ in range(250)]
    return tuple(corpus)


def test_mutated_payloads_get_jsonschemas_verdict():
    corpus = _mutated_corpus()
    checks = {form: (compile_acceptance(_schema(form)), _validator(_schema(form))) for form in PAYLOADS}
    verdicts = {True: 0, False: 0}
    for form, value in corpus:
        accepts, validator = checks[form]
        expected = validator.is_valid(value)
        assert accepts(value) is expected, (form, value)
        verdicts[expected] += 1
    assert len(corpus) > 7000
    # both answers are exercised in earnest, valid documents included
    assert verdicts[True] > 1000 and verdicts[False] > 3000, verdicts


def test_validate_form_reports_exactly_jsonschemas_errors():
    """End to end on the mutated corpus: accepted iff jsonschema finds no error, else its errors."""
    schemas = {form: _schema(form) for form in PAYLOADS}
    for form, value in _mutated_corpus()[::3]:
        expected = _reference_problems(schemas[form], value)
        try:
            validate_form(schemas[form], value)
        except ValidationFailed as err:
            assert err.problems == expected, (form, value)
        else:
            assert expected == [], (form, value)


def _reference_problems(schema: dict, data) -> list[Problem]:
    """The problems the straightforward path reports: every jsonschema error of the schema as written."""
    problems = []
    for e in sorted(_validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path)
        if e.validator == "required" and isinstance(e.instance, dict):
            problems += [Problem("is required", field=f"{path}/{m}" if path else m)
                         for m in e.validator_value if m not in e.instance]
        else:
            problems.append(Problem(e.message, field=path))
    return problems


# mutations: values a form field may wrongly (or rightly) get
GENERIC = [None, True, False, 0, 1, 1.0, -1, 2.5, 5.0, 6, 10**20, 1e308, math.inf, math.nan, "", " ", "x", "中",
           "😀", "routine", "phone", "PHONE", "2024-02-30", "2024-02-29", "2024-05-20T10:00:00+08:00",
           "2024-05-20T25:00:00+08:00", "2024-05-20t10:00:00z", "2024-05-20T10:00Z", "a@b", "no-at-sign",
           "13812345678", "010-1234567", "zhang.wei", "SN20240518007", [], [1], ["x"], [None], {}, {"a": 1},
           {"score": 5}]


def _tailored(node) -> list:
    """Values at and around the edges of a field's constraints."""
    if not isinstance(node, dict):
        return []
    values = [b["const"] for b in node.get("oneOf", []) if isinstance(b, dict) and "const" in b]
    values += node.get("enum", [])
    for key in ("minLength", "maxLength"):
        for n in (node[key] - 1, node[key], node[key] + 1) if key in node else ():
            if n >= 0:
                values += ["中" * n, "😀" * n, "a" * n]
    for key in ("minimum", "maximum"):
        if key in node:
            m = node[key]
            values += [m - 1, m, m + 1, float(m), float(m + 1), m + 0.5, True, False]
    if node.get("format") == "date-time":
        values += ["2024-02-29T23:59:59+08:00", "2023-02-29T10:00:00+08:00", "2024-05-20T10:00:00.1234567Z",
                   "2024-05-20 10:00:00+08:00", "2024-05-20T10:00:00+0800", "2024-05-20T10:00:00.5-03:30"]
    if node.get("format") == "date":
        values += ["2024-02-29", "2023-02-29", "2024-13-01", "2024-5-1", "20240501"]
    if node.get("format") == "email":
        values += ["a@b.c", "ab.c", "@", "王@例子.中国"]
    if "pattern" in node:
        values += ["13812345678", "12812345678", "0571-88886666", "0571-8888666", "ab", "a", "a b", "zhang.wei",
                   "SN2024051800", "SN20240518007x", "中文名"]
    if "not" in node:
        values += ["routine", "例行回访", "routine check"]
    return values


def _mutate(rng: random.Random, schema: dict, payload) -> object:
    """A copy of ``payload`` with one to three random edits: replaced, removed or added values,
    shortened or grown arrays (values chosen around the schema's constraints or at random)."""
    value = copy.deepcopy(payload)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        path, node = rng.choice(list(_nodes(value)))
        sub = _subschema(schema, path)
        roll = rng.random()
        if isinstance(node, dict) and roll < 0.25:
            known = sorted((sub or {}).get("properties", {})) if isinstance(sub, dict) else []
            key = rng.choice([*known, "unexpected", "备注"])
            node[key] = _pick(rng, _subschema(schema, (*path, key)))
        elif isinstance(node, list) and roll < 0.25:
            _mutate_array(rng, node, sub)
        elif path and roll < 0.45:
            del _at(value, path[:-1])[path[-1]]
        elif path:
            _at(value, path[:-1])[path[-1]] = _pick(rng, sub)
    return value


def _mutate_array(rng: random.Random, items: list, sub) -> None:
    bounds = sub if isinstance(sub, dict) else {}
    what = rng.choice(("append", "pop", "clear", "grow"))
    if what == "append":
        items.append(copy.deepcopy(rng.choice(items)) if items else rng.choice(GENERIC))
    elif what == "pop" and items:
        items.pop(rng.randrange(len(items)))
    elif what == "clear":
        items.clear()
    elif what == "grow" and items and "maxItems" in bounds:
        target = bounds["maxItems"] + rng.choice((0, 1))
        items.extend(copy.deepcopy(items[i % len(items)]) for i in range(target - len(items)))


def _pick(rng: random.Random, sub) -> object:
    tailored = _tailored(sub)
    return copy.deepcopy(rng.choice(tailored if tailored and rng.random() < 0.6 else GENERIC))


def _nodes(value, path=()):
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nodes(v, (*path, i))


def _at(value, path):
    for key in path:
        value = value[key]
    return value


def _subschema(root: dict, path) -> dict | None:
    """The (``$ref``-resolved) schema of the value at ``path``, if the schema names it."""
    node = _deref(root, root)
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get("items") if isinstance(key, int) else node.get("properties", {}).get(key)
        node = _deref(root, node)
    return node


def _deref(root: dict, node):
    while isinstance(node, dict) and "$ref" in node:
        target = _at(root, node["$ref"][2:].split("/"))
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


# ----------------------------------------------------------------------------- compiled check: the semantics

EDGES = [
    ({"type": "integer"}, True, False),  # a bool is not an integer
    ({"type": "integer"}, 1.0, True),  # 1.0 is one
    ({"type": "integer"}, 1.5, False),
    ({"type": "number"}, False, False),
    ({"type": "number", "maximum": 5}, 5.0, True),
    ({"maximum": 5}, True, True),  # not a number: maximum does not apply
    ({"minimum": 1}, "0", True),
    ({"exclusiveMinimum": 1}, 1, False),
    ({"exclusiveMaximum": 1}, 0.999, True),
    ({"type": "string", "maxLength": 2}, "😀😀", True),  # code points, not UTF-16 units or bytes
    ({"type": "string", "maxLength": 2}, "中文字", False),
    ({"type": "string", "minLength": 1}, "", False),
    ({"pattern": "b"}, "abc", True),  # re.search, not a full match
    ({"pattern": "^b"}, "abc", False),
    ({"pattern": "^a"}, 5, True),  # pattern only constrains strings
    ({"pattern": "^\\d+$"}, "١٢٣", True),  # Python's \d: Unicode digits, as jsonschema's re.search
    ({"format": "date"}, "2024-02-30", False),
    ({"format": "date"}, 20240230, True),
    ({"format": "date-time"}, "2024-05-20T10:00:00+08:00", True),
    ({"format": "date-time"}, "2024-05-20T10:00+08:00", False),
    ({"format": "email"}, "no-at-sign", False),
    ({"format": "no-such-format"}, "x", True),
    ({"enum": [1]}, 1.0, True),
    ({"enum": [1]}, True, False),
    ({"enum": ["a", 1]}, "a", True),
    ({"enum": ["a"]}, ["a"], False),
    ({"const": [1, {"a": False}]}, [1.0, {"a": False}], True),
    ({"const": False}, 0, False),
    ({"oneOf": [{"const": 1}, {"const": 1.0}]}, 1, False),  # both branches match
    ({"oneOf": [{"const": True, "title": "yes"}, {"const": 1, "title": "one"}]}, 1, True),
    ({"oneOf": [{"type": "integer"}, {"minimum": 2}]}, 3, False),
    ({"oneOf": [{"type": "integer"}, {"minimum": 2}]}, 2.5, True),
    ({"anyOf": []}, 1, False),
    ({"allOf": []}, 1, True),
    ({"required": ["a"]}, [], True),  # required only constrains objects
    ({"required": ["a"]}, {"a": None}, True),
    ({"properties": {"a": {"type": "string"}}, "additionalProperties": False}, {"a": "x", "b": 2}, False),
    ({"properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}, {"a": "x", "b": 2}, True),
    ({"properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}, {"b": "x"}, False),
    ({"items": {"type": "string"}}, ["a", 1], False),
    ({"items": False}, [], True),
    ({"items": False}, [1], False),
    ({"type": "array", "maxItems": 1}, [[1, 2]], True),
    ({"uniqueItems": True}, [1, 1.0], False),
    ({"uniqueItems": True}, [1, True], True),
    ({"uniqueItems": True}, [{"a": [1]}, {"a": [1.0]}], False),
    ({"if": {"const": 1}, "then": {"type": "integer"}, "else": {"type": "string"}}, "x", True),
    ({"if": {"const": 1}, "then": {"type": "integer"}, "else": {"type": "string"}}, 2, False),
    ({"then": {"type": "string"}}, 5, True),  # then without if does nothing
    ({"not": {"type": "string"}}, "x", False),
    ({"type": ["string", "null"], "minLength": 2}, None, True),
    ({"type": []}, None, False),
    (True, {"anything": 1}, True),
    (False, None, False),
    ({"properties": {"a": False}}, {"a": 1}, False),
    ({"$defs": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/s", "minLength": 2}}},
     {"a": "x"}, False),  # $ref and its siblings both apply
    ({"properties": {"c": CHOICE, "d": {"$ref": "#/properties/c/oneOf/0"}}}, {"c": "b", "d": "b"}, False),
]


@pytest.mark.parametrize(("schema", "value", "valid"), EDGES, ids=lambda v: json.dumps(v, ensure_ascii=False)[:60])
def test_edge_cases_follow_jsonschema(schema, value, valid):
    assert _validator(schema).is_valid(value) is valid
    assert compile_acceptance(schema)(value) is valid


def test_random_schemas_and_values_get_jsonschemas_verdict():
    """Seeded random schemas built from every keyword the compiler handles, checked on random values."""
    rng = random.Random("forms:random-schemas")
    compiled = cases = accepted = 0
    for _ in range(1500):
        defs = {f"d{i}": _random_schema(rng, 1, [f"d{j}" for j in range(i)]) for i in range(rng.randint(0, 2))}
        schema = _random_schema(rng, 0, list(defs))
        if isinstance(schema, dict) and defs:
            schema["$defs"] = defs
        accepts = compile_acceptance(schema)
        if accepts is None:
            continue
        compiled += 1
        validator = _validator(schema)
        for _ in range(12):
            value = _random_value(rng, 0)
            expected = validator.is_valid(value)
            assert accepts(value) is expected, (schema, value)
            cases += 1
            accepted += expected
    assert compiled == 1500
    assert cases * 0.15 < accepted < cases * 0.85, (accepted, cases)


VALUES = [None, True, False, 0, 1, -1, 1.0, 1.5, 2, 3, 2.0, "", "a", "ab", "abc", "b", "中文", "😀", "2024-02-29",
          "2024-02-30", "2024-05-20T10:00:00Z", "x@y", [], [1], [1, 1.0], [True, 1], ["a", "b"], ["a", "a"], {},
          {"a": 1}, {"a": "ab", "b": True}, {"b": None}]
TYPES = ["string", "integer", "number", "boolean", "null", "object", "array"]


def _random_value(rng: random.Random, depth: int):
    roll = rng.random()
    if depth < 2 and roll < 0.2:
        return {k: _random_value(rng, depth + 1) for k in rng.sample(["a", "b", "c"], rng.randint(0, 3))}
    if depth < 2 and roll < 0.35:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return copy.deepcopy(rng.choice(VALUES))


def _random_schema(rng: random.Random, depth: int, defs: list[str]):
    if depth > 2 or rng.random() < 0.15:
        return rng.choice([True, False, {}, {"type": rng.choice(TYPES)}, {"const": rng.choice(VALUES)},
                           {"minimum": 1}, {"maxLength": 1}, {"enum": ["a", "b"]}])
    schema: dict = {"title": "t", "x-title-zh": "标题"} if rng.random() < 0.3 else {}
    if rng.random() < 0.6:
        schema["type"] = rng.choice(TYPES) if rng.random() < 0.8 else rng.sample(TYPES, 2)
    sub = lambda: _random_schema(rng, depth + 1, defs)  # noqa: E731
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["string", "number", "object", "array", "enum", "const", "oneOf", "choices", "anyOf",
                           "allOf", "not", "if", "ref"])
        if kind == "string":
            schema.update(rng.sample([("minLength", rng.randint(0, 2)), ("maxLength", rng.randint(0, 3)),
                                      ("pattern", rng.choice(["^a", "b$", "^[a-c]+$", "中", "\\d"])),
                                      ("format", rng.choice(["date", "date-time", "email", "unknown"]))],
                                     rng.randint(1, 3)))
        elif kind == "number":
            schema.update(rng.sample([(k, rng.choice([0, 1, 1.5, 2, -1])) for k in
                                      ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")],
                                     rng.randint(1, 2)))
        elif kind == "object":
            props = {k: sub() for k in rng.sample(["a", "b"], rng.randint(0, 2))}
            if props or rng.random() < 0.5:
                schema["properties"] = props
            if rng.random() < 0.5:
                schema["required"] = rng.sample(["a", "b", "c"], rng.randint(0, 2))
            if rng.random() < 0.5:
                schema["additionalProperties"] = rng.choice([False, True, sub()])
        elif kind == "array":
            schema.update(rng.sample([("items", sub()), ("minItems", rng.randint(0, 2)),
                                      ("maxItems", rng.randint(0, 2)), ("uniqueItems", rng.random() < 0.7)],
                                     rng.randint(1, 3)))
        elif kind == "enum":
            schema["enum"] = rng.sample(VALUES, rng.randint(0, 4))
        elif kind == "const":
            schema["const"] = rng.choice(VALUES)
        elif kind == "choices":  # labelled constants, sometimes equal ones (1 and 1.0)
            schema["oneOf"] = [{"const": c, "title": f"choice {i}"}
                               for i, c in enumerate(rng.sample(VALUES[:12], rng.randint(1, 4)))]
        elif kind in ("oneOf", "anyOf", "allOf"):
            schema[kind] = [sub() for _ in range(rng.randint(0, 3))]
        elif kind == "not":
            schema["not"] = sub()
        elif kind == "if":
            schema["if"] = sub()
            schema.update(rng.sample([("then", sub()), ("else", sub())], rng.randint(0, 2)))
        elif defs:
            schema["$ref"] = f"#/$defs/{rng.choice(defs)}"
    return schema


def test_a_data_error_inside_the_compiled_check_leaves_the_verdict_to_jsonschema():
    """A value the closures cannot compare (a complex number is a JSON Schema number) is decided
    by jsonschema: accepted where it stops before the comparison, an error where it does not."""
    schema = {"properties": {"n": {"not": {"enum": [1], "minimum": 0}}}}
    with pytest.raises(TypeError):
        compile_acceptance(schema)({"n": 1j})
    validate_form(schema, {"n": 1j})  # jsonschema's "not" stops at the enum
    with pytest.raises(TypeError):
        validate_form({"properties": {"n": {"minimum": 0}}}, {"n": 1j})


# ----------------------------------------------------------------------------- fallback to jsonschema

UNSUPPORTED = [
    # (schema, a valid value, an invalid value)
    ({"type": "object", "patternProperties": {"^x_": {"type": "integer"}}}, {"x_a": 1}, {"x_a": "1"}),
    ({"type": "object", "properties": {"a": {}}, "unevaluatedProperties": False}, {"a": 1}, {"b": 1}),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, {"a": 1, "b": 2}, {"a": 1}),
    ({"type": "object", "propertyNames": {"maxLength": 2}}, {"ab": 1}, {"abc": 1}),
    ({"type": "object", "minProperties": 1}, {"a": 1}, {}),
    ({"type": "array", "prefixItems": [{"type": "string"}]}, ["a", 1], [1]),
    ({"type": "array", "contains": {"const": 1}}, [0, 1], [0]),
    ({"type": "number", "multipleOf": 0.5}, 1.5, 1.2),
    ({"definitions": {"s": {"type": "string"}}, "$ref": "#/definitions/s"}, "x", 1),
    ({"$defs": {"s": {"$anchor": "s", "type": "string"}}, "$ref": "#s"}, "x", 1),
    ({"$defs": {"s": {"$id": "https://careflow.example/s", "type": "string"}}, "$ref": "#/$defs/s"}, "x", 1),
    # the pointer passes a resource with its own $id: "#/$defs/c" inside it means that resource's c
    ({"$defs": {"a": {"$id": "https://careflow.example/a",
                      "$defs": {"b": {"$ref": "#/$defs/c"}, "c": {"type": "integer"}}},
                "c": {"type": "string"}}, "$ref": "#/$defs/a/$defs/b"}, 5, "x"),
    ({"$defs": {"list": {"type": "array", "items": {"$ref": "#/$defs/list"}}}, "$ref": "#/$defs/list"},
     [[], [[]]], [[1]]),
    ({"$ref": "#/$defs/a~1b", "$defs": {"a/b": {"type": "string"}}}, "x", 1),
    ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"}, "x", 1),
]


@pytest.mark.parametrize(("schema", "valid", "invalid"), UNSUPPORTED,
                         ids=lambda v: json.dumps(v, ensure_ascii=False)[:60])
def test_unsupported_schemas_fall_back_to_jsonschema(schema, valid, invalid):
    assert compile_acceptance(schema) is None
    validate_form(schema, valid)
    with pytest.raises(ValidationFailed) as err:
        validate_form(schema, invalid)
    assert err.value.problems == _reference_problems(schema, invalid)


@pytest.mark.parametrize("schema", [{"type": "text"}, {"minLength": "2"}, {"pattern": "("}, {"pattern": None}, {"required": "a"},
                                    {"properties": {"a": 1}},
                                    {"items": [{"type": "string"}]}, {"additionalProperties": None},
                                    {"enum": "ab"}, {"oneOf": {"const": 1}}, {"uniqueItems": 1},
                                    {"properties": {"a": {"$id": "https://careflow.example/a"}}}])
def test_malformed_keywords_are_left_to_jsonschema(schema):
    assert compile_acceptance(schema) is None


# ----------------------------------------------------------------------------- enum rewrite (fallback path)

def test_one_of_constants_becomes_enum():
    schema = {"type": "object", "properties": {"c": CHOICE}}
    rewritten = enum_rewrite(schema)
    assert rewritten["properties"]["c"] == {"type": "string", "enum": ["a", "b"]}
    assert schema["properties"]["c"]["oneOf"]  # the form's own schema is untouched


@pytest.mark.parametrize("branches", [
    [{"const": 1}, {"const": 1.0}],  # equal in JSON Schema: oneOf refuses 1, an enum would accept it
    [{"const": "a"}, {"const": "a", "title": "again"}],
    [{"const": "a"}, {"type": "string"}],  # not a constant
    [{"const": "a", "minLength": 1}],  # an assertion besides the constant
])
def test_one_of_that_is_not_an_enum_stays(branches):
    schema = {"oneOf": branches}
    assert enum_rewrite(schema) is schema


def test_true_and_one_are_distinct_constants():
    assert enum_rewrite({"oneOf": [{"const": True}, {"const": 1}]}) == {"enum": [True, 1]}


def test_annotations_are_not_validation_keywords():
    from engine.forms import _ANNOTATIONS

    assert not _ANNOTATIONS & set(Draft202012Validator.VALIDATORS)


@pytest.mark.parametrize("path", FORMS, ids=lambda p: p.name)
def test_shipped_forms_accept_and_refuse_the_same_values(path):
    schema = json.loads(path.read_text("utf-8"))
    original = _validator(schema)
    fast = _validator(enum_rewrite(schema))
    for value in _values_for(schema, {}):
        assert fast.is_valid(value) == original.is_valid(value), value


def test_valid_submissions_with_every_choice_agree():
    """The benchmark's valid payloads, with each choice field set to each constant and to wrong values."""
    accepted = 0
    for form, base in _bench_payloads().items():
        schema = _schema(form)
        original = _validator(schema)
        fast = _validator(enum_rewrite(schema))
        accepts = compile_acceptance(schema)
        assert original.is_valid(base) and fast.is_valid(base) and accepts(base)
        for value in _values_for(schema, base):
            assert fast.is_valid(value) == original.is_valid(value) == accepts(value), value
            accepted += original.is_valid(value)
    assert accepted > 10  # the choices were really exercised on valid documents


def test_errors_come_from_the_form_schema():
    schema = {"type": "object", "required": ["c"], "properties": {"c": CHOICE}}
    validate_form(schema, {"c": "a"})
    with pytest.raises(ValidationFailed) as err:
        validate_form(schema, {"c": "z"})
    [problem] = err.value.problems
    assert problem.field == "c" and "is not valid under any of the given schemas" in problem.message
    with pytest.raises(ValidationFailed) as err:
        validate_form(schema, {})
    assert [(p.field, p.message) for p in err.value.problems] == [("c", "is required")]


def test_a_ref_into_one_of_keeps_the_schema_as_written():
    schema = {"type": "object", "properties": {"c": CHOICE, "d": {"$ref": "#/properties/c/oneOf/0"}}}
    validate_form(schema, {"c": "b", "d": "a"})
    with pytest.raises(ValidationFailed):
        validate_form(schema, {"c": "b", "d": "b"})


def _values_for(schema: dict, base: dict) -> list:
    """``base`` with each of the schema's choices set to each constant in turn, and to wrong values."""
    choices: list[tuple[list[str], list]] = []

    def walk(node, path):
        if isinstance(node, dict):
            if isinstance(node.get("oneOf"), list) and all(isinstance(b, dict) and "const" in b
                                                           for b in node["oneOf"]):
                choices.append((path, [b["const"] for b in node["oneOf"]]))
            for key, sub in (node.get("properties") or {}).items():
                walk(sub, [*path, key])
            if isinstance(node.get("items"), dict):
                walk(node["items"], [*path, 0])

    walk(schema, [])
    values = []
    for path, consts in choices:
        if 0 in path:
            continue
        for candidate in [*consts, "no-such-choice", 7, None, True]:
            value = copy.deepcopy(base)
            node = value
            for key in path[:-1]:
                node = node.setdefault(key, {}) if isinstance(node.get(key), dict | None) else {}
            node[path[-1]] = candidate
            values.append(value)
    return values
