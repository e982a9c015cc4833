"""The plugin system: shipped defaults that installed plugins override, configuration,
entry-point loading, tracing, isolation of raising / hanging plugins, ``careflow plugins``,
the installable example plugin, and docs/plugins.md kept in step with the hook specs."""

from __future__ import annotations

import inspect
import json
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from careflow.cli import cli
from plugins import hookspecs
from plugins.config import ConfigError
from plugins.hookspecs import hookimpl
from plugins.manager import get_plugin_manager, plugin_info

from plugin_helpers import T0, engine_factory, incidents, ticket

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "careflow-vip-tiers"
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("careflow_"))


@pytest.fixture
def make_cf(settings):
    """Engines with chosen plugins and configuration (see ``plugin_helpers.engine_factory``)."""
    yield from engine_factory(settings)


# -- shipped defaults, overriding, configuration --------------------------------------------


def test_every_shipped_implementation_is_trylast():
    pm = get_plugin_manager(load_entry_points=False, environ={})
    for name in HOOKS:
        impls = getattr(pm.hook, name).get_hookimpls()
        assert impls or name == "careflow_audit_event", f"no shipped implementation of {name}"
        assert all(i.trylast for i in impls if i.plugin_name in pm.builtin_names), name


def test_a_plugin_overrides_the_default_without_forking(make_cf):
    class Platinum:
        @hookimpl
        def careflow_customer_tier(self, customer):
            return "core" if customer.get("annual_spend", 0) >= 50_000 else None

    cf = make_cf(Platinum())
    tier_of = cf.script_engine.environment.globals["tier_of"]
    assert tier_of({"annual_spend": 60_000}) == "core"  # the plugin
    assert tier_of({"annual_spend": 20_000}) == "basic"  # the plugin passed: the default


def test_abc_scheme_selected_by_configuration(make_cf):
    cf = make_cf(environ={"CAREFLOW_TIER_SCHEME": "abc"})
    tier_of = cf.script_engine.environment.globals["tier_of"]
    assert [tier_of({"strategic_value": v, "annual_spend": 1_000_000}) for v in ("A", "b", "growth", "regular", None)] \
        == ["A", "B", "B", "C", "C"]
    names = {p["name"] for p in plugin_info(cf.pm)}
    assert "careflow.tiers.abc" in names and "careflow.tiers.spend" not in names
    r = cf.start("plugins_notify", ticket(spend=0, strategic_value="A"), actor="alice")
    assert cf.show(r.instance_id)["data"]["tier"] == "A"
    assert [t["name"] for t in cf.tasks(instance_id=r.instance_id)] == ["vip_care"]  # gateway used tier_of too


def test_bad_configuration_is_a_clear_error(runner, monkeypatch):
    with pytest.raises(ConfigError, match="CAREFLOW_TIER_SCHEME='gold'"):
        get_plugin_manager(environ={"CAREFLOW_TIER_SCHEME": "gold"})
    with pytest.raises(ConfigError, match="CAREFLOW_LANE_GROUPS"):
        get_plugin_manager(environ={"CAREFLOW_LANE_GROUPS": "nonsense"})
    with pytest.raises(ConfigError, match="CAREFLOW_TRACE_HOOKS"):
        get_plugin_manager(environ={"CAREFLOW_TRACE_HOOKS": "maybe"})
    with pytest.raises(ConfigError, match="CAREFLOW_WEBHOOK_URL"):
        get_plugin_manager(environ={"CAREFLOW_WEBHOOK_URL": "ftp://x"})
    monkeypatch.setenv("CAREFLOW_TIER_SCHEME", "gold")
    for args in (["plugins"], ["tasks"]):
        out = runner.invoke(cli, args)
        assert out.exit_code == 1
        assert "CAREFLOW_TIER_SCHEME='gold': use 'spend'" in out.output
        assert "Traceback" not in out.output


def test_trace_hooks_logs_every_call(make_cf, caplog):
    caplog.set_level(logging.INFO, logger="careflow.hooks")
    cf = make_cf(environ={"CAREFLOW_TRACE_HOOKS": "1"})
    cf.start("plugins_notify", ticket(spend=150_000), actor="alice")
    lines = [r.getMessage() for r in caplog.records if r.name == "careflow.hooks"]
    assert any(line.startswith("call careflow_customer_tier({'customer': {") and "careflow.tiers.spend" in line
               for line in lines)
    assert "  careflow_customer_tier returned 'core'" in lines
    assert any(line.startswith("call careflow_assign_task(") for line in lines)
    assert any(line.startswith("call careflow_sla_policy(") for line in lines)


# -- isolation ------------------------------------------------------------------------------


