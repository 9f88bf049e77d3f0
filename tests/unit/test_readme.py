"""The README's generated parts are current."""

import re
import subprocess
from pathlib import Path

from docs.splice import block
from jobqueue.settings import Settings, markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_settings_table_is_generated_from_settings():
    assert block(README, "settings").strip() == markdown_table().strip(), "stale: run `make docs`"


def test_every_setting_is_documented_with_its_default():
    table = block(README, "settings")
    for name, field in Settings.model_fields.items():
        assert f"| `{name.upper()}` |" in table
        assert field.description, f"{name} has no description"


def test_the_make_target_list_is_make_helps():
    """The README lists exactly the targets `make help` prints: a target added, renamed or removed in
    the Makefile fails here until the README says so."""
    shown = subprocess.run(["make", "--no-print-directory", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    targets = [line.split()[0] for line in shown.stdout.splitlines() if line.strip()]
    listed = re.findall(r"`([a-z0-9-]+)`", block(README, "make-targets"))
    assert len(listed) == len(set(listed)), "a target listed twice"
    assert sorted(listed) == sorted(targets)


def test_the_performance_figures_are_the_latest_runs():
    """Every figure in the README's Performance table is in the latest `make bench` table of
    docs/performance.md, and says plainly whether its target was met."""
    section = README.split("## Performance (`make bench`)", 1)[1].split("\n## ", 1)[0]
    history = (ROOT / "docs/performance.md").read_text()
    latest = history.split("### `make bench` output (full run)", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 9
    for figure, _, naive, ours, met in rows:
        for number in re.findall(r"\d[\d,]*\.?\d*", naive + ours):
            assert number.rstrip(".") in latest, f"{figure.strip()}: {number} is not in the latest run"
        assert re.match(r" (yes|no|–|one client: yes; under load: no)(?!\w)", met), f"{figure.strip()}: met = {met!r}"
