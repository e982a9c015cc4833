"""Process owners' pages (issue #8): processes and their versions, the side-by-side diff of
two versions, the BPMN modeler (bpmn-js from npm, with Careflow's own properties panel and
form editor), uploads from other modelers, and migration of running instances between versions.

Who: process owners and admins edit, upload, deploy and migrate (``authz.can_model``);
auditors read the process and version lists, diagrams and diffs; everyone else gets 403.

Limits: an upload or a modeler save is refused with 413 from its ``Content-Length`` before
any of it is read when it is larger than ``CAREFLOW_MAX_BPMN_BYTES`` plus room for the
forms (``FORMS_ALLOWANCE``); the engine's hardened parser refuses hostile XML (entities,
DOCTYPE, oversize) without expanding it.

Migration runs in the request: without JavaScript the whole selection at once, with
JavaScript one batch per request (``/migrate/batch``) so the page can show progress.
"""

from __future__ import annotations

import json
import os
import re
from functools import wraps

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from werkzeug.exceptions import RequestEntityTooLarge

from engine import versions as engine_versions
from engine.errors import CareflowError, DeployError, NotFound
from engine.migration import migrate_instances, plan_migration
from engine.upload import deploy_upload
from web import authz
from web.auth import current, engine, require_login
from web.diagram import with_layout
from web.forms import build_fields
from web.i18n import GROUP_LABELS

bp = Blueprint("processes", __name__, url_prefix="/processes")
bp.before_request(require_login)

FORMS_ALLOWANCE = 1024 * 1024  # forms sent with a BPMN file (JSON Schemas are small)
MULTIPART_OVERHEAD = 64 * 1024
MAX_BATCH = 200  # instances per migration request
DEFAULT_BATCH = 20
MAX_COMMENT = 500
# endpoints whose body may be larger than the app-wide MAX_CONTENT_LENGTH
_LARGE_BODIES = {"processes.upload_post": "upload", "processes.deploy": "json"}


def body_limit(kind: str) -> int:
    """Largest request body accepted by an upload (``upload``) or a modeler save (``json``)."""
    max_bpmn = engine().settings.max_bpmn_bytes
    if kind == "json":  # the XML travels as a JSON string: quotes and newlines are escaped
        return 2 * max_bpmn + FORMS_ALLOWANCE
    return max_bpmn + FORMS_ALLOWANCE + MULTIPART_OVERHEAD


def _raise_body_limit() -> None:
    """Set this request's size limit before anything (CSRF included) reads the body."""
    kind = _LARGE_BODIES.get(request.endpoint or "")
    if kind:
        request.max_content_length = body_limit(kind)


@bp.record_once
def _install(state) -> None:
    state.app.before_request_funcs.setdefault(None, []).insert(0, _raise_body_limit)

    @state.app.context_processor
    def _permissions() -> dict:
        return {"can_view_processes": authz.can_view_processes}


@bp.before_request
def _readers_only():
    p = current()
    if p is None:
        return None
    if not authz.can_view_processes(p):
        abort(403)
    if request.method not in authz.SAFE_METHODS and not authz.can_model(p):
        abort(403)
    return None