def test_a_raising_plugin_in_a_step_falls_back_and_is_an_incident_of_that_step(make_cf):
    class BrokenTier:
        @hookimpl
        def careflow_customer_tier(self, customer):
            raise ConnectionError("CRM unreachable")

    class BrokenAssignment:
        @hookimpl
        def careflow_assign_task(self, task, data):
            return "not a dict"

    cf = make_cf(BrokenTier(), BrokenAssignment())
    r = cf.start("plugins_notify", ticket(spend=150_000), actor="alice")
    assert cf.show(r.instance_id)["status"] == "running"
    assert cf.show(r.instance_id)["data"]["tier"] == "core"  # the default answered
    [task] = cf.tasks(instance_id=r.instance_id)
    assert (task["group"], task["assignee"]) == ("account_manager", None)  # the default answered
    found = incidents(cf, "plugin")
    tier_incidents = [i for i in found if "careflow_customer_tier" in i.message]
    assert len(tier_incidents) == 2  # the script and the gateway condition each asked
    assert all(i.instance_id == r.instance_id and i.created_at == T0 for i in found)
    assert "ConnectionError: CRM unreachable" in tier_incidents[0].traceback
    assert tier_incidents[0].source.endswith("BrokenTier")
    [assign] = [i for i in found if "careflow_assign_task" in i.message]
    assert "returned str 'not a dict', expected dict" in assign.message


def test_a_plugin_failing_while_functions_are_collected_does_not_stop_the_engine(make_cf, caplog):
    class BrokenFunctions:
        @hookimpl
        def careflow_script_functions(self):
            raise RuntimeError("no functions today")

    cf = make_cf(BrokenFunctions())
    assert "tier_of" in cf.script_engine.environment.globals
    assert any("no functions today" in r.getMessage() for r in caplog.records)


def test_a_raising_observer_is_an_incident_and_the_others_still_hear(make_cf):
    heard = []

    class Picky:
        @hookimpl
        def careflow_audit_event(self, event):
            if event["action"] == "instance_started":
                raise ValueError("cannot parse event")

    class Listener:
        @hookimpl
        def careflow_audit_event(self, event):
            heard.append(event["action"])

    cf = make_cf(Picky(), Listener())
    r = cf.start("plugins_notify", ticket(), actor="alice")
    assert heard == [e["action"] for e in cf.audit(r.instance_id)]
    [incident] = incidents(cf, "plugin")
    assert "careflow_audit_event" in incident.message and "cannot parse event" in incident.message
    assert "ValueError" in incident.traceback and incident.instance_id == r.instance_id


def test_a_hanging_observer_neither_blocks_the_step_nor_the_other_observers(make_cf):
    release = threading.Event()
    slow_calls, heard = [], []

    class Hanging:
        @hookimpl
        def careflow_audit_event(self, event):
            slow_calls.append(event["seq"])
            release.wait(20)

    class Listener:
        @hookimpl
        def careflow_audit_event(self, event):
            heard.append(event["seq"])

    cf = make_cf(Hanging(), Listener(), environ={"CAREFLOW_PLUGIN_TIMEOUT": "0.3"})
    try:
        started = time.monotonic()
        r1 = cf.start("plugins_notify", ticket("SN1"), actor="alice")
        assert time.monotonic() - started < 3
        seqs1 = [e["seq"] for e in cf.audit(r1.instance_id)]
        assert heard == seqs1
        [stuck] = incidents(cf, "plugin")
        assert f"did not return within 0.3 s (audit event seq {seqs1[0]})" in stuck.message

        r2 = cf.start("plugins_notify", ticket("SN2"), actor="alice")  # the stuck observer is skipped
        seqs2 = [e["seq"] for e in cf.audit(r2.instance_id)]
        assert heard == seqs1 + seqs2 and slow_calls == [seqs1[0]]
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while len(incidents(cf, "plugin")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    late = incidents(cf, "plugin")[1]
    assert "returned" in late.message and ", ".join(map(str, seqs2)) in late.message
    assert slow_calls == seqs1  # it finished the events it had been given


# -- entry points, the example plugin, careflow plugins -------------------------------------


@pytest.fixture(scope="session")
def vip_site(tmp_path_factory) -> Path:
    """The example plugin really installed (pip, from its own pyproject) into a fresh folder, once."""
    import shutil

    base = tmp_path_factory.mktemp("vip")
    source = base / "src"
    shutil.copytree(EXAMPLE, source)
    target = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    return target


@pytest.fixture
def vip_installed(vip_site, monkeypatch):
    """The installed example plugin visible to this test (its folder on sys.path)."""
    monkeypatch.syspath_prepend(str(vip_site))
    for var in ("CAREFLOW_PLUGINS", "CAREFLOW_TIER_SCHEME", "CAREFLOW_VIP_CUSTOMERS"):
        monkeypatch.delenv(var, raising=False)
    yield vip_site
    sys.modules.pop("careflow_vip_tiers", None)


def test_the_example_plugin_installs_and_overrides_the_tier_rule(vip_installed, settings, runner, monkeypatch):
    from engine.runtime import Careflow

    pm = get_plugin_manager(environ={})
    [info] = [p for p in plugin_info(pm) if p["name"] == "vip_tiers"]
    assert info == {"name": "vip_tiers", "package": "careflow-vip-tiers", "version": "0.1.0", "builtin": False,
                    "hooks": ["careflow_customer_tier"], "unknown_hooks": [], "status": "loaded"}
    cf = Careflow(settings, plugin_manager=pm)
    try:
        cf.deploy([ROOT / "tests" / "fixtures" / "plugins_notify.bpmn"])
        r = cf.start("plugins_notify", ticket(spend=0, vip=True), actor="alice")
        assert cf.show(r.instance_id)["data"]["tier"] == "core"  # the plugin, despite zero spend
        assert [t["name"] for t in cf.tasks(instance_id=r.instance_id)] == ["vip_care"]
        r2 = cf.start("plugins_notify", ticket(spend=35_000), actor="alice")
        assert cf.show(r2.instance_id)["data"]["tier"] == "important"  # not a VIP: the default
    finally:
        cf.close()

    out = runner.invoke(cli, ["plugins", "--json"])
    assert out.exit_code == 0, out.output
    assert "vip_tiers" in {p["name"] for p in json.loads(out.output)}
    out = runner.invoke(cli, ["plugins"])
    assert re.search(r"vip_tiers\s+0\.1\.0\s+careflow-vip-tiers\n\s+careflow_customer_tier", out.output)


@pytest.mark.parametrize(("allowed", "loaded"), [
    (None, True), ("", False), ("vip_tiers", True), ("careflow-vip-tiers", True), ("something_else", False)])
def test_careflow_plugins_restricts_which_entry_points_load(vip_installed, allowed, loaded):
    environ = {} if allowed is None else {"CAREFLOW_PLUGINS": allowed}
    pm = get_plugin_manager(environ=environ)
    assert pm.has_plugin("vip_tiers") is loaded
    assert pm.hook.careflow_customer_tier(customer={"vip": True, "annual_spend": 0}) == (
        "core" if loaded else "potential")
    assert pm.missing == (["something_else"] if allowed == "something_else" else [])


def test_a_broken_entry_point_is_listed_and_the_rest_still_load(tmp_path, monkeypatch, runner):
    dist = tmp_path / "careflow_broken-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: careflow-broken\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[careflow]\nbroken = careflow_broken_plugin\n")
    (tmp_path / "careflow_broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CAREFLOW_PLUGINS", raising=False)
    pm = get_plugin_manager(environ={})
    [failed] = [p for p in plugin_info(pm) if p["status"] == "failed"]
    assert failed["name"] == "broken" and failed["version"] == "1.2.3" and "needs libfoo" in failed["error"]
    assert pm.hook.careflow_customer_tier(customer={"annual_spend": 0}) == "potential"
    out = runner.invoke(cli, ["plugins"])
    assert out.exit_code == 0 and "FAILED TO LOAD: ImportError: needs libfoo" in out.output


