"""The fuzz command's time oracle (issue 12 §1): an input over the bound is a finding."""

from __future__ import annotations

from fuzz import run as fuzz_run
from fuzz.hostile_names import SHAPES, variant
from servertracker import protocol
from tests.conftest import Daemon

# The 12.6 ms sender: a finding for the normaliser of the day.
COSTLY = "u@" + variant("issue: 90 katakana middle dots, 162 letters, 1 katakana", 0)
# No input takes the decoder, the daemon or the normaliser a whole minute.
GENEROUS = 60.0


def test_a_slow_input_is_a_finding_on_every_target(daemon: Daemon) -> None:
    assert daemon.process is not None
    # A bound no input can meet: every input is deliberately slow for it.
    campaign = fuzz_run.Campaign(
        daemon.socket_path, daemon.process.pid, time_bound=1e-9, value_bound=1e-9
    )
    frame = protocol.encode(protocol.Ping())
    campaign.feed(frame)
    campaign.feed_value(COSTLY)
    assert [slow.where for slow in campaign.report.slow] == ["decoder", "daemon", "normaliser"]
    assert campaign.report.slow[0].data == frame
    assert campaign.report.slow[2].data == COSTLY.encode()
    assert all(slow.seconds > 1e-9 for slow in campaign.report.slow)


def test_inputs_within_the_bound_are_not_findings() -> None:
    campaign = fuzz_run.Campaign(None, time_bound=GENEROUS, value_bound=GENEROUS)
    campaign.feed(protocol.encode(protocol.Ping()))
    for shape in SHAPES:
        campaign.feed_value("u@" + variant(shape, 1))
    assert campaign.report.slow == []
    assert campaign.report.values == len(SHAPES)


def test_the_names_phase_feeds_mutated_costly_names() -> None:
    report = fuzz_run.run(
        30, seed_value=7, socket_path=None, daemon_pid=None, names=200, value_bound=GENEROUS
    )
    assert report.values == 200
    assert report.slow == []
    names = fuzz_run.mutated_names(200, 7)
    assert len(set(names)) > 150  # bent in many ways, not one value again and again
