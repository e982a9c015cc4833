"""The shipped channels against real local servers: e-mail to an aiosmtpd SMTP server (plain
and STARTTLS), webhooks to an HTTP receiver that checks the HMAC signature."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from engine.clock import FrozenClock
from engine.outbox import deliver_due
from plugins.channels.smtp import message_id

from plugin_helpers import FAST, T0, engine_factory, incidents, outbox, ticket

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # servers, not the database, matter here

SECRET = "s3cret-webhook-key"


@pytest.fixture
def make_cf(settings):
    """Engines with chosen plugins and configuration (see ``plugin_helpers.engine_factory``)."""
    yield from engine_factory(settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- SMTP -------------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler: keeps every message; answers DATA from a script of replies."""

    def __init__(self, replies: list[str] | None = None, refuse: set[str] | None = None):
        self.replies = list(replies or [])
        self.refuse = refuse or set()
        self.received: list[dict] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "msg": msg,
                              "tls": bool(getattr(session, "ssl", None))})
        return self.replies.pop(0) if self.replies else "250 Message accepted"


@pytest.fixture
def smtp_server():
    servers = []

    def start(handler: Mailbox, **kwargs) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        servers.append(controller)
        return port

    yield start
    for c in servers:
        c.stop()


def smtp_env(port: int, **extra: str) -> dict:
    return {"CAREFLOW_SMTP_HOST": "127.0.0.1", "CAREFLOW_SMTP_PORT": str(port),
            "CAREFLOW_SMTP_FROM": "Careflow <care@acme.cn>", **extra}


def test_email_reaches_a_real_smtp_server_and_a_retry_keeps_its_message_id(make_cf, smtp_server):
    box = Mailbox(replies=["451 4.3.0 try again later"])
    port = smtp_server(box)
    clock = FrozenClock(T0)
    cf = make_cf(environ=smtp_env(port), clock=clock)
    cf.start("plugins_notify", ticket(), actor="alice")

    assert deliver_due(cf, policy=FAST).retrying == 1  # the server said 451
    clock.advance(timedelta(minutes=2))
    assert deliver_due(cf, policy=FAST).sent == 1
    row = [r for r in outbox(cf) if r.channel == "email"][0]
    assert (row.status, row.attempts) == ("sent", 2)

    first, second = box.received
    assert first["to"] == second["to"] == ["zhao@acme.cn"] and second["from"] == "care@acme.cn"
    msg = second["msg"]
    assert msg["Message-ID"] == first["msg"]["Message-ID"] == message_id(row.idempotency_key, "zhao@acme.cn",
                                                                         "acme.cn")
    assert msg["X-Careflow-Idempotency-Key"] == row.idempotency_key
    assert msg["Subject"] == "工单 SN20240315001 已受理 / Ticket SN20240315001 received"  # language unknown: both
    body = msg.get_content()
    assert "您的售后工单 SN20240315001 已受理" in body and "Your after-sales ticket SN20240315001" in body
    assert msg["To"] == "ACME 有限公司 <zhao@acme.cn>"


def test_email_in_the_recipients_language(make_cf, smtp_server):
    box = Mailbox()
    cf = make_cf(environ=smtp_env(smtp_server(box)))
    cf.start("plugins_notify", ticket(locale="en-US"), actor="alice")
    deliver_due(cf, policy=FAST)
    [got] = box.received
    assert got["msg"]["Subject"] == "Ticket SN20240315001 received"
    assert "已受理" not in got["msg"].get_content()


def test_email_over_starttls(make_cf, smtp_server, tmp_path, monkeypatch):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    box = Mailbox()
    port = smtp_server(box, tls_context=server_tls, require_starttls=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client verifies the server against this CA
    cf = make_cf(environ=smtp_env(port, CAREFLOW_SMTP_STARTTLS="1"))
    cf.start("plugins_notify", ticket(), actor="alice")
    report = deliver_due(cf, policy=FAST)
    assert report.sent == 1, [r.last_error for r in outbox(cf)]
    [got] = box.received
    assert got["tls"] is True


def test_a_refused_address_is_an_incident_at_once(make_cf, smtp_server):
    box = Mailbox(refuse={"zhao@acme.cn"})
    cf = make_cf(environ=smtp_env(smtp_server(box)))
    cf.start("plugins_notify", ticket(), actor="alice")
    assert deliver_due(cf, policy=FAST).incidents == 1
    [incident] = incidents(cf, "delivery")
    assert "refused zhao@acme.cn" in incident.message and incident.source == "email"
    assert box.received == []


def test_a_down_smtp_server_is_retried(make_cf):
    cf = make_cf(environ=smtp_env(free_port()))  # nobody listens there
    cf.start("plugins_notify", ticket(), actor="alice")
    assert deliver_due(cf, policy=FAST).retrying == 1
    row = [r for r in outbox(cf) if r.channel == "email"][0]
    assert "ConnectionRefusedError" in row.last_error


# -- webhook ----------------------------------------------------------------------------------


class Receiver:
    """A local HTTP receiver that checks the signature with its own secret."""

    def __init__(self, secret: str = SECRET, statuses: list[int] | None = None, delay: float = 0.0):
        self.secret, self.statuses, self.delay = secret, list(statuses or []), delay
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(expected, self.headers.get("X-Careflow-Signature", ""))
                receiver.requests.append({"headers": dict(self.headers), "body": json.loads(body), "signed": signed})
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = 401 if not signed else (receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"bad signature" if status == 401 else b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/careflow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs) -> Receiver:
        r = Receiver(**kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_webhook_is_signed_and_retried_with_the_same_idempotency_key(make_cf, receiver):
    hook = receiver(statuses=[503])
    clock = FrozenClock(T0)
    cf = make_cf(environ={"CAREFLOW_WEBHOOK_URL": hook.url, "CAREFLOW_WEBHOOK_SECRET": SECRET}, clock=clock)
    r = cf.start("plugins_notify", ticket(), actor="alice")
    assert deliver_due(cf, policy=FAST).retrying == 1
    row = [x for x in outbox(cf) if x.channel == "webhook"][0]
    assert "HTTP 503" in row.last_error
    clock.advance(timedelta(minutes=2))
    assert deliver_due(cf, policy=FAST).sent == 1

    first, second = hook.requests
    assert first["signed"] and second["signed"]
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"] == row.idempotency_key
    assert second["headers"]["X-Careflow-Topic"] == "ticket_opened"
    body = second["body"]
    assert body["idempotency_key"] == row.idempotency_key and body["instance_id"] == r.instance_id
    assert body["payload"]["number"] == "SN20240315001" and body["attempt"] == 2
    assert body["subject"]["en"] == "Ticket SN20240315001 received"
    assert body["to"][0]["email"] == "zhao@acme.cn"


def test_webhook_rejected_signature_is_an_incident(make_cf, receiver):
    hook = receiver(secret="the receiver's other secret")
    cf = make_cf(environ={"CAREFLOW_WEBHOOK_URL": hook.url, "CAREFLOW_WEBHOOK_SECRET": SECRET})
    cf.start("plugins_notify", ticket(), actor="alice")
    assert deliver_due(cf, policy=FAST).incidents == 1
    [incident] = incidents(cf, "delivery")
    assert "HTTP 401" in incident.message and "bad signature" in incident.message
    assert hook.requests[0]["signed"] is False


def test_webhook_is_never_sent_unsigned(make_cf, receiver):
    hook = receiver()
    clock = FrozenClock(T0)
    cf = make_cf(environ={"CAREFLOW_WEBHOOK_URL": hook.url}, clock=clock)
    cf.start("plugins_notify", ticket(), actor="alice")
    for _ in range(FAST.max_attempts):
        deliver_due(cf, policy=FAST)
        clock.advance(timedelta(hours=1))
    [incident] = incidents(cf, "delivery")
    assert "CAREFLOW_WEBHOOK_SECRET is not set" in incident.message
    assert hook.requests == []


def test_a_slow_webhook_times_out_without_holding_up_delivery(make_cf, receiver, tmp_path):
    hook = receiver(delay=3)
    log_file = tmp_path / "log.jsonl"
    cf = make_cf(environ={"CAREFLOW_WEBHOOK_URL": hook.url, "CAREFLOW_WEBHOOK_SECRET": SECRET,
                          "CAREFLOW_CHANNEL_TIMEOUT": "0.5", "CAREFLOW_NOTIFY_LOG": str(log_file)})
    cf.start("plugins_notify", ticket(), actor="alice")
    started = time.monotonic()
    report = deliver_due(cf, policy=FAST)
    assert time.monotonic() - started < 2.5
    assert (report.sent, report.retrying) == (1, 1)  # the log line went out, the webhook will be retried
    assert log_file.read_text(encoding="utf-8").count("\n") == 1
    row = [x for x in outbox(cf) if x.channel == "webhook"][0]
    assert row.status == "pending" and ("timed out" in row.last_error or "no answer within 0.5 s" in row.last_error)
