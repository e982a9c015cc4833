"""The OpenAPI 3.1 description of ``/api/v1`` (kept next to the routes; a test checks that
every API route is documented and every documented path exists)."""

from __future__ import annotations

from typing import Any

from flask import url_for


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": {"$ref": "#/components/responses/Invalid"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
    "404": {"$ref": "#/components/responses/NotFound"},
}


def _op(summary: str, ok: dict, *, params: list | None = None, body: dict | None = None,
        conflict: bool = False, status: str = "200") -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok, **ERRORS}}
    if conflict:
        op["responses"]["409"] = {"$ref": "#/components/responses/Conflict"}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _q(name: str, description: str, type_: str = "string", enum: list | None = None) -> dict:
    schema: dict[str, Any] = {"type": type_}
    if enum:
        schema["enum"] = enum
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _path(name: str, type_: str = "string") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": type_}}


def document() -> dict:
    """The OpenAPI document."""
    page = {"type": "object", "required": ["items", "page", "per_page", "total"],
            "properties": {"items": {"type": "array", "items": _ref("Task")}, "page": {"type": "integer"},
                           "per_page": {"type": "integer"}, "total": {"type": "integer"}}}
    inst_page = {**page, "properties": {**page["properties"],
                                        "items": {"type": "array", "items": _ref("InstanceSummary")}}}
    step = {"type": "object", "properties": {"instance_id": {"type": "integer"}, "status": {"type": "string"},
                                             "ready_tasks": {"type": "array", "items": {"type": "object"}}}}
    task_id = _path("task_id")
    instance_id = _path("instance_id", "integer")
    paging = [_q("page", "page number, from 1", "integer"), _q("per_page", "items per page (max 200)", "integer")]
    paths = {
        "/me": {"get": _op("The user the token acts as", _json(_ref("User"), "the user"))},
        "/tasks": {"get": _op("Open tasks in due order", _json(page, "a page of tasks"), params=[
            _q("view", "inbox | mine | groups | team | all (depends on the role)",
               enum=["inbox", "mine", "groups", "team", "all"]),
            _q("priority", "urgent | important | general", enum=["urgent", "important", "general"]),
            _q("type", "task type (BPMN element id)"), _q("customer", "customer id, or start of the name"),
            _q("process", "process id"), *paging])},
        "/tasks/{task_id}": {"get": _op("One task with its form", _json(_ref("TaskDetail"), "the task"),
                                        params=[task_id])},
        "/tasks/{task_id}/claim": {"post": _op("Claim an unassigned task of my group", _json(_ref("Task"), "claimed"),
                                               params=[task_id], conflict=True)},
        "/tasks/{task_id}/release": {"post": _op("Give a task back to its group", _json(_ref("Task"), "released"),
                                                 params=[task_id], conflict=True)},
        "/tasks/{task_id}/reassign": {"post": _op(
            "Give a task to someone else (supervisors, admins)", _json(_ref("Task"), "reassigned"),
            params=[task_id], conflict=True,
            body={"type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}})},
        "/tasks/{task_id}/complete": {"post": _op(
            "Complete a task I hold", _json(step, "completed; the instance's next ready tasks"), params=[task_id],
            conflict=True, body={"type": "object", "properties": {"data": {"type": "object"}}})},
        "/instances": {
            "get": _op("Instances I may see, newest first", _json(inst_page, "a page of instances"), params=[
                _q("status", "running | completed | failed | cancelled"), _q("process", "process id"),
                _q("key", "business key, e.g. a ticket number"), *paging]),
            "post": _op("Start an instance", _json(step, "started"), status="201", body={
                "type": "object", "required": ["process_id"],
                "properties": {"process_id": {"type": "string"}, "data": {"type": "object"}}}),
        },
        "/instances/{instance_id}": {"get": _op("An instance with its data and my visible tasks",
                                                _json(_ref("Instance"), "the instance"), params=[instance_id])},
        "/instances/{instance_id}/history": {"get": _op(
            "The instance's step history (audit rows)",
            _json({"type": "array", "items": _ref("AuditRow")}, "audit rows in order"), params=[instance_id])},
        "/customers/{customer_id}": {"get": _op("A customer with every contact",
                                                _json({"type": "object"}, "the customer"),
                                                params=[_path("customer_id")])},
        "/tickets": {"get": _op("Tickets I may see, newest first", _json({"type": "object"}, "tickets"),
                                params=[_q("status", "ticket status, e.g. diagnosing"), *paging])},
        "/tickets/{number}": {"get": _op("One ticket: facts, deadlines of every round, status history",
                                         _json({"type": "object"}, "the ticket"), params=[_path("number")])},
    }
    error = {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string"}, "message": {"type": "string"},
        "field_errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}}}
    nullable_str = {"type": ["string", "null"]}
    task = {"type": "object", "properties": {
        "id": {"type": "string"}, "instance_id": {"type": "integer"}, "process_id": {"type": "string"},
        "name": {"type": "string"}, "title": nullable_str, "lane": nullable_str, "group": nullable_str,
        "assignee": nullable_str, "status": {"type": "string"}, "priority": nullable_str,
        "customer_id": nullable_str, "customer_name": nullable_str,
        "created_at": {"type": "string", "format": "date-time"},
        "due_at": {"type": ["string", "null"], "format": "date-time"}}}
    try:
        server = url_for("api.me", _external=False).rsplit("/me", 1)[0]
    except RuntimeError:
        server = "/api/v1"
    return {
        "openapi": "3.1.0",
        "info": {"title": "Careflow API", "version": "1",
                 "description": "Tasks, instances, customers and tickets of Careflow. Authenticate with "
                                "`Authorization: Bearer <token>` (`careflow tokens create USER`)."},
        "servers": [{"url": server}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": error,
                "Task": task,
                "TaskDetail": {"allOf": [_ref("Task"), {"type": "object", "properties": {
                    "form": {"type": ["object", "null"], "description": "the form's JSON Schema"},
                    "instructions": nullable_str}}]},
                "InstanceSummary": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "process_id": {"type": "string"}, "status": {"type": "string"},
                    "business_key": nullable_str, "started_by": nullable_str}},
                "Instance": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "process_id": {"type": "string"}, "version": {"type": "integer"},
                    "status": {"type": "string"}, "data": {"type": "object"},
                    "tasks": {"type": "array", "items": _ref("Task")}}},
                "AuditRow": {"type": "object", "properties": {
                    "seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
                    "actor": {"type": "string"}, "action": {"type": "string"}, "label": {"type": "string"},
                    "task_name": nullable_str, "data_diff": {"type": ["object", "null"]}}},
                "User": {"type": "object", "properties": {
                    "username": {"type": "string"}, "role": {"type": "string"},
                    "groups": {"type": "array", "items": {"type": "string"}}}},
            },
            "responses": {
                "Invalid": _json(_ref("Error"), "invalid input, with field errors"),
                "Unauthorized": _json(_ref("Error"), "no or bad token"),
                "Forbidden": _json(_ref("Error"), "the role may not do this"),
                "NotFound": _json(_ref("Error"), "no such object, or not visible to this user"),
                "Conflict": _json(_ref("Error"), "the task is no longer open or changed meanwhile"),
            },
        },
    }
