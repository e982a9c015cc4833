"""Form validation: the fast acceptance path (``oneOf`` of constants as ``enum``) accepts and
refuses exactly what the form's own schema does, and errors come from the form's schema."""

import copy
import json
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from engine.errors import ValidationFailed
from engine.forms import enum_rewrite, validate_form

ROOT = Path(__file__).parents[1]
FORMS = sorted((ROOT / "forms").glob("*.schema.json"))

CHOICE = {"type": "string", "oneOf": [{"const": "a", "title": "A", "x-title-zh": "甲"},
                                      {"const": "b", "title": "B", "x-title-zh": "乙"}]}


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


@pytest.mark.parametrize("path", FORMS, ids=lambda p: p.name)
def test_shipped_forms_accept_and_refuse_the_same_values(path):
    schema = json.loads(path.read_text("utf-8"))
    original = Draft202012Validator(schema, format_checker=FormatChecker())
    fast = Draft202012Validator(enum_rewrite(schema), format_checker=FormatChecker())
    for value in _values_for(schema, {}):
        assert fast.is_valid(value) == original.is_valid(value), value


def test_valid_submissions_with_every_choice_agree():
    """The benchmark's valid payloads, with each choice field set to each constant and to wrong values."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from scenario import AFTER_SALES
    finally:
        sys.path.remove(str(ROOT / "bench"))
    forms = {"ut_intake": "ticket-intake", "ut_diagnose": "ticket-diagnosis", "ut_remote": "ticket-remote",
             "ut_revisit": "ticket-revisit"}
    accepted = 0
    for task, form in forms.items():
        schema = json.loads((ROOT / "forms" / f"{form}.schema.json").read_text("utf-8"))
        original = Draft202012Validator(schema, format_checker=FormatChecker())
        fast = Draft202012Validator(enum_rewrite(schema), format_checker=FormatChecker())
        base = AFTER_SALES.data_for(task)
        assert original.is_valid(base) and fast.is_valid(base)
        for value in _values_for(schema, base):
            assert fast.is_valid(value) == original.is_valid(value), value
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