def modelers_only(view):
    """Pages that only process owners and admins may open (the auditor reads, never edits)."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        if not authz.can_model(current()):
            abort(403)
        return view(*args, **kwargs)

    return wrapped


def _is_json_request() -> bool:
    return request.is_json or request.accept_mimetypes.best == "application/json"


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(err: RequestEntityTooLarge):
    limit_mb = (request.max_content_length or 0) / (1024 * 1024)
    message = _("The file is too large: at most %(mb).1f MB can be sent at once.", mb=limit_mb)
    if _is_json_request() or request.endpoint != "processes.upload_post":
        return jsonify({"error": "too_large", "message": message}), 413
    return render_template("processes/too_large.html", message=message), 413


def _int_arg(name: str, default: int | None = None) -> int | None:
    raw = request.values.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        abort(400)


def _versions(process_id: str) -> list[dict]:
    with engine().Session() as session:
        return engine_versions.list_versions(session, process_id)


def _group_labels() -> dict[str, str]:
    return {k: fn() for k, fn in GROUP_LABELS.items()}


# ------------------------------------------------------------------------------ lists


@bp.route("")
def index():
    """Every deployed process with its latest version and instance counts."""
    with engine().Session() as session:
        rows = engine_versions.list_processes(session)
    return render_template("processes/index.html", processes=rows, can_model=authz.can_model(current()))


@bp.route("/<process_id>/versions")
def versions(process_id: str):
    """The versions of a process: author, time, checksum, comment, running / all instances."""
    rows = _versions(process_id)
    return render_template("processes/versions.html", process_id=process_id, versions=rows, latest=rows[0],
                           can_model=authz.can_model(current()))


# ------------------------------------------------------------------------------ diff


def _diff_pair(process_id: str) -> tuple[int, int]:
    rows = _versions(process_id)
    latest = rows[0]["version"]
    b = _int_arg("b", latest)
    a = _int_arg("a", b - 1 if b > 1 else b)
    return a, b


_DIAGRAM = re.compile(r"<(?:[\w.-]+:)?BPMNDiagram\b")


def _compare(session, process_id: str, a: int, b: int) -> dict:
    """``diff_versions`` plus ``layout_compared``: positions are only compared when both versions
    carry a diagram (a version deployed without one would otherwise show every element moved)."""
    result = engine_versions.diff_versions(session, process_id, a, b)
    result["layout_compared"] = all(
        any(_DIAGRAM.search(text) for text in engine_versions.get_version(session, process_id, v).bpmn_files.values())
        for v in (a, b))
    if not result["layout_compared"]:
        result["elements"]["moved"] = []
        result["summary"]["moved"] = 0
    return result


@bp.route("/<process_id>/diff")
def diff(process_id: str):
    """Two versions side by side: diagrams with the changed elements coloured, XML and form diffs."""
    a, b = _diff_pair(process_id)
    with engine().Session() as session:
        result = _compare(session, process_id, a, b)
    rows = _versions(process_id)
    return render_template("processes/diff.html", process_id=process_id, d=result, a=a, b=b, versions=rows,
                           can_model=authz.can_model(current()))


@bp.route("/<process_id>/diff.json")
def diff_json(process_id: str):
    """The two diagrams (BPMN XML) and the element-level diff the diff page colours."""
    a, b = _diff_pair(process_id)
    with engine().Session() as session:
        result = _compare(session, process_id, a, b)
        files = {v: engine_versions.get_version_files(session, process_id, v) for v in (a, b)}
    return jsonify({"process_id": process_id, "elements": result["elements"], "summary": result["summary"],
                    "a": {"version": a, "xml": _diagram_xml(files[a], process_id)},
                    "b": {"version": b, "xml": _diagram_xml(files[b], process_id)}})


def _diagram_xml(files: dict, process_id: str) -> str:
    return with_layout(files["bpmn"][files["main_file"]], process_id)


def diff_lines(text: str) -> list[tuple[str, str]]:
    """A unified diff as (css class, line) pairs for the template."""
    out = []
    for line in text.splitlines():
        if line.startswith(("+++", "---")):
            cls = "d-file"
        elif line.startswith("@@"):
            cls = "d-hunk"
        elif line.startswith("+"):
            cls = "d-add"
        elif line.startswith("-"):
            cls = "d-del"
        else:
            cls = ""
        out.append((cls, line))
    return out


@bp.app_template_filter("diff_lines")
def _diff_lines_filter(text: str) -> list[tuple[str, str]]:
    return diff_lines(text or "")


# ------------------------------------------------------------------------------ modeler


@bp.route("/<process_id>/versions/<int:version>/model.json")
def model_json(process_id: str, version: int):
    """What the modeler opens: the diagram XML (laid out when it had no diagram), the
    version's forms, the form of each user task, and where to save."""
    with engine().Session() as session:
        files = engine_versions.get_version_files(session, process_id, version)
        latest = engine().latest_version(session, process_id).version
    return jsonify({"process_id": process_id, "version": version, "latest": latest,
                    "main_file": files["main_file"], "xml": _diagram_xml(files, process_id),
                    "forms": files["forms"], "task_forms": files["task_forms"], "checksum": files["checksum"]})