def test_cli_plugins_lists_plugins_versions_and_hooks(runner, monkeypatch):
    monkeypatch.setenv("CAREFLOW_PLUGINS", "")
    monkeypatch.setenv("CAREFLOW_SMTP_HOST", "mail.example.cn")
    monkeypatch.setenv("CAREFLOW_SMTP_PASSWORD", "s3cret")
    out = runner.invoke(cli, ["plugins", "--json"])
    assert out.exit_code == 0, out.output
    listed = {p["name"]: p for p in json.loads(out.output)}
    assert listed["careflow.tiers.spend"]["hooks"] == ["careflow_customer_tier"]
    assert listed["careflow.channels"]["builtin"] is True and listed["careflow.channels"]["version"]
    implemented = {h for p in listed.values() for h in p["hooks"]}
    assert implemented == set(HOOKS) - {"careflow_audit_event"}  # every rule hook has a shipped default
    text = runner.invoke(cli, ["plugins"]).output
    assert "email → smtp://mail.example.cn:25" in text and "s3cret" not in text
    assert "Tier scheme: spend" in text


# -- documentation --------------------------------------------------------------------------


def _documented() -> dict[str, dict]:
    text = DOCS.read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.M)[1:]
    out = {}
    for section in sections:
        m = re.match(r"`(careflow_\w+)\((.*?)\)(?: -> (.+?))?`\s*$", section.splitlines()[0])
        if m:
            out[m.group(1)] = {"params": m.group(2), "returns": m.group(3), "body": section}
    return out


def _spec_signature(name: str) -> tuple[str, str]:
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return params, str(sig.return_annotation)


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented_with_its_signature_and_call_semantics(name):
    documented = _documented()
    assert name in documented, f"docs/plugins.md has no '### `{name}(...)`' section"
    doc = documented[name]
    assert (doc["params"], doc["returns"]) == _spec_signature(name), "documented signature differs from the spec"
    spec = getattr(get_plugin_manager(load_entry_points=False, environ={}).hook, name).spec
    semantics = "first result wins" if spec.opts.get("firstresult") else "collected"
    assert f"**Call semantics:** {semantics}" in doc["body"]
    assert "**When:**" in doc["body"] and "```python" in doc["body"], "say when it is called and show an example"


def test_docs_describe_no_hook_that_does_not_exist():
    assert set(_documented()) <= set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_test(name):
    tests = (Path(__file__).parent / "test_plugins_hooks.py").read_text(encoding="utf-8")
    assert f"def test_hook_{name}(" in tests
