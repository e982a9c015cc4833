"""Careflow's web UI and JSON API: a thin Flask layer over ``engine.runtime.Careflow``.

``create_app(test_config)`` builds the application. The engine comes from the config key
``CAREFLOW_ENGINE`` (tests pass their own) or is built from the environment. Settings
(environment variables, see ``web.config``): ``CAREFLOW_SECRET_KEY``,
``CAREFLOW_INSECURE_COOKIES``, ``CAREFLOW_IDLE_TIMEOUT``, ``CAREFLOW_ABSOLUTE_TIMEOUT``,
``CAREFLOW_NODE_MODULES``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

log = logging.getLogger("careflow.web")


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask application (the WSGI entry point is ``web:create_app()``)."""
    from web import (
        admin,
        api,
        assets,
        auth,
        customers,
        errors,
        i18n,
        instances,
        processes,
        security,
        survey,
        tasks,
    )
    from web import audit as audit_pages
    from web import reports as report_pages
    from web.config import load_config

    app = Flask(__name__, instance_relative_config=False)
    app.config.update(load_config())
    if test_config:
        app.config.update(test_config)
    if app.config.get("CAREFLOW_ENGINE") is None:  # the app is the process (a WSGI server's worker)
        from engine.gc_tuning import tune_gc
        from engine.runtime import Careflow

        tune_gc()
        app.config["CAREFLOW_ENGINE"] = Careflow()
    if not app.config.get("SECRET_KEY"):
        from engine.config import deployment_secret

        app.config["SECRET_KEY"] = deployment_secret(app.config["CAREFLOW_ENGINE"].settings.home)
    security.init_app(app)
    i18n.init_app(app)
    auth.init_app(app)
    errors.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(instances.bp)
    app.register_blueprint(customers.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(processes.bp)
    app.register_blueprint(audit_pages.bp)
    app.register_blueprint(report_pages.bp)
    app.register_blueprint(assets.bp)
    app.register_blueprint(survey.bp)
    app.register_blueprint(api.bp)
    security.csrf.exempt(api.bp)  # token-authenticated, no cookies: CSRF does not apply
    audit_pages.init_app(app)  # last: the read-only guard runs after sign-in and the API's token check
    return app