@bp.route("/<process_id>/versions/<int:version>/edit")
@modelers_only
def edit(process_id: str, version: int):
    """The modeler page: diagram, properties panel, form editor, save and deploy."""
    with engine().Session() as session:
        pv = engine_versions.get_version(session, process_id, version)
        name = pv.process_name
    texts = {
        "loadError": _("The diagram could not be opened."),
        "missing": _("The BPMN modeler is not installed (run npm ci)."),
        "saving": _("Validating and deploying…"),
        "saved": _("Version %(v)s was deployed.", v="{v}"),
        "unchanged": _("Nothing changed: this is version %(v)s.", v="{v}"),
        "invalid": _("Not deployed: fix the problems below. Nothing was changed."),
        "failed": _("The save failed. Please try again."),
        "tooLarge": _("The diagram is too large to save."),
        "problems": _("Problems"),
        "noSelection": _("Select an element in the diagram to see and edit its properties."),
        "process": _("Process"),
        "name": _("Name (label)"),
        "nameHint": _("Write names as 中文 / English."),
        "laneNameHint": _("The lane name is the group that gets its tasks: %(groups)s.", groups="{groups}"),
        "lane": _("Lane (group)"),
        "laneHint": _("The lane decides which group gets the task. Choosing another lane moves the task into it."),
        "noLane": _("— not in a lane —"),
        "noLaneError": _("Every user or manual task must be in a lane."),
        "noFormError": _("A user task needs a form."),
        "basedOn": _("based on v%(v)s", v="{v}"),
        "laneInherited": _("Inherited from the enclosing subprocess."),
        "form": _("Form"),
        "noForm": _("— no form —"),
        "newForm": _("New form…"),
        "newFormName": _("File name of the new form"),
        "newFormHint": _("Letters, digits, '.', '_' or '-', ending in .json, e.g. visit-notes.schema.json"),
        "create": _("Create"),
        "editForm": _("Edit form"),
        "formEdited": _("edited, saved with the next version"),
        "dueIn": _("Due in (SLA)"),
        "dueInHint": _("ISO 8601 duration from when the task opens, e.g. PT4H or P3D."),
        "dueInBad": _("This is not an ISO 8601 duration (e.g. PT4H or P3D)."),
        "dueAt": _("Due at (expression)"),
        "dueAtHint": _("A Python expression over the task data giving an ISO 8601 date and time."),
        "assignee": _("Assignee (expression)"),
        "assigneeHint": _("A Python expression over the task data giving a username, e.g. \"ann\"."),
        "userTask": _("User task"),
        "manualTask": _("Manual task"),
        "formTitle": _("Form %(name)s", name="{name}"),
        "formValid": _("Valid JSON Schema."),
        "formChecking": _("Checking…"),
        "formPreviewOff": _("Fix the schema to see the preview."),
        "badFormName": _("Use letters, digits, '.', '_' or '-' and end with .json."),
        "formExists": _("A form with this name already exists."),
        "line": _("line %(n)s", n="{n}"),
        "field": _("field %(f)s", f="{f}"),
        "element": _("element %(e)s", e="{e}"),
        "openVersions": _("Version list"),
        "leave": _("You have unsaved changes."),
    }
    config = {
        "processId": process_id,
        "version": version,
        "modelUrl": url_for("processes.model_json", process_id=process_id, version=version),
        "deployUrl": url_for("processes.deploy", process_id=process_id, version=version),
        "checkUrl": url_for("processes.form_check"),
        "groups": _group_labels(),
        "texts": texts,
    }
    return render_template("processes/modeler.html", process_id=process_id, version=version, name=name,
                           config=config)


def _json_body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400)
    return data


def _problem_dicts(problems) -> list[dict]:
    return [p.to_dict() for p in problems]


