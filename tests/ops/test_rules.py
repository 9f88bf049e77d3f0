"""The alert rules: promtool accepts them, each alert's unit test fires it (and a look-alike does not),
and every runbook link points at a section of docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/helm/asyncinfer/files/alerts.yaml"
ALERT_TESTS = ROOT / "deploy/prometheus/alerts_test.yaml"
OPERATIONS = ROOT / "docs/operations.md"
RUNBOOK_BASE = "https://github.com/asyncinfer/asyncinfer/blob/main/docs/operations.md#"

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: run deploy/ops-tools.sh")


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_accepts_the_alerts():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no test where it stays quiet"


def test_a_broken_expression_fails_the_unit_tests(tmp_path: Path):
    """The unit tests really exercise the expressions: raise a threshold and they fail."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files/alerts.yaml").write_text(ALERTS.read_text().replace("> 0.85", "> 0.95"))
    tests = ALERT_TESTS.read_text().replace("../helm/asyncinfer/files/alerts.yaml", "files/alerts.yaml")
    (tmp_path / "alerts_test.yaml").write_text(tests)
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode != 0 and "AsyncinferRedisMemoryNearLimit" in result.stdout + result.stderr


def test_alerts_are_mixin_style_with_runbook_sections():
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule.get("for"), f"{rule['alert']} has no `for:`"
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"]
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE) and url[len(RUNBOOK_BASE) :] in anchors, f"{rule['alert']}: {url} has no section"
        assert url[len(RUNBOOK_BASE) :] == rule["alert"].lower()


def test_the_local_scrape_config_is_valid_and_loads_the_alerts():
    config = ROOT / "deploy/prometheus/prometheus.yml"
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout
