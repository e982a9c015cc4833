"""Instance page (diagram data, history, masking), customer page, the vendor files from npm,
and the web commands of the CLI (users, tokens, serve)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from lxml import etree

from careflow.cli import cli
from engine import accounts, inbox

from webtools import ROOT, start_simple


def test_diagram_json_marks_steps_and_adds_layout(client, login, cf):
    """The XML gets a generated layout when the file has none; done and current steps are listed."""
    task = start_simple(cf)
    inbox.claim(cf, task["id"], "ann")
    cf.complete(task["id"], {"customer": "ACME", "amount": 80}, user="ann")
    login.login("sam")
    r = client.get(f"/instances/{task['instance_id']}/diagram.json")
    assert r.status_code == 200
    info = r.get_json()
    assert info["current"] == ["approve"]
    assert {"start", "intake", "compute", "gw"} <= set(info["completed"])
    root = etree.fromstring(info["xml"].encode())
    shapes = {s.get("bpmnElement") for s in root.iter("{http://www.omg.org/spec/BPMN/20100524/DI}BPMNShape")}
    assert {"intake", "approve", "sla_timer", "Lane_cs", "Participant_simple"} <= shapes
    edges = root.findall(".//{http://www.omg.org/spec/BPMN/20100524/DI}BPMNEdge")
    assert len(edges) == 8 and all(len(e) >= 2 for e in edges)


def test_instance_page_history_and_masking(client, login, cf):
    """History rows with translated actions; personal data masked for roles without access."""
    task = start_simple(cf, phone="13812345678")
    login.login("aud")
    html = client.get(f"/instances/{task['instance_id']}").get_data(as_text=True)
    assert "流程已启动" in html and "任务已生成" in html
    assert "13812345678" not in html and "138****5678" in html
    assert 'data-src="/instances/' in html and "/vendor/bpmn-js/dist/bpmn-navigated-viewer.production.min.js" in html


def test_vendor_files_come_from_node_modules(client):
    """The viewer bundle is served from npm's node_modules; nothing else from there."""
    if not (ROOT / "node_modules" / "bpmn-js" / "dist").is_dir():
        pytest.fail("node_modules/bpmn-js is missing: run npm ci (scripts/test.sh does)")
    r = client.get("/vendor/bpmn-js/dist/bpmn-navigated-viewer.production.min.js")
    assert r.status_code == 200 and b"BpmnJS" in r.data
    assert client.get("/vendor/bpmn-js/package.json").status_code == 404
    assert client.get("/vendor/../package.json").status_code == 404
    assert not (ROOT / "web" / "static" / "vendor").exists()


def test_customer_page_from_registry(client, login, cf):
    """The customer record and contacts (engine.customers) for people who serve the customer."""
    customers = pytest.importorskip("engine.customers")
    with cf.Session() as s, s.begin():
        record = customers.add_customer(s, {"customer_type": "individual", "name": "王小明",
                                            "id_number": "11010519491231002X", "phone": "13812345678"},
                                        pm=cf.pm, actor="test")
    cid = str(record["id"] if isinstance(record, dict) else record.id)
    task = start_simple(cf, customer_id=cid)
    login.login("ann")
    html = client.get(f"/customers/{cid}").get_data(as_text=True)
    assert "13812345678" in html
    login.logout()
    login.login("olga")  # process owners see customers masked
    html = client.get(f"/customers/{cid}").get_data(as_text=True)
    assert "13812345678" not in html and "138****5678" in html
    login.logout()
    login.login("tom")
    assert client.get(f"/customers/{cid}").status_code == 404
    del task


def test_users_add_list_and_tokens(runner, cf):
    """users add reads the password from stdin; list --json; tokens create prints a working token."""
    r = runner.invoke(cli, ["users", "add", "li.na", "--role", "supervisor", "--group", "customer_service",
                            "--group", "supervisor"], input="long enough pw\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["users", "add", "zhang.wei", "--role", "agent", "--group", "customer_service",
                            "--supervisor", "li.na", "--email", "zw@example.com"], input="another pw 1\n")
    assert r.exit_code == 0, r.output
    assert accounts.authenticate(cf, "zhang.wei", "another pw 1") is not None
    r = runner.invoke(cli, ["users", "add", "x", "--role", "agent"], input="short\n")
    assert r.exit_code == 2 and "password" in r.output
    r = runner.invoke(cli, ["users", "add", "zhang.wei", "--role", "agent"], input="another pw 1\n")
    assert r.exit_code == 3
    r = runner.invoke(cli, ["users", "add", "y", "--role", "agent", "--supervisor", "ghost"], input="long enough\n")
    assert r.exit_code == 2 and "supervisor" in r.output
    r = runner.invoke(cli, ["users", "add", "z", "--role", "boss"], input="long enough\n")
    assert r.exit_code == 2
    r = runner.invoke(cli, ["users", "list", "--json"])
    assert r.exit_code == 0
    import json

    users = {u["username"]: u for u in json.loads(r.output)}
    assert users["zhang.wei"] == {"username": "zhang.wei", "display_name": None, "role": "agent",
                                  "groups": ["customer_service"], "supervisor": "li.na",
                                  "email": "zw@example.com", "locale": None, "active": True}
    r = runner.invoke(cli, ["tokens", "create", "zhang.wei"])
    assert r.exit_code == 0
    token = r.stdout.strip().splitlines()[0]
    assert accounts.account_for_token(cf, token).username == "zhang.wei"
    assert runner.invoke(cli, ["tokens", "create", "ghost"]).exit_code == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_runs_gunicorn_and_stops_cleanly(settings, tmp_path):
    """careflow serve answers HTTP (gunicorn) and SIGTERM stops it and its children with exit 0."""
    port = _free_port()
    env = {**os.environ, "CAREFLOW_DATABASE_URL": settings.database_url, "CAREFLOW_HOME": str(tmp_path),
           "CAREFLOW_INSECURE_COOKIES": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "careflow", "serve", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as resp:
                    body = resp.read().decode()
                    break
            except OSError:
                time.sleep(0.2)
        assert "Careflow" in body and "csrf-token" in body
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