@bp.route("/<process_id>/versions/<int:version>/deploy", methods=["POST"])
@modelers_only
def deploy(process_id: str, version: int):
    """Save from the modeler (JSON ``{xml, forms: {name: JSON text}, comment}``): the engine's
    deploy validation; 201 with the new version, 200 when nothing changed, 422 with every
    problem (each with its element id where there is one) and nothing written."""
    data = _json_body()
    xml, forms, comment = data.get("xml"), data.get("forms") or {}, data.get("comment")
    if not isinstance(xml, str) or not xml.strip() or not isinstance(forms, dict) \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in forms.items()) \
            or not (comment is None or isinstance(comment, str)):
        abort(400)
    comment = (comment or "").strip()[:MAX_COMMENT] or None
    try:
        results = engine_versions.deploy_edited(engine(), process_id, version, xml, forms=forms or None,
                                                author=current().username, comment=comment)
    except DeployError as err:
        return jsonify({"error": "invalid", "message": _("Not deployed: fix the problems below. Nothing was "
                                                          "changed."),
                        "problems": _problem_dicts(err.problems)}), 422
    mine = next((r for r in results if r.process_id == process_id), results[0])
    body = {"created": mine.created, "version": mine.version, "checksum": mine.checksum,
            "warnings": mine.warnings, "results": [r.to_dict() for r in results],
            "versions_url": url_for("processes.versions", process_id=process_id),
            "edit_url": url_for("processes.edit", process_id=process_id, version=mine.version),
            "deploy_url": url_for("processes.deploy", process_id=process_id, version=mine.version)}
    return jsonify(body), 201 if mine.created else 200


@bp.route("/form-check", methods=["POST"])
@modelers_only
def form_check():
    """The form editor's live check (JSON ``{text}``): meta-validation problems of the JSON
    Schema and, when it is valid, the form rendered as the task page renders it."""
    text = _json_body().get("text")
    if not isinstance(text, str):
        abort(400)
    if len(text.encode("utf-8")) > FORMS_ALLOWANCE:
        return jsonify({"valid": False, "problems": [{"message": _("The form is too large.")}], "html": None})
    problems = engine_versions.validate_form_schema(text)
    html = None
    if not problems:
        schema = json.loads(text)
        try:
            fields = build_fields(schema, {}, tz=current_app.config["BABEL_DEFAULT_TIMEZONE"])
            html = render_template("processes/_form_preview.html", fields=fields, schema=schema)
        except Exception as err:  # a valid schema the form renderer cannot lay out
            return jsonify({"valid": False, "html": None, "problems": [
                {"message": _("The form cannot be shown: %(error)s", error=f"{type(err).__name__}: {err}")}]})
    return jsonify({"valid": not problems, "problems": _problem_dicts(problems), "html": html})


# ------------------------------------------------------------------------------ upload


@bp.route("/upload")
@modelers_only
def upload():
    """The upload form: BPMN files from any modeler, optional JSON Schema forms, a comment."""
    return render_template("processes/upload.html", limit_mb=body_limit("upload") / (1024 * 1024))


def _read_files(field: str, suffixes: tuple[str, ...], limit: int) -> tuple[dict[str, bytes], list[dict]]:
    files: dict[str, bytes] = {}
    problems: list[dict] = []
    for f in request.files.getlist(field):
        if not f or not f.filename:
            continue
        name = os.path.basename(f.filename.replace("\\", "/"))
        if not name.lower().endswith(suffixes):
            problems.append({"file": name, "message": _("Only %(kinds)s files can be uploaded here.",
                                                         kinds=", ".join(suffixes))})
            continue
        data = f.stream.read(limit + 1)
        if len(data) > limit:
            problems.append({"file": name, "message": _("The file is too large: at most %(mb).1f MB can be sent "
                                                         "at once.", mb=limit / (1024 * 1024))})
            continue
        files[name] = data
    return files, problems


@bp.route("/upload", methods=["POST"])
@modelers_only
def upload_post():
    """Deploy uploaded files when Careflow can run them; otherwise list every problem (422)."""
    limit_mb = body_limit("upload") / (1024 * 1024)
    cf = engine()
    bpmn, problems = _read_files("bpmn", (".bpmn", ".xml"), cf.settings.max_bpmn_bytes)
    forms, form_problems = _read_files("forms", (".json",), FORMS_ALLOWANCE)
    problems += form_problems
    comment = (request.form.get("comment") or "").strip()[:MAX_COMMENT] or None
    if not bpmn and not problems:
        problems.append({"message": _("Choose a .bpmn file to upload.")})
    if problems:
        return render_template("processes/upload.html", problems=problems, comment=comment or "",
                               limit_mb=limit_mb), 400
    try:
        results = deploy_upload(cf, bpmn, forms or None, author=current().username, comment=comment)
    except DeployError as err:
        return render_template("processes/upload.html", problems=_problem_dicts(err.problems), comment=comment or "",
                               uploaded=sorted(bpmn) + sorted(forms), limit_mb=limit_mb), 422
    return render_template("processes/upload.html", results=[r.to_dict() for r in results],
                           uploaded=sorted(bpmn) + sorted(forms), limit_mb=limit_mb), 201


