"""Build progress: a live bar on a terminal, log lines elsewhere, counts that add up."""

from __future__ import annotations

import logging

from shardtools.progress import BarProgress, LogProgress, progress_for_terminal


def test_log_lines_carry_the_live_counts(caplog):
    caplog.set_level(logging.INFO, logger="shardtools.progress")
    progress = LogProgress(every_s=0.0)
    progress.start(3)
    progress.hosts(1)
    progress.update("written", "cache")
    progress.update("pending", "network")
    assert "2/3 samples resolved" in caplog.records[-1].getMessage()
    assert "pending 1" in caplog.records[-1].getMessage()
    assert "hosts cache-only 1" in caplog.records[-1].getMessage()


def test_the_bar_counts_a_requeued_pending_sample_once(capsys):
    progress = BarProgress()
    progress.start(2)
    progress.update("written", "network")
    progress.update("pending", "network")
    progress.requeue(1)                 # a drain round tries it again
    progress.update("written", "network")
    progress.close()
    assert progress.counts["written"] == 2 and progress.counts["pending"] == 0
    assert progress.counts["downloaded"] == 2
    assert "2/2" in capsys.readouterr().err


def test_no_bar_when_not_on_a_terminal_or_quiet():
    assert isinstance(progress_for_terminal(quiet=True), LogProgress)
    assert isinstance(progress_for_terminal(quiet=False), LogProgress)  # pytest captures stderr
