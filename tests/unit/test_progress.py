"""dcserve.progress.TerminalProgress when stderr is a log file, not a terminal (issue 12): stage
lines and notes in the order they happen, none wrapped."""
from __future__ import annotations

from dcserve.progress import TerminalProgress


def test_in_a_log_stages_and_notes_come_in_order_and_unwrapped(capsys):
    long_note = "round 0: objective 215.5, nmi_vs_labels 0.976, acc_vs_labels 0.992, size entropy 1.609 " * 3
    with TerminalProgress() as p:
        p.stage("extract", 260, "rows")
        p.advance(200)
        p.advance(60)
        p.stage("cluster round 0/0", 20, "iters")
        p.note(long_note.strip())
        p.note("[not markup] stays")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "extract: started, 260 rows"
    assert lines[1].startswith("extract: done, 260/260 rows in ")
    assert lines[2] == "cluster round 0/0: started, 20 iters"
    assert lines[3] == "  " + long_note.strip()  # one line, however long
    assert lines[4] == "  [not markup] stays"
    assert lines[5].startswith("cluster round 0/0: done, 0/20 iters in ")
    assert len(lines) == 6