# ------------------------------------------------------------------------------ migration


def _migration_versions(process_id: str) -> tuple[list[dict], int | None, int]:
    rows = _versions(process_id)
    latest = rows[0]["version"]
    to_v = _int_arg("to", latest)
    default_from = next((r["version"] for r in reversed(rows) if r["running"] and r["version"] != to_v), None)
    from_v = _int_arg("from", default_from)
    return rows, from_v, to_v


@bp.route("/<process_id>/migrate")
@modelers_only
def migrate(process_id: str):
    """The dry run: per running instance of the source version, which open tasks map, which
    cannot move and why, and what its remaining path loses."""
    rows, from_v, to_v = _migration_versions(process_id)
    plans, error = [], None
    if from_v is not None:
        try:
            plans = [p.to_dict() for p in plan_migration(engine(), process_id, from_v, to_v)]
        except NotFound:
            abort(404)
        except CareflowError as err:
            error = str(err)
    return render_template("processes/migrate.html", process_id=process_id, versions=rows, from_v=from_v,
                           to_v=to_v, plans=plans, error=error, batch_size=DEFAULT_BATCH,
                           config={"batchUrl": url_for("processes.migrate_batch", process_id=process_id),
                                   "batchSize": DEFAULT_BATCH, "texts": _migration_texts()})


def _migration_texts() -> dict[str, str]:
    return {"progress": _("%(done)s of %(total)s instances", done="{done}", total="{total}"),
            "migrated": _("Migrated"), "failed": _("Stayed on its version"),
            "done": _("Finished: %(ok)s migrated, %(bad)s stayed on their version.", ok="{ok}", bad="{bad}"),
            "error": _("The migration stopped: %(error)s", error="{error}"),
            "nothingSelected": _("Select at least one instance.")}


def _migration_args() -> tuple[int, int, list[int] | None]:
    from_v, to_v = _int_arg("from"), _int_arg("to")
    if from_v is None or to_v is None:
        abort(400)
    if request.form.get("all"):
        return from_v, to_v, None
    try:
        ids = [int(x) for x in request.form.getlist("instance_id")]
    except ValueError:
        abort(400)
    return from_v, to_v, ids


@bp.route("/<process_id>/migrate", methods=["POST"])
@modelers_only
def migrate_run(process_id: str):
    """Migrate the selected (or all) instances in this request, in batches; the result page
    lists the migrated instances and those that stayed, with the reasons."""
    from_v, to_v, ids = _migration_args()
    if ids is not None and not ids:
        flash(_("Select at least one instance."), "warning")
        return redirect(url_for("processes.migrate", process_id=process_id, **{"from": from_v, "to": to_v}))
    try:
        report = migrate_instances(engine(), process_id, from_v, to_v, instance_ids=ids, batch_size=50,
                                   by=current().username)
    except NotFound:
        abort(404)
    except CareflowError as err:
        flash(str(err), "error")
        return redirect(url_for("processes.migrate", process_id=process_id, **{"from": from_v, "to": to_v}))
    return render_template("processes/migrate_result.html", process_id=process_id, report=report.to_dict())


@bp.route("/<process_id>/migrate/batch", methods=["POST"])
@modelers_only
def migrate_batch(process_id: str):
    """One batch of a migration driven by the page's script (JSON ``{from, to, instance_ids}``)."""
    data = _json_body()
    from_v, to_v, ids = data.get("from"), data.get("to"), data.get("instance_ids")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (from_v, to_v)) \
            or not isinstance(ids, list) or not ids or len(ids) > MAX_BATCH \
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        abort(400)
    try:
        report = migrate_instances(engine(), process_id, from_v, to_v, instance_ids=ids, batch_size=len(ids),
                                   by=current().username)
    except NotFound:
        abort(404)
    except CareflowError as err:
        return jsonify({"error": "invalid", "message": str(err)}), 422
    return jsonify({"run_id": report.run_id, "total": report.total,
                    "migrated": [{"instance_id": o.instance_id} for o in report.migrated],
                    "failed": [{"instance_id": o.instance_id, "reasons": o.reasons} for o in report.failed]})
