"""BPMN files uploaded from other modelers (Camunda Modeler, Signavio, bpmn.io...).

``deploy`` validates in phases and stops at the first failing phase; for an upload the
owner wants the whole list of what Careflow cannot run at once. ``check_upload`` reads
each file with the hardened parser (hostile files stop there: DOCTYPE/entities, oversize,
excessive nesting, malformed XML) and lists every element, script language and expression
language the engine cannot execute. ``deploy_upload`` adds the deploy validation's own
problems and deploys only when there are none.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from engine.bpmn_xml import BPMN_NS, local, parse_bpmn_bytes
from engine.deploy import Bundle, DeployResult, validate_bundle
from engine.errors import DeployError, Problem

if TYPE_CHECKING:
    from engine.runtime import Careflow

# Elements Careflow does not execute (the parser may know some of them, the engine does not run them).
UNSUPPORTED = {
    "complexGateway": "use exclusive, inclusive or parallel gateways",
    "businessRuleTask": "use a script task (decision tables are not deployed with the process)",
    "serviceTask": "use a script task that calls a host function provided by a plugin",
    "adHocSubProcess": "model the steps as a normal subprocess",
    "dataStoreReference": "keep the data in task data or in a plugin; data stores are not connected",
    "compensateEventDefinition": "compensation is not supported; model the undo step explicitly",
    "linkEventDefinition": "connect the flow directly instead of through link events",
    "choreographyTask": "choreographies are not executable; model one process per participant",
    "subChoreography": "choreographies are not executable; model one process per participant",
    "callChoreography": "choreographies are not executable; model one process per participant",
    "callConversation": "conversations are not executable",
}
_ROOT_UNSUPPORTED = {
    "dataStore": "data stores are not connected to Careflow; keep the data in task data or in a plugin",
    "choreography": "choreographies are not executable; model one process per participant",
}
_PYTHON = {"", "python", "text/python", "text/x-python", "application/x-python"}
_JUEL = re.compile(r"^\s*[$#]\{")


def check_upload(files: dict[str, bytes], max_bytes: int) -> list[Problem]:
    """Everything in uploaded BPMN files that Careflow refuses or cannot run, in one list.

    Hostile or unreadable files give their parse problem only (nothing else is looked at).
    """
    return _check(files, max_bytes)[0]


def _check(files: dict[str, bytes], max_bytes: int) -> tuple[list[Problem], bool]:
    """(problems, whether every file could be read)."""
    if not files:
        return [Problem("nothing to deploy: no .bpmn file given")], False
    problems: list[Problem] = []
    trees = {}
    for name, content in files.items():
        tree, errs = parse_bpmn_bytes(content, name, max_bytes)
        problems += errs
        if tree is not None:
            trees[name] = tree
    if problems:
        return problems, False
    executable = False
    for name, tree in trees.items():
        root = tree.getroot()
        for el in root:
            if isinstance(el.tag, str) and el.tag.startswith(f"{{{BPMN_NS}}}") and local(el.tag) in _ROOT_UNSUPPORTED:
                problems.append(_unsupported(el, name, _ROOT_UNSUPPORTED[local(el.tag)]))
        for proc in root.iter(f"{{{BPMN_NS}}}process"):
            executable = executable or proc.get("isExecutable", "true") != "false"
        for el in root.iter():
            if not isinstance(el.tag, str) or not el.tag.startswith(f"{{{BPMN_NS}}}"):
                continue
            kind = local(el.tag)
            if kind in UNSUPPORTED:
                owner = el.getparent() if kind.endswith("EventDefinition") else el
                problems.append(_unsupported(owner, name, UNSUPPORTED[kind], kind))
            elif kind == "scriptTask":
                fmt = (el.get("scriptFormat") or "").strip().lower()
                if fmt not in _PYTHON:
                    problems.append(Problem(f"script is written in {el.get('scriptFormat')}; Careflow runs Python "
                                            "scripts", file=name, element_id=el.get("id"), line=el.sourceline,
                                            hint="rewrite the script in (restricted) Python"))
            elif kind == "conditionExpression":
                problems += _expression_language(el, name, "condition")
    if not executable:
        first = next(iter(trees))
        problems.append(Problem('no executable process: every <process> has isExecutable="false"', file=first,
                                hint='set isExecutable="true" on the process to run (in the modeler: '
                                     '"Executable" in the process properties)'))
    return problems, True


def _unsupported(el, filename: str, hint: str, kind: str | None = None) -> Problem:
    return Problem(f"<{kind or local(el.tag)}> cannot be executed by Careflow", file=filename,
                   element_id=el.get("id"), line=el.sourceline, hint=hint)


def _expression_language(el, filename: str, what: str) -> list[Problem]:
    text = (el.text or "").strip()
    flow = el.getparent()
    if _JUEL.match(text):
        language = "JUEL (Camunda 7)"
    elif text.startswith("="):
        language = "FEEL (Camunda 8)"
    else:
        return []
    return [Problem(f"{what} '{text}' is written in {language}; Careflow evaluates Python expressions",
                    file=filename, element_id=flow.get("id"), line=el.sourceline,
                    hint="write it as a Python expression over the task data, e.g. amount > 100")]


def deploy_upload(cf: Careflow, files: dict[str, bytes], forms: dict[str, bytes | str | dict] | None = None, *,
                  author: str | None = None, comment: str | None = None) -> list[DeployResult]:
    """Deploy uploaded BPMN files (with optional forms) if Careflow can run them.

    Raises ``DeployError`` with every problem found (``check_upload`` plus the deploy
    validation), each located by file, line and element id; nothing is written then.
    """
    max_bytes = cf.settings.max_bpmn_bytes
    problems, readable = _check(files, max_bytes)
    bundle = Bundle(bpmn=dict(files), forms={n: _form_bytes(v) for n, v in (forms or {}).items()})
    if problems:
        if readable:
            # the language problems already say why these scripts and conditions do not compile
            flagged = {(p.file, p.element_id) for p in problems if " is written in " in p.message}
            try:
                validate_bundle(bundle, max_bytes)
            except DeployError as err:
                problems += [p for p in err.problems if (p.file, p.element_id) not in flagged
                             or not p.message.startswith(("script does not compile", "condition "))]
        raise DeployError(_dedupe(problems))
    return cf.deploy(bundle, author=author, comment=comment)


def _form_bytes(value: bytes | str | dict) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.file, p.element_id, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out

