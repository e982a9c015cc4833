"""The collector threshold Careflow's processes set (``engine.gc_tuning``)."""

from __future__ import annotations

import gc

import pytest

from careflow.cli import cli
from engine.gc_tuning import DEFAULT_THRESHOLD, tune_gc


@pytest.fixture(autouse=True)
def keep_thresholds():
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_default_and_configured_thresholds():
    gc.set_threshold(700, 10, 10)
    assert tune_gc({}) == DEFAULT_THRESHOLD and gc.get_threshold() == (DEFAULT_THRESHOLD, 10, 10)
    assert tune_gc({"CAREFLOW_GC_THRESHOLD": " 12000 "}) == 12000 and gc.get_threshold()[0] == 12000


def test_zero_leaves_python_alone():
    gc.set_threshold(700, 10, 10)
    assert tune_gc({"CAREFLOW_GC_THRESHOLD": "0"}) is None
    assert gc.get_threshold() == (700, 10, 10)


def test_a_bad_value_is_a_clear_error(runner, monkeypatch):
    with pytest.raises(ValueError, match="CAREFLOW_GC_THRESHOLD must be a whole number"):
        tune_gc({"CAREFLOW_GC_THRESHOLD": "lots"})
    monkeypatch.setenv("CAREFLOW_GC_THRESHOLD", "lots")
    res = runner.invoke(cli, ["tasks", "--json"])
    assert res.exit_code == 2 and "CAREFLOW_GC_THRESHOLD must be a whole number" in res.output


def test_the_cli_sets_it(runner, monkeypatch):
    gc.set_threshold(700, 10, 10)
    monkeypatch.setenv("CAREFLOW_GC_THRESHOLD", "6000")
    res = runner.invoke(cli, ["tasks", "--json"])
    assert res.exit_code == 0, res.output
    assert gc.get_threshold()[0] == 6000
