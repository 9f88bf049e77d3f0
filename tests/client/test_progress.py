"""The progress displays without a service: the fallback bar (no rich installed) and the plain lines."""

from __future__ import annotations

import io
import time

from asyncinfer_client.progress import PlainProgress, TerminalProgress, progress_for


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_fallback_bar_redraws_one_line_with_rate_and_eta():
    stream = FakeTerminal()
    bar = TerminalProgress(stream, refresh_s=0)
    bar.start(total=10, already_done=2)
    for i in range(8):
        time.sleep(0.01)
        bar.advance(failed=i == 0)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") >= 8 and text.endswith("\n") and text.count("\n") == 1  # redrawn in place
    assert "[" + "#" * 30 + "] 10/10 (100%) done, 1 failed" in text
    assert "/s, ETA 0:00:00" in text and "ETA 0:00:0" in text.split("\r")[2]


def test_plain_lines_come_every_interval_not_every_input():
    stream = io.StringIO()
    plain = PlainProgress(stream, interval_s=0.05)
    plain.start(total=100, already_done=40)
    for _ in range(60):
        plain.advance(failed=False)
        time.sleep(0.005)
    plain.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "asyncinfer run: resuming: 40 of 100 inputs already in the output"
    assert 3 <= len(lines) - 1 < 30  # a few periodic lines, far fewer than the 60 inputs
    assert lines[-1].startswith("asyncinfer run: 100/100 (100%) done, 0 failed")


def test_display_is_chosen_by_whether_the_stream_is_a_terminal():
    assert isinstance(progress_for(io.StringIO()), PlainProgress)
    assert not isinstance(progress_for(FakeTerminal()), PlainProgress)  # rich's bar, or the fallback bar
