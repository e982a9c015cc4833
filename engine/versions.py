"""Process versions for owners and the modeler: list, open, edit-and-deploy, compare.

- ``list_processes`` / ``list_versions``: what is deployed, by whom and when, with the
  number of running and all instances on each version (counted in SQL).
- ``get_version_files``: the BPMN and forms of one version, for the modeler to open.
- ``deploy_edited``: an edited diagram (and edited forms) on top of a base version goes
  through the normal deploy validation; problems carry element ids; nothing is written
  unless everything is valid.
- ``diff_versions``: unified diffs of the files and forms, plus an element-level diff
  (added / removed / changed / moved element ids) to colour two diagrams side by side.
- ``validate_form_schema``: meta-validation of a form's JSON Schema for the form editor.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator, FormatChecker
from lxml import etree
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from engine.bpmn_xml import BPMN_NS, NSMAP, SPIFF_NS, element_lines, local, parse_bpmn_bytes
from engine.deploy import FORM_PROPERTY, Bundle, DeployResult, validate_bundle
from engine.errors import DeployError, NotFound, Problem
from engine.models import Instance, ProcessVersion

if TYPE_CHECKING:
    from engine.runtime import Careflow

DI_NS = "http://www.omg.org/spec/BPMN/20100524/DI"
DC_NS = "http://www.omg.org/spec/DD/20100524/DC"
DD_DI_NS = "http://www.omg.org/spec/DD/20100524/DI"
SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
_FORM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}\.json$")
_STORED_LIMIT = 1 << 40  # stored versions were size-checked when deployed
_MAX_VALUE = 400  # longest old/new value shown in an element change


# ------------------------------------------------------------------------------ listing


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def _counts(session: Session, version_ids: list[int]) -> dict[int, tuple[int, int]]:
    """{version id: (running, total)} instances, counted by the database."""
    if not version_ids:
        return {}
    running = func.sum(case((Instance.status == "running", 1), else_=0))
    rows = session.execute(select(Instance.process_version_id, running, func.count())
                           .where(Instance.process_version_id.in_(version_ids))
                           .group_by(Instance.process_version_id))
    return {vid: (int(r or 0), int(t)) for vid, r, t in rows}


def list_processes(session: Session) -> list[dict]:
    """Every deployed process: id, name (of its latest version), latest version, version count,
    running and total instances, whether it is only reached through call activities."""
    latest = (select(ProcessVersion.process_id, func.max(ProcessVersion.version).label("v"),
                     func.count().label("n")).group_by(ProcessVersion.process_id).subquery())
    rows = session.execute(select(ProcessVersion, latest.c.n).join(
        latest, (ProcessVersion.process_id == latest.c.process_id) & (ProcessVersion.version == latest.c.v))
        .order_by(ProcessVersion.process_id)).all()
    running = func.sum(case((Instance.status == "running", 1), else_=0))
    counts = {pid: (int(r or 0), int(t)) for pid, r, t in session.execute(
        select(Instance.process_id, running, func.count()).group_by(Instance.process_id))}
    out = []
    for pv, n in rows:
        r, t = counts.get(pv.process_id, (0, 0))
        out.append({"process_id": pv.process_id, "name": pv.process_name, "latest_version": pv.version,
                    "latest_version_id": pv.id, "versions": int(n), "called_only": bool(pv.called_only),
                    "updated_at": _iso(pv.created_at), "running": r, "total": t})
    return out


def list_versions(session: Session, process_id: str) -> list[dict]:
    """The versions of a process, newest first, each with author, time, checksum, comment,
    ``called_only``, warnings, file and form names and its running / total instance counts."""
    versions = session.scalars(select(ProcessVersion).where(ProcessVersion.process_id == process_id)
                               .order_by(ProcessVersion.version.desc())).all()
    if not versions:
        raise NotFound(f"no process '{process_id}' is deployed")
    counts = _counts(session, [v.id for v in versions])
    return [{**_version_meta(v), "running": counts.get(v.id, (0, 0))[0], "total": counts.get(v.id, (0, 0))[1]}
            for v in versions]


def _version_meta(pv: ProcessVersion) -> dict:
    return {"process_id": pv.process_id, "version": pv.version, "version_id": pv.id, "name": pv.process_name,
            "author": pv.author, "created_at": _iso(pv.created_at), "checksum": pv.checksum,
            "comment": pv.comment, "called_only": bool(pv.called_only), "warnings": list(pv.warnings or []),
            "files": sorted(pv.bpmn_files), "forms": sorted(pv.forms)}


def get_version(session: Session, process_id: str, version: int) -> ProcessVersion:
    """One stored version (``NotFound`` with a clear message otherwise)."""
    pv = session.scalar(select(ProcessVersion).where(ProcessVersion.process_id == process_id,
                                                     ProcessVersion.version == version))
    if pv is None:
        known = session.scalar(select(func.count()).where(ProcessVersion.process_id == process_id))
        if not known:
            raise NotFound(f"no process '{process_id}' is deployed")
        raise NotFound(f"process '{process_id}' has no version {version}")
    return pv


def main_file(bpmn_files: dict[str, str], process_id: str) -> str:
    """The file of a version that defines ``process_id`` (the one the modeler edits)."""
    marker = re.compile(r"<(?:\w+:)?process\b[^>]*\bid=[\"']" + re.escape(process_id) + r"[\"']")
    for name, text in bpmn_files.items():
        if marker.search(text):
            return name
    return next(iter(sorted(bpmn_files)))


def get_version_files(session: Session, process_id: str, version: int) -> dict:
    """What the modeler opens: the version's metadata, ``main_file`` (the file defining the
    process), every BPMN file's XML (``bpmn``: {name: xml}), its forms (``forms``: {name:
    schema}) and their checksums, and the form each user task uses (``task_forms``)."""
    pv = get_version(session, process_id, version)
    main = main_file(pv.bpmn_files, process_id)
    return {**_version_meta(pv), "main_file": main, "bpmn": dict(pv.bpmn_files), "forms": dict(pv.forms),
            "form_checksums": dict(pv.form_checksums), "task_forms": _task_forms(pv.bpmn_files)}


def _task_forms(files: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, text in files.items():
        tree, _ = parse_bpmn_bytes(text.encode("utf-8"), name, _STORED_LIMIT)
        if tree is None:
            continue
        for el in tree.getroot().iter(f"{{{BPMN_NS}}}userTask", f"{{{BPMN_NS}}}manualTask"):
            form = _properties(el).get(FORM_PROPERTY)
            if form:
                out[el.get("id")] = form
    return out


# ------------------------------------------------------------------------------ editing


def deploy_edited(cf: Careflow, process_id: str, base_version: int, bpmn_xml: str | bytes,
                  forms: dict[str, dict | str] | None = None, author: str | None = None,
                  comment: str | None = None) -> list[DeployResult]:
    """Deploy an edited diagram of ``process_id`` as a new version.

    The bundle is the base version's files with its main file replaced by ``bpmn_xml`` and
    its forms overridden (or extended) by ``forms`` ({file name: schema dict or JSON text}).
    It goes through the normal deploy validation. On any problem ``DeployError`` is raised
    with every problem found, each with the element id it concerns where there is one, and
    nothing is written. Unchanged content returns the existing version (``created`` False).
    """
    with cf.Session() as session:
        pv = get_version(session, process_id, base_version)
        files, base_forms = dict(pv.bpmn_files), dict(pv.forms)
    main = main_file(files, process_id)
    data = bpmn_xml.encode("utf-8") if isinstance(bpmn_xml, str) else bytes(bpmn_xml)
    tree, errs = parse_bpmn_bytes(data, main, cf.settings.max_bpmn_bytes)
    if tree is None:
        raise DeployError(errs)
    problems: list[Problem] = []
    defined = [p for p in tree.getroot().iter(f"{{{BPMN_NS}}}process")]
    if process_id not in {p.get("id") for p in defined}:
        first = defined[0] if defined else tree.getroot()
        problems.append(Problem(f"the diagram no longer defines process '{process_id}'", file=main,
                                element_id=first.get("id"), line=first.sourceline,
                                hint=f"keep the process id '{process_id}'; upload the file to deploy another process"))
    edited: dict[str, bytes] = {}
    for name, value in (forms or {}).items():
        if not isinstance(name, str) or not _FORM_NAME.match(name):
            problems.append(Problem(f"form file name {name!r} is not allowed", file=str(name),
                                    hint="use letters, digits, '.', '_' or '-' and end with .json"))
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)
        problems += [dataclasses.replace(p, file=name) for p in validate_form_schema(text)]
        edited[name] = text.encode("utf-8")
    bundle = Bundle(bpmn={**{n: t.encode("utf-8") for n, t in files.items()}, main: data},
                    forms={**{n: json.dumps(s, ensure_ascii=False).encode("utf-8") for n, s in base_forms.items()},
                           **edited})
    if problems:
        try:
            validate_bundle(bundle, cf.settings.max_bpmn_bytes)
        except DeployError as err:
            problems += err.problems
        raise DeployError(locate_problems(problems, main, tree))
    try:
        return cf.deploy(bundle, author=author, comment=comment)
    except DeployError as err:
        raise DeployError(locate_problems(err.problems, main, tree)) from None


def locate_problems(problems: list[Problem], filename: str, tree: etree._ElementTree) -> list[Problem]:
    """Give problems of ``filename`` that only know a line the id of the element at that line
    (the innermost element with an id that starts at or before it), and problems that only
    know an element id its line, so each can be shown on the diagram."""
    starts = sorted((el.sourceline, el.get("id")) for el in tree.iter()
                    if isinstance(el.tag, str) and el.get("id") and el.sourceline
                    and not el.tag.startswith(f"{{{DI_NS}}}"))
    lines = element_lines(tree)
    out = []
    for p in problems:
        if p.file not in (None, filename):
            out.append(p)
            continue
        if p.element_id is None and p.line:
            before = [eid for line, eid in starts if line <= p.line]
            if before:
                p = dataclasses.replace(p, element_id=before[-1])
        elif p.element_id and not p.line and p.element_id in lines:
            p = dataclasses.replace(p, line=lines[p.element_id])
        out.append(p)
    return out


# ------------------------------------------------------------------------------ forms


def validate_form_schema(text: str | bytes | dict) -> list[Problem]:
    """Meta-validation for the form editor: is this a JSON Schema 2020-12 the engine can use?

    Returns every problem found (empty list: valid), each with ``field`` = the JSON path in the
    schema (``properties/amount/type``) or ``line`` for JSON syntax errors. Checks: JSON syntax,
    an object, ``$schema`` (forms are validated as 2020-12), the 2020-12 meta-schema (with
    regex formats), a root ``"type": "object"`` (submitted data is merged into task data), only
    local ``$ref``s, and that the schema can be applied (its references resolve).
    """
    if isinstance(text, dict):
        schema: Any = text
    else:
        try:
            schema = json.loads(text)
        except UnicodeDecodeError as err:
            return [Problem(f"the form is not UTF-8 text: {err.reason}")]
        except json.JSONDecodeError as err:
            return [Problem(f"not valid JSON: {err.msg} (column {err.colno})", line=err.lineno,
                            hint="check quotes, commas and brackets near that line")]
    if not isinstance(schema, dict):
        return [Problem(f"a form schema must be a JSON object, not {type(schema).__name__}",
                        hint='start from {"type": "object", "properties": {...}}')]
    problems: list[Problem] = []
    declared = schema.get("$schema")
    if declared is not None and str(declared).rstrip("#") != SCHEMA_2020_12:
        problems.append(Problem(f"forms are validated as JSON Schema 2020-12, not {declared}", field="$schema",
                                hint=f'use "$schema": "{SCHEMA_2020_12}" or leave it out'))
    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=FormatChecker())
    for err in sorted(meta.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path]):
        message = err.message if len(err.message) <= 300 else err.message[:297] + "..."
        problems.append(Problem(f"not a valid JSON Schema: {message}", field=_path(err.absolute_path)))
    if schema.get("type") != "object":
        problems.append(Problem('the root of a form must be "type": "object"', field="type",
                                hint="submitted form data is merged into the task data, so it must be an object"))
    for path, ref in _refs(schema, []):
        if not isinstance(ref, str) or not ref.startswith("#"):
            problems.append(Problem(f"$ref {ref!r} points outside the form", field=_path(path),
                                    hint="only local references such as #/$defs/address are allowed"))
        elif not _resolves(schema, ref):
            problems.append(Problem(f"$ref {ref!r} does not point at anything in the form", field=_path(path),
                                    hint="define it under $defs, e.g. #/$defs/address"))
    if not problems:
        try:
            for _ in Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors({}):
                pass
        except Exception as err:  # an unresolvable $ref, a bad regex jsonschema only trips on when used
            problems.append(Problem(f"the schema cannot be applied: {type(err).__name__}: {err}",
                                    hint="check $ref targets and patterns"))
    return problems


def _resolves(schema: dict, ref: str) -> bool:
    """Whether a local ``$ref`` (JSON pointer or ``$anchor``) points at something in ``schema``."""
    from urllib.parse import unquote

    fragment = unquote(ref[1:])
    if not fragment:
        return True
    if not fragment.startswith("/"):
        return any(isinstance(node, dict) and node.get("$anchor") == fragment for node in _nodes(schema))
    node: Any = schema
    for part in fragment[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _nodes(node: Any):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _nodes(child)


def _path(parts) -> str:
    return "/".join(str(p) for p in parts) or "(root)"


def _refs(node: Any, path: list) -> list[tuple[list, Any]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                out.append((path + [k], v))
            else:
                out += _refs(v, path + [k])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _refs(v, path + [i])
    return out


# ------------------------------------------------------------------------------ diff


def diff_versions(session: Session, process_id: str, a: int, b: int, *, context: int = 3) -> dict:
    """Compare two versions of a process.

    Returns ``{"process_id", "a": meta, "b": meta, "files": [...], "forms": [...],
    "elements": {"added", "removed", "changed", "moved"}, "summary": {...}}``. ``files`` and
    ``forms`` hold ``{"name", "status": added|removed|changed|unchanged, "diff": unified diff}``.
    Each element entry is ``{"id", "type", "name", "file", "process"}``; ``changed`` entries add
    ``changes: [{"field", "old", "new"}]`` (name, lane, attributes, properties such as the form
    or dueIn, scripts, conditions, timers, the content of the form a task uses...); ``moved``
    lists ids whose shape or edge moved in the diagram only.
    """
    va, vb = get_version(session, process_id, a), get_version(session, process_id, b)
    files = [_text_diff(name, va.bpmn_files.get(name), vb.bpmn_files.get(name), a, b, context)
             for name in sorted(set(va.bpmn_files) | set(vb.bpmn_files))]
    forms = [_text_diff(name, _pretty(va.forms.get(name)), _pretty(vb.forms.get(name)), a, b, context)
             for name in sorted(set(va.forms) | set(vb.forms))]
    elements = element_diff(va.bpmn_files, vb.bpmn_files, va.forms, vb.forms)
    summary = {k: len(v) for k, v in elements.items()}
    summary["files_changed"] = sum(f["status"] != "unchanged" for f in files)
    summary["forms_changed"] = sum(f["status"] != "unchanged" for f in forms)
    return {"process_id": process_id, "a": _version_meta(va), "b": _version_meta(vb), "files": files,
            "forms": forms, "elements": elements, "summary": summary}


def _pretty(schema: dict | None) -> str | None:
    return None if schema is None else json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def _text_diff(name: str, old: str | None, new: str | None, a: int, b: int, context: int) -> dict:
    status = "added" if old is None else "removed" if new is None else "unchanged" if old == new else "changed"
    diff = "".join(difflib.unified_diff((old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
                                        fromfile=f"v{a}/{name}", tofile=f"v{b}/{name}", n=context))
    return {"name": name, "status": status, "diff": diff}


def element_diff(old_files: dict[str, str], new_files: dict[str, str], old_forms: dict | None = None,
                 new_forms: dict | None = None) -> dict[str, list]:
    """Element-level diff of two sets of BPMN files (see ``diff_versions``)."""
    old = _elements(old_files, old_forms or {})
    new = _elements(new_files, new_forms or {})
    added = [new[i]["info"] for i in new if i not in old]
    removed = [old[i]["info"] for i in old if i not in new]
    changed, moved = [], []
    for key in old.keys() & new.keys():
        o, n = old[key], new[key]
        changes = [{"field": k, "old": _short(o["facets"].get(k)), "new": _short(n["facets"].get(k))}
                   for k in sorted(o["facets"].keys() | n["facets"].keys())
                   if o["facets"].get(k) != n["facets"].get(k)]
        if changes:
            changed.append({**n["info"], "changes": changes})
        elif o["layout"] != n["layout"]:
            moved.append(key)
    order = lambda e: (e["file"] or "", e["id"])  # noqa: E731
    return {"added": sorted(added, key=order), "removed": sorted(removed, key=order),
            "changed": sorted(changed, key=order), "moved": sorted(moved)}


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_VALUE:
        return value[: _MAX_VALUE - 3] + "..."
    return value


_CONTAINERS = {"definitions", "process", "subProcess", "transaction", "adHocSubProcess", "collaboration",
               "laneSet", "lane", "childLaneSet"}
_SKIP_CHILDREN = {"incoming", "outgoing", "flowNodeRef"}
_TEXT_FACETS = {"documentation": "documentation", "script": "script", "conditionExpression": "condition",
                "loopCondition": "loop condition", "loopCardinality": "loop cardinality",
                "completionCondition": "completion condition"}


def _elements(files: dict[str, str], forms: dict) -> dict[str, dict]:
    """Every diagram element by id (ids are unique within a file; matching by id, not file,
    keeps the diff useful when a version was deployed under another file name)."""
    out: dict[str, dict] = {}
    for fname in sorted(files):
        tree, _ = parse_bpmn_bytes(files[fname].encode("utf-8"), fname, _STORED_LIMIT)
        if tree is None:
            continue
        root = tree.getroot()
        lane_of = {ref.text.strip(): lane.get("name") or lane.get("id") for lane in root.iter(f"{{{BPMN_NS}}}lane")
                   for ref in lane.iterfind("bpmn:flowNodeRef", NSMAP) if ref.text}
        layout = _layout(root)
        for container in root.iter():
            if not isinstance(container.tag, str) or not container.tag.startswith(f"{{{BPMN_NS}}}"):
                continue
            if container is not root and local(container.tag) not in _CONTAINERS:
                continue
            process = _process_of(container)
            for el in container:
                if not isinstance(el.tag, str) or not el.tag.startswith(f"{{{BPMN_NS}}}") or not el.get("id"):
                    continue
                if local(el.tag) in ("laneSet", "childLaneSet"):
                    continue
                eid = el.get("id")
                out[eid] = {"info": {"id": eid, "type": local(el.tag), "name": el.get("name"), "file": fname,
                                     "process": process},
                            "facets": _facets(el, lane_of, forms), "layout": layout.get(eid)}
    return out


def _process_of(el) -> str | None:
    node = el
    while node is not None:
        if isinstance(node.tag, str) and local(node.tag) == "process":
            return node.get("id")
        node = node.getparent()
    return None


def _layout(root) -> dict[str, tuple]:
    out = {}
    for shape in root.iter(f"{{{DI_NS}}}BPMNShape", f"{{{DI_NS}}}BPMNEdge"):
        ref = shape.get("bpmnElement")
        bounds = shape.find(f"{{{DC_NS}}}Bounds")
        points = tuple((p.get("x"), p.get("y")) for p in shape.iterfind(f"{{{DD_DI_NS}}}waypoint"))
        out[ref] = (tuple(bounds.get(k) for k in ("x", "y", "width", "height")) if bounds is not None else None,
                    points, shape.get("isExpanded"))
    return out


def _properties(el) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in el.iterfind("bpmn:extensionElements/spiffworkflow:properties/"
                                                                 "spiffworkflow:property", NSMAP)}


def _facets(el, lane_of: dict[str, str], forms: dict) -> dict[str, Any]:
    """What makes up an element, as comparable named values."""
    facets: dict[str, Any] = {}
    for k, v in el.attrib.items():
        if k != "id":
            facets[_qname(el, k)] = v
    if el.get("id") in lane_of:
        facets["lane"] = lane_of[el.get("id")]
    rest = []
    for child in el:
        if not isinstance(child.tag, str):
            continue
        name = local(child.tag)
        if name in _SKIP_CHILDREN or (child.get("id") and local(el.tag) in _CONTAINERS):
            continue  # flow references and nested elements are compared on their own
        if name in _TEXT_FACETS and child.tag.startswith(f"{{{BPMN_NS}}}"):
            facets[_TEXT_FACETS[name]] = (child.text or "").strip()
        elif name == "extensionElements":
            for ext in child:
                if not isinstance(ext.tag, str):
                    continue
                if ext.tag == f"{{{SPIFF_NS}}}properties":
                    for p in ext.iterfind("spiffworkflow:property", NSMAP):
                        facets[f"property:{p.get('name')}"] = p.get("value")
                elif ext.tag.startswith(f"{{{SPIFF_NS}}}") and len(ext) == 0:
                    facets[local(ext.tag)] = (ext.text or "").strip()
                else:
                    facets[f"extension:{_qname(el, ext.tag)}"] = _canonical(ext)
        elif name.endswith("EventDefinition"):
            facets[f"event:{name}"] = _event_facet(child)
        else:
            rest.append(child)
    if rest:
        facets["content"] = "".join(_canonical(c) for c in rest)
    form = facets.get(f"property:{FORM_PROPERTY}")
    if form and form in forms:
        facets["form schema"] = hashlib.sha256(json.dumps(forms[form], sort_keys=True).encode()).hexdigest()[:12]
    return facets


def _event_facet(definition) -> str:
    """A readable summary of an event definition: its timer expression or what it refers to."""
    parts = [f"{k}={v}" for k, v in sorted(definition.attrib.items()) if k != "id"]
    for child in definition:
        if isinstance(child.tag, str):
            parts.append(f"{local(child.tag)}: {(child.text or '').strip()}" if len(child) == 0
                         else f"{local(child.tag)}: {_canonical(child)}")
    return "; ".join(parts) or local(definition.tag)


def _qname(el, tag: str) -> str:
    q = etree.QName(tag)
    if q.namespace in (None, BPMN_NS):
        return q.localname
    prefix = next((p for p, uri in (el.nsmap or {}).items() if uri == q.namespace and p), None)
    return f"{prefix}:{q.localname}" if prefix else q.localname


def _canonical(el) -> str:
    text = etree.tostring(el, method="c14n").decode("utf-8")
    text = re.sub(r'\s+xmlns(:[\w.-]+)?="[^"]*"', "", text)  # declarations are noise in a comparison
    return re.sub(r">\s+<", "><", text).strip()
