"""Sign-in, sign-out, language choice, and the signed-in user of each request.

A sign-in creates a server-side session row (``engine.accounts.WebSession``); the signed
cookie carries only its random id, regenerated at every sign-in (rotation) and deleted
at sign-out (a copied cookie stops working). Idle and absolute timeouts are checked on
every request. Failed sign-ins are counted in the database per username+address and per
address, so the limit holds across worker processes.
"""

from __future__ import annotations

from datetime import timedelta
from functools import wraps
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _

from engine import accounts
from engine.accounts import Account
from web.authz import Principal

bp = Blueprint("auth", __name__)


def engine():
    """The Careflow engine of this app."""
    return current_app.config["CAREFLOW_ENGINE"]


def principal_for(account: Account) -> Principal:
    """Authorization view of an account (supervisors get their reports)."""
    reports = accounts.reports_of(engine(), account.username) if account.role == "supervisor" else []
    return Principal(account=account, reports=reports)


def current() -> Principal | None:
    """The signed-in user of this request, or None."""
    return g.get("principal")


def init_app(app: Flask) -> None:
    """Load the signed-in user before each request; expose it to templates."""

    @app.before_request
    def _load_principal() -> None:
        g.principal = None
        if request.blueprint in ("api", "assets") or request.endpoint == "static":
            return
        sid = session.get("sid")
        if not sid:
            return
        cfg = current_app.config
        username = accounts.touch_session(engine(), sid, idle=timedelta(seconds=cfg["CAREFLOW_IDLE_TIMEOUT"]),
                                          absolute=timedelta(seconds=cfg["CAREFLOW_ABSOLUTE_TIMEOUT"]))
        account = accounts.get_account(engine(), username) if username else None
        if account is None or not account.active:
            if username:
                accounts.close_session(engine(), sid)
            session.clear()
            g.session_expired = True
            return
        g.principal = principal_for(account)

    @app.context_processor
    def _inject() -> dict:
        return {"current_user": g.get("principal")}


def require_login() -> object | None:
    """``before_request`` guard for blueprints whose every page needs a signed-in user."""
    if g.get("principal") is not None:
        return None
    if request.method == "GET":
        if g.get("session_expired"):
            flash(_("Your session has expired. Please sign in again."), "warning")
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    abort(401)


def login_required(view):
    """Decorator form of ``require_login`` for single views."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        denied = require_login()
        return denied if denied is not None else view(*args, **kwargs)

    return wrapped


def safe_next(target: str | None, default: str) -> str:
    """``target`` if it is a path on this site (no open redirects), else ``default``."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def client_ip() -> str:
    """The client's address (as seen by the WSGI server, or a trusted proxy's ProxyFix)."""
    return (request.remote_addr or "unknown")[:64]


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign-in form; on success a fresh session and a redirect to where the user was going."""
    next_url = safe_next(request.values.get("next"), url_for("tasks.inbox"))
    if request.method == "GET":
        if current() is not None:
            return redirect(next_url)
        return render_template("auth/login.html", next=next_url, username="")
    cf = engine()
    username = (request.form.get("username") or "").strip()
    password = request.form.get("password") or ""
    ip = client_ip()
    key = f"{username.lower()}|{ip}"
    cfg = current_app.config
    window = timedelta(seconds=cfg["CAREFLOW_LOGIN_WINDOW"])
    by_key, by_ip = accounts.recent_failures(cf, key, ip, window)
    if by_key >= cfg["CAREFLOW_LOGIN_MAX_FAILURES"] or by_ip >= cfg["CAREFLOW_LOGIN_MAX_FAILURES_PER_IP"]:
        minutes = max(1, cfg["CAREFLOW_LOGIN_WINDOW"] // 60)
        error = _("Too many failed sign-ins. Please wait %(minutes)d minutes and try again.", minutes=minutes)
        response = current_app.make_response(
            (render_template("auth/login.html", next=next_url, username=username, error=error), 429))
        response.headers["Retry-After"] = str(cfg["CAREFLOW_LOGIN_WINDOW"])
        return response
    account = accounts.authenticate(cf, username, password) if username and password else None
    if account is None:
        accounts.record_failure(cf, key, ip)
        error = _("Wrong username or password.")
        return render_template("auth/login.html", next=next_url, username=username, error=error), 401
    accounts.clear_failures(cf, key)
    old = session.get("sid")
    if old:
        accounts.close_session(cf, old)
    lang = session.get("lang")
    session.clear()  # rotation: nothing from before sign-in survives (also a new CSRF token)
    if lang:
        session["lang"] = lang
    session["sid"] = accounts.open_session(cf, account.username, ip)
    return redirect(next_url)


@bp.route("/logout", methods=["POST"])
def logout():
    """Sign out: the session row is deleted, so the old cookie no longer works anywhere."""
    sid = session.get("sid")
    if sid:
        accounts.close_session(engine(), sid)
    session.clear()
    flash(_("You have signed out."), "info")
    return redirect(url_for("auth.login"))


@bp.route("/language", methods=["POST"])
def language():
    """Choose the interface language (stored on the user when signed in)."""
    lang = request.form.get("lang") or None
    if lang not in (None, "zh", "en"):
        abort(400)
    p = current()
    if p is not None:
        accounts.set_locale(engine(), p.username, lang)
    if lang:
        session["lang"] = lang
    else:
        session.pop("lang", None)
    return redirect(safe_next(request.form.get("next"), url_for("tasks.inbox")))
