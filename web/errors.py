"""Friendly error pages in both languages (JSON under ``/api/``); never a traceback.

Engine errors map to HTTP statuses: ``NotFound`` → 404, ``Conflict`` → 409,
``ValidationFailed`` → 400 (with field errors), any other failure → 500 (logged with its
traceback on the server, shown to nobody).
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, make_response, render_template, request
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from engine.errors import CareflowError, Conflict, NotFound, ValidationFailed

log = logging.getLogger("careflow.web")


def _texts(code: int) -> tuple[str, str]:
    texts = {
        400: (_("Bad request"), _("The request could not be understood. Please go back and try again.")),
        401: (_("Please sign in"), _("You need to sign in to do this.")),
        403: (_("Not allowed"), _("Your role does not allow this action.")),
        404: (_("Not found"), _("This page does not exist, or you are not allowed to see it.")),
        405: (_("Method not allowed"), _("This address does not accept this kind of request.")),
        409: (_("Changed meanwhile"), _("Someone else changed this in the meantime. Reload and try again.")),
        413: (_("Too large"), _("The data sent is too large.")),
        429: (_("Too many requests"), _("Too many attempts. Please wait a few minutes and try again.")),
        500: (_("Something went wrong"),
              _("An unexpected error occurred. It has been logged; please try again in a moment.")),
    }
    return texts.get(code, (_("Error"), _("The request failed.")))


def wants_json() -> bool:
    """API requests (and clients asking only for JSON) get JSON errors."""
    return request.path.startswith("/api/") or (
        request.accept_mimetypes.best == "application/json")


def error_response(code: int, message: str | None = None, field_errors: dict | None = None,
                   error: str | None = None):
    """The error as JSON (API) or a page (browser)."""
    title, default_message = _texts(code)
    message = message or default_message
    if wants_json():
        body = {"error": error or _json_code(code), "message": message}
        if field_errors:
            body["field_errors"] = field_errors
        return make_response(jsonify(body), code)
    return make_response(render_template("error.html", code=code, title=title, message=message), code)


def _json_code(code: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed", 409: "conflict", 413: "too_large", 429: "too_many_requests",
            500: "internal_error"}.get(code, "error")


def init_app(app: Flask) -> None:
    """Register the handlers."""

    @app.errorhandler(CSRFError)
    def _csrf(err: CSRFError):
        return error_response(400, _("The form has expired or was not sent from this site. "
                                     "Please reload the page and try again."), error="csrf")

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        code = err.code or 500
        if code >= 500:
            return error_response(500)
        response = error_response(code)
        if isinstance(err, MethodNotAllowed) and err.valid_methods:
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response

    @app.errorhandler(ValidationFailed)
    def _invalid(err: ValidationFailed):
        return error_response(400, _("The data is not valid."), field_errors=err.field_errors, error="invalid")

    @app.errorhandler(NotFound)
    def _not_found(err: NotFound):
        return error_response(404)

    @app.errorhandler(Conflict)
    def _conflict(err: Conflict):
        return error_response(409, str(err) if wants_json() else None)

    @app.errorhandler(CareflowError)
    def _careflow(err: CareflowError):
        log.warning("engine error on %s %s: %s", request.method, request.path, err)
        return error_response(500)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        if isinstance(err, HTTPException):
            return _http(err)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500)

    @app.errorhandler(InternalServerError)
    def _ise(err: InternalServerError):
        log.error("internal server error on %s %s: %s", request.method, request.path,
                  getattr(err, "original_exception", err))
        return error_response(500)
