"""Browser packages installed by npm, served straight from ``node_modules`` (no copies in git).

Only an allow-list of files is served: the bpmn-js viewer and modeler bundles and their styles
and font.
The run and test commands install them (``npm ci``); without them the instance page still
works and says the diagram viewer is not installed.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, current_app, send_from_directory

bp = Blueprint("assets", __name__)

ALLOWED = (
    "bpmn-js/dist/bpmn-navigated-viewer.production.min.js",
    "bpmn-js/dist/assets/diagram-js.css",
    "bpmn-js/dist/assets/bpmn-js.css",
    "bpmn-js/dist/assets/bpmn-font/css/bpmn.css",
    "bpmn-js/dist/assets/bpmn-font/font/",
    "bpmn-js/dist/bpmn-modeler.production.min.js",
    "chart.js/dist/chart.umd.min.js",  # the reports page's charts
)
CHART_JS = "chart.js/dist/chart.umd.min.js"


def node_modules() -> Path:
    """Where npm installed the packages."""
    return Path(current_app.config["CAREFLOW_NODE_MODULES"])


def viewer_installed() -> bool:
    """Is the bpmn-js viewer bundle installed?"""
    return (node_modules() / ALLOWED[0]).is_file()


def chart_installed() -> bool:
    """Is the Chart.js bundle (reports page) installed?"""
    return (node_modules() / CHART_JS).is_file()


@bp.route("/vendor/<path:filename>")
def vendor(filename: str):
    """One allowed file from node_modules (cached for a day)."""
    if ".." in filename.split("/") or not any(
            filename == a or (a.endswith("/") and filename.startswith(a)) for a in ALLOWED):
        abort(404)
    return send_from_directory(node_modules(), filename, max_age=86400)
