"""Deploy: BPMN files plus the JSON Schema forms they reference become process versions.

Same content = same version (checksum over the process's own files and forms); changed
content = a new version; old versions stay and instances keep the version they started on.
Everything is validated before anything is written, and every problem is reported with
file, element id, line and what to do.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for
from lxml import etree
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.spiff.parser import VALIDATOR
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.bpmn_xml import BPMN_NS, NSMAP, element_lines, local, parse_bpmn_bytes
from engine.clock import utcnow
from engine.errors import DeployError, Problem
from engine.models import ProcessVersion
from engine.sandbox import SandboxEnvironment, compile_script

FORM_PROPERTY = "formJsonSchemaFilename"
UI_FORM_PROPERTY = "formUiSchemaFilename"

# BPMN elements inside a process that the engine can execute or safely ignores.
_EXECUTABLE = set(SpiffBpmnParser.PARSER_CLASSES) | set(SpiffBpmnParser.OVERRIDE_PARSER_CLASSES)
_UNSUPPORTED_HINTS = {
    "complexGateway": "use exclusive, inclusive or parallel gateways",
    "businessRuleTask": "use a script task (decision tables are not deployed with the process)",
    "serviceTask": "use a script task that calls a host function provided by a plugin",
    "adHocSubProcess": "model the steps as a normal subprocess",
    "compensateEventDefinition": "compensation is not supported; model the undo step explicitly",
    "linkEventDefinition": "connect the flow directly instead of through link events",
}
_STRUCTURAL = {
    "sequenceFlow", "laneSet", "lane", "flowNodeRef", "childLaneSet", "textAnnotation", "association",
    "dataObject", "dataObjectReference", "dataStoreReference", "dataInputAssociation", "dataOutputAssociation",
    "ioSpecification", "dataInput", "dataOutput", "inputSet", "outputSet", "documentation", "extensionElements",
    "property", "group", "category", "incoming", "outgoing", "conditionExpression", "script",
    "standardLoopCharacteristics", "multiInstanceLoopCharacteristics", "loopCondition", "loopCardinality",
    "completionCondition", "loopDataInputRef", "loopDataOutputRef", "inputDataItem", "outputDataItem",
    "timerEventDefinition", "messageEventDefinition", "signalEventDefinition", "errorEventDefinition",
    "escalationEventDefinition", "terminateEventDefinition", "cancelEventDefinition",
    "conditionalEventDefinition", "timeDuration", "timeDate", "timeCycle", "condition", "sourceRef", "targetRef",
    "transformation", "assignment", "from", "to", "text", "messageFlow", "humanPerformer",
    "potentialOwner", "resourceAssignmentExpression", "formalExpression", "dataState", "rendering",
}
_FLOW_CONTAINERS = {"process", "subProcess", "transaction", "adHocSubProcess"}
_ISO_BARE = re.compile(r"^(R\d*/)?P[0-9YMWDTHS.]+$|^\d{4}-\d{2}-\d{2}(T[0-9:.]+)?(Z|[+-]\d{2}:?\d{2})?$")
_NAME_ERROR = re.compile(r"name '([^']+)' is not defined")


@dataclass
class Bundle:
    """Files to deploy: BPMN documents and the forms available to them."""

    bpmn: dict[str, bytes] = field(default_factory=dict)
    forms: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path], forms_dirs: Iterable[str | Path] = ()) -> Bundle:
        """Collect ``.bpmn`` files (and folders of them) and the JSON forms next to them.

        Forms are looked up in ``forms_dirs``, in each BPMN file's folder, in its
        ``forms/`` subfolder and in a sibling ``forms/`` folder (``workflows/../forms``).
        """
        bundle = cls()
        form_dirs: list[Path] = [Path(d) for d in forms_dirs]
        problems: list[Problem] = []
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                files = sorted(path.glob("*.bpmn")) + sorted(path.glob("*.json"))
                if not any(f.suffix == ".bpmn" for f in files):
                    problems.append(Problem("folder holds no .bpmn file", file=str(path)))
            elif path.exists():
                files = [path]
            else:
                problems.append(Problem("no such file or folder", file=str(path)))
                continue
            for f in files:
                if f.suffix == ".json":
                    bundle.forms[f.name] = f.read_bytes()
                else:
                    bundle.bpmn[f.name] = f.read_bytes()
                    form_dirs += [f.parent, f.parent / "forms", f.parent.parent / "forms"]
        if problems:
            raise DeployError(problems)
        for d in form_dirs:
            if d.is_dir():
                for f in sorted(d.glob("*.json")):
                    bundle.forms.setdefault(f.name, f.read_bytes())
        return bundle


@dataclass
class ProcessPlan:
    """What deploy found for one executable process, before it is written."""

    process_id: str
    name: str | None
    files: dict[str, str]
    forms: dict[str, dict]
    form_checksums: dict[str, str]
    checksum: str
    warnings: list[str]
    called_only: bool = False


@dataclass
class DeployResult:
    """One process version that deploy created or found unchanged."""

    process_id: str
    version: int
    version_id: int
    checksum: str
    created: bool
    warnings: list[str]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return self.__dict__.copy()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def validate_bundle(bundle: Bundle, max_bytes: int = 5 * 1024 * 1024) -> list[ProcessPlan]:
    """Check everything deploy checks; return one plan per executable process or raise ``DeployError``."""
    if not bundle.bpmn:
        raise DeployError([Problem("nothing to deploy: no .bpmn file given")])
    problems: list[Problem] = []
    trees: dict[str, etree._ElementTree] = {}
    for name, content in bundle.bpmn.items():
        tree, errs = parse_bpmn_bytes(content, name, max_bytes)
        problems += errs
        if tree is not None:
            trees[name] = tree
    for name, tree in trees.items():
        problems += _xsd_problems(tree, name)
    if problems:
        raise DeployError(problems)

    for name, tree in trees.items():
        problems += _unsupported_elements(tree, name)
        problems += _cycle_problems(tree.getroot(), name)
    if problems:
        raise DeployError(problems)

    parser = SpiffBpmnParser()
    process_file: dict[str, str] = {}
    for name, tree in trees.items():
        for proc in tree.getroot().iter(f"{{{BPMN_NS}}}process"):
            pid = proc.get("id")
            if pid in process_file:
                problems.append(Problem(f"process id '{pid}' is defined in both {process_file[pid]} and {name}",
                                        file=name, element_id=pid, line=proc.sourceline,
                                        hint="give each process a unique id"))
            process_file[pid] = name
        try:
            parser.add_bpmn_xml(tree.getroot(), filename=name)
        except ValidationException as err:
            problems.append(_problem_from_validation(err, name, trees))
    if problems:
        raise DeployError(problems)

    forms, form_problems = _load_forms(bundle)
    called = {el.get("calledElement") for tree in trees.values()
              for el in tree.getroot().iter(f"{{{BPMN_NS}}}callActivity")}
    plans: list[ProcessPlan] = []
    executable = [pid for name, tree in trees.items() for proc in tree.getroot().iter(f"{{{BPMN_NS}}}process")
                  if (pid := proc.get("id")) and proc.get("isExecutable", "true") != "false"]
    if not executable:
        problems.append(Problem("no executable process: every <process> has isExecutable=\"false\"",
                                file=next(iter(trees)), hint="set isExecutable=\"true\" on the process to run"))
    for pid in executable:
        try:
            parser.get_spec(pid)
            subs = parser.get_subprocess_specs(pid)
        except ValidationException as err:
            problems.append(_problem_from_validation(err, process_file.get(pid), trees))
            continue
        needed_ids = [pid, *subs]
        files = sorted({process_file[p] for p in needed_ids if p in process_file})
        used_forms: set[str] = set()
        warnings: list[str] = []
        for fname in files:
            p, used, w = _check_elements(trees[fname], fname, forms, form_problems)
            problems += p
            used_forms |= used
            warnings += w
        form_map = {f: forms[f] for f in sorted(used_forms) if f in forms}
        file_texts = {f: bundle.bpmn[f].decode("utf-8") for f in files}
        checksum = _sha(_canonical({"bpmn": file_texts, "forms": form_map, "process": pid}))
        plans.append(ProcessPlan(
            process_id=pid, name=_process_name(trees[process_file[pid]], pid), files=file_texts, forms=form_map,
            form_checksums={f: _sha(_canonical(s)) for f, s in form_map.items()}, checksum=checksum,
            warnings=sorted(set(warnings)), called_only=pid in called,
        ))
    if problems:
        raise DeployError(_dedupe(problems))
    return plans


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.file, p.element_id, p.line, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _process_name(tree: etree._ElementTree, pid: str) -> str | None:
    for proc in tree.getroot().iter(f"{{{BPMN_NS}}}process"):
        if proc.get("id") == pid:
            return proc.get("name")
    return None


def _xsd_problems(tree: etree._ElementTree, filename: str) -> list[Problem]:
    validator = VALIDATOR
    validator.preprocess(tree.getroot())
    if validator.validator.validate(tree):
        return []
    out = []
    for err in list(validator.validator.error_log)[:20]:
        out.append(Problem(f"not valid BPMN 2.0: {err.message}", file=filename, line=err.line,
                           hint="the BPMN 2.0 schema (XSD) rejects this element or attribute"))
    return out


def _problem_from_validation(err: ValidationException, filename: str | None, trees) -> Problem:
    fname = getattr(err, "file_name", None) or filename
    element_id = getattr(err, "id", None) or None
    line = getattr(err, "line_number", None) or None
    if not line and element_id and fname in trees:
        line = element_lines(trees[fname]).get(element_id)
    message = str(err).split("\nSource Details")[0].strip()
    return Problem(message, file=fname, element_id=element_id, line=line)


def _unsupported_elements(tree: etree._ElementTree, filename: str) -> list[Problem]:
    out = []
    for container in tree.getroot().iter():
        if not isinstance(container.tag, str) or not container.tag.startswith(f"{{{BPMN_NS}}}"):
            continue
        if local(container.tag) not in _FLOW_CONTAINERS:
            continue
        for el in container:
            if not isinstance(el.tag, str) or not el.tag.startswith(f"{{{BPMN_NS}}}"):
                continue
            name = local(el.tag)
            bad = [name] if el.tag not in _EXECUTABLE and name not in _STRUCTURAL else []
            bad += [local(d.tag) for d in el if isinstance(d.tag, str) and local(d.tag) in _UNSUPPORTED_HINTS]
            for b in bad:
                out.append(Problem(f"<{b}> cannot be executed by Careflow", file=filename,
                                   element_id=el.get("id"), line=el.sourceline,
                                   hint=_UNSUPPORTED_HINTS.get(b, "remove it or replace it with a supported element")))
    return out


def _load_forms(bundle: Bundle) -> tuple[dict[str, dict], dict[str, str]]:
    forms: dict[str, dict] = {}
    problems: dict[str, str] = {}
    for name, raw in bundle.forms.items():
        try:
            schema = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            problems[name] = f"form {name} is not valid JSON: {err}"
            continue
        if not isinstance(schema, dict):
            problems[name] = f"form {name} is not a JSON Schema object"
            continue
        try:
            validator_for(schema, default=Draft202012Validator).check_schema(schema)
        except SchemaError as err:
            path = "/".join(str(p) for p in err.path) or "(root)"
            problems[name] = f"form {name} is not a valid JSON Schema at {path}: {err.message}"
            continue
        forms[name] = schema
    return forms, problems


def _properties(el: etree._Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in el.iterfind("bpmn:extensionElements/spiffworkflow:properties/"
                                                                 "spiffworkflow:property", NSMAP)}


def _check_elements(tree, filename, forms, form_problems) -> tuple[list[Problem], set[str], list[str]]:
    """Lanes and forms of human tasks, scripts, conditions, timers and loops of one file."""
    problems: list[Problem] = []
    warnings: list[str] = []
    used_forms: set[str] = set()
    root = tree.getroot()
    lane_of = {ref.text.strip(): lane.get("name") or lane.get("id")
               for lane in root.iter(f"{{{BPMN_NS}}}lane")
               for ref in lane.iterfind("bpmn:flowNodeRef", NSMAP) if ref.text}

    def where(el, message, hint=None):
        return Problem(message, file=filename, element_id=el.get("id"), line=el.sourceline, hint=hint)

    for tag in ("userTask", "manualTask", "task"):
        for el in root.iter(f"{{{BPMN_NS}}}{tag}"):
            if not _inherits_lane(el, lane_of):
                problems.append(where(el, f"{tag} '{el.get('name') or el.get('id')}' is in no lane",
                                      "put it in a lane; the lane decides which group gets the task"))
            props = _properties(el)
            form = props.get(FORM_PROPERTY)
            if tag == "userTask" and not form:
                problems.append(where(el, "user task has no form",
                                      f"add a spiffworkflow:property '{FORM_PROPERTY}' naming a JSON Schema file"))
            if form:
                used_forms.add(form)
                if form in form_problems:
                    problems.append(where(el, form_problems[form], "fix the JSON Schema file"))
                elif form not in forms:
                    problems.append(where(el, f"form file '{form}' was not found",
                                          "put it in the forms/ folder next to the workflows or pass it to deploy"))
            due_in = props.get("dueIn")
            if due_in:
                try:
                    TimerEventDefinition.parse_iso_duration(due_in)
                except Exception:
                    problems.append(where(el, f"dueIn '{due_in}' is not an ISO 8601 duration", "e.g. PT24H or P3D"))
            for key in ("dueAt", "assignee"):
                if props.get(key):
                    problems += _expression_problems(el, props[key], filename, f"{key} property")

    for el in root.iter(f"{{{BPMN_NS}}}scriptTask"):
        script = el.findtext("bpmn:script", namespaces=NSMAP)
        if not script or not script.strip():
            problems.append(where(el, "script task has no script", "write the script or use a plain task"))
        else:
            problems += _script_problems(el, script, filename)
    for tag in ("preScript", "postScript"):
        for s in root.iter(f"{{{NSMAP['spiffworkflow']}}}{tag}"):
            if s.text and s.text.strip():
                problems += _script_problems(s.getparent().getparent(), s.text, filename)

    for flow in root.iter(f"{{{BPMN_NS}}}sequenceFlow"):
        cond = flow.findtext("bpmn:conditionExpression", namespaces=NSMAP)
        if cond and cond.strip():
            problems += _expression_problems(flow, cond, filename, "condition")
    for tag in ("loopCondition", "loopCardinality", "completionCondition"):
        for c in root.iter(f"{{{BPMN_NS}}}{tag}"):
            if c.text and c.text.strip():
                problems += _expression_problems(c.getparent().getparent(), c.text, filename, tag)

    for timer in root.iter(f"{{{BPMN_NS}}}timerEventDefinition"):
        for child in timer:
            if isinstance(child.tag, str) and local(child.tag) in ("timeDuration", "timeDate", "timeCycle"):
                problems += _timer_problems(timer.getparent(), local(child.tag), (child.text or "").strip(),
                                            filename, warnings)

    return problems, used_forms, warnings


def _inherits_lane(el, lane_of: dict[str, str]) -> bool:
    node = el
    while node is not None:
        if node.get("id") in lane_of:
            return True
        node = node.getparent()
        if node is not None and local(node.tag) == "process":
            return False
    return False


def _script_problems(el, script: str, filename: str) -> list[Problem]:
    try:
        compile_script(script, "exec")
    except SyntaxError as err:
        return [Problem(f"script does not compile: {err.msg if err.msg else err}", file=filename,
                        element_id=el.get("id"), line=(el.sourceline or 0) + (err.lineno or 1),
                        hint="scripts are restricted Python: no imports, no names starting with '_'")]
    return []


def _expression_problems(el, expr: str, filename: str, what: str) -> list[Problem]:
    try:
        compile_script(expr.strip(), "eval")
    except SyntaxError as err:
        return [Problem(f"{what} '{expr.strip()}' is not a valid Python expression: {err.msg or err}",
                        file=filename, element_id=el.get("id"), line=el.sourceline)]
    return []


def _timer_problems(event_el, kind: str, expr: str, filename: str, warnings: list[str]) -> list[Problem]:
    def problem(message, hint=None):
        return [Problem(message, file=filename, element_id=event_el.get("id"), line=event_el.sourceline, hint=hint)]

    if not expr:
        return problem(f"timer has an empty {kind}", 'write a quoted ISO 8601 value such as "PT2H"')
    if _ISO_BARE.match(expr):
        return problem(f"timer {kind} {expr} is not quoted; timer expressions are Python, so it would fail "
                       "when the timer starts", f'write "{expr}" (with quotes)')
    try:
        code = compile_script(expr, "eval")
    except SyntaxError as err:
        return problem(f"timer {kind} '{expr}' is not a valid expression: {err.msg or err}")
    try:
        value = eval(code, dict(SandboxEnvironment().globals))
    except NameError as err:
        m = _NAME_ERROR.search(str(err))
        warnings.append(f"{filename}: timer '{event_el.get('id')}' reads variable '{m.group(1) if m else '?'}' "
                        "from task data; it must hold an ISO 8601 value when the timer starts")
        return []
    except Exception as err:
        return problem(f"timer {kind} '{expr}' fails to evaluate: {err}")
    if not isinstance(value, str):
        return problem(f"timer {kind} '{expr}' gives {type(value).__name__}, not an ISO 8601 string")
    try:
        if kind == "timeDuration":
            TimerEventDefinition.parse_iso_duration(value)
        elif kind == "timeDate":
            TimerEventDefinition.get_datetime(value)
        else:
            TimerEventDefinition.parse_iso_recurring_interval(value)
    except Exception:
        example = {"timeDuration": '"PT2H" or "P3D"', "timeDate": '"2026-01-31T09:00:00+08:00"',
                   "timeCycle": '"R3/PT1H"'}[kind]
        return problem(f"timer {kind} {expr} is not a valid ISO 8601 {kind[4:].lower()}", f"e.g. {example}")
    return []


def _cycle_problems(root, filename: str) -> list[Problem]:
    """Sequence-flow cycles: SpiffWorkflow silently stops after ~333 turns of a back edge."""
    out = []
    for container in root.iter():
        if not isinstance(container.tag, str) or local(container.tag) not in _FLOW_CONTAINERS:
            continue
        graph: dict[str, list[str]] = {}
        for flow in container.iterfind("bpmn:sequenceFlow", NSMAP):
            graph.setdefault(flow.get("sourceRef"), []).append(flow.get("targetRef"))
        # boundary events continue the flow of the activity they are attached to
        for be in container.iterfind("bpmn:boundaryEvent", NSMAP):
            graph.setdefault(be.get("attachedToRef"), []).append(be.get("id"))
        cycle = _find_cycle(graph)
        if cycle:
            out.append(Problem(
                "the sequence flows form a loop: " + " -> ".join(cycle), file=filename, element_id=cycle[0],
                line=element_lines(root.getroottree()).get(cycle[0]),
                hint="SpiffWorkflow stops silently after about 333 turns of a loop; put loop characteristics "
                     "(standardLoopCharacteristics) on a task or subprocess, or start a new instance per repetition"))
    return out


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if color.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if color.get(nxt, 0) == 0:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = 2
        return None

    for start in list(graph):
        if color.get(start, 0) == 0:
            found = visit(start)
            if found:
                return found
    return None


def deploy_bundle(session: Session, bundle: Bundle, *, author: str | None = None, comment: str | None = None,
                  max_bytes: int = 5 * 1024 * 1024) -> list[DeployResult]:
    """Validate ``bundle`` and store a version per executable process (unchanged ones are reused).

    Writes nothing unless every process is valid. The caller commits.
    """
    plans = validate_bundle(bundle, max_bytes)
    results = []
    for plan in plans:
        existing = session.scalar(select(ProcessVersion).where(
            ProcessVersion.process_id == plan.process_id, ProcessVersion.checksum == plan.checksum))
        if existing:
            results.append(DeployResult(plan.process_id, existing.version, existing.id, plan.checksum, False,
                                        plan.warnings))
            continue
        latest = session.scalar(select(func.max(ProcessVersion.version))
                                .where(ProcessVersion.process_id == plan.process_id)) or 0
        pv = ProcessVersion(
            process_id=plan.process_id, process_name=plan.name, version=latest + 1, checksum=plan.checksum,
            bpmn_files=plan.files, forms=plan.forms, form_checksums=plan.form_checksums,
            warnings=plan.warnings, called_only=plan.called_only, author=author, comment=comment,
            created_at=utcnow(),
        )
        session.add(pv)
        session.flush()
        results.append(DeployResult(plan.process_id, pv.version, pv.id, plan.checksum, True, plan.warnings))
    return results
