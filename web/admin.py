"""Administration: users, roles and groups (admins change; auditors may read)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from engine import accounts
from engine.errors import Conflict, NotFound, ValidationFailed
from web import authz
from web.auth import current, engine, require_login

bp = Blueprint("admin", __name__, url_prefix="/admin")
bp.before_request(require_login)


@bp.before_request
def _only_admins():
    p = current()
    if p is None:
        return None
    if request.method == "GET" and p.role in ("admin", "auditor"):
        return None
    if not authz.can_admin(p):
        abort(403)
    return None


def _render(errors: dict | None = None, form: dict | None = None, status: int = 200):
    return render_template("admin/users.html", users=accounts.list_accounts(engine()), roles=accounts.ROLES,
                           errors=errors or {}, form=form or {}, can_edit=authz.can_admin(current())), status


@bp.route("/users")
def users():
    """Every user with role, groups and supervisor."""
    return _render()


@bp.route("/users", methods=["POST"])
def add_user():
    """Create a user from the form (password typed by the admin, stored hashed)."""
    f = request.form
    form = {k: (f.get(k) or "").strip() for k in ("username", "display_name", "role", "groups", "supervisor",
                                                    "email")}
    try:
        accounts.add_user(engine(), form["username"], role=form["role"], password=f.get("password") or "",
                          groups=[g for g in form["groups"].replace("，", ",").split(",")],
                          supervisor=form["supervisor"] or None, email=form["email"] or None,
                          display_name=form["display_name"] or None, actor=current().username)
    except ValidationFailed as err:
        messages = {"username": _("Use 1-150 characters without spaces."),
                    "role": _("Choose a role."),
                    "password": _("The password needs at least %(n)d characters.", n=accounts.MIN_PASSWORD_LENGTH),
                    "supervisor": _("No such user."),
                    "locale": _("Choose a language.")}
        errors = {k: [messages.get(k, _("The value is not valid."))] for k in err.field_errors}
        return _render(errors, form, 400)
    except Conflict:
        return _render({"username": [_("This username is already taken.")]}, form, 409)
    flash(_("User %(name)s was added.", name=form["username"]), "success")
    return redirect(url_for("admin.users"))


@bp.route("/users/<username>/active", methods=["POST"])
def set_active(username: str):
    """Activate or deactivate a user (deactivation signs them out everywhere)."""
    active = request.form.get("active") == "1"
    if username == current().username and not active:
        flash(_("You cannot deactivate yourself."), "error")
        return redirect(url_for("admin.users"))
    try:
        accounts.set_active(engine(), username, active, actor=current().username)
    except NotFound:
        abort(404)
    flash(_("User %(name)s was activated.", name=username) if active
          else _("User %(name)s was deactivated.", name=username), "success")
    return redirect(url_for("admin.users"))
