"""The README's generated parts are current."""

from pathlib import Path

from docs.splice import block
from jobqueue.settings import Settings, markdown_table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_settings_table_is_generated_from_settings():
    assert block(README, "settings").strip() == markdown_table().strip(), "stale: run `make docs`"


def test_every_setting_is_documented_with_its_default():
    table = block(README, "settings")
    for name, field in Settings.model_fields.items():
        assert f"| `{name.upper()}` |" in table
        assert field.description, f"{name} has no description"
