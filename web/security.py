"""HTTP-level protections: CSRF tokens on every state-changing request, security headers.

The Content-Security-Policy allows scripts, styles, images and fonts from this origin
only: no inline scripts (every script is a static file), no framing, forms post only
here. bpmn-js sets element styles through the CSSOM, which CSP does not restrict.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def init_app(app: Flask) -> None:
    """Install CSRF protection and the response headers."""
    csrf.init_app(app)

    @app.after_request
    def _headers(response: Response) -> Response:
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if app.config.get("SESSION_COOKIE_SECURE"):
            h.setdefault("Strict-Transport-Security", "max-age=31536000")
        if not request.path.startswith(("/static/", "/vendor/")):
            # pages carry personal data: never keep them in shared caches or the back-forward cache
            h.setdefault("Cache-Control", "no-store")
        return response
