"""Progress of the one-shot commands, piped: plain lines, paced."""

import io
import time

from gmt_ray.progress import StepProgress, duration


def test_piped_progress_prints_steps_of_total_at_a_pace_and_the_end():
    out = io.StringIO()
    with StepProgress("train", total=60, unit="step", info="starting", stream=out, interval_s=3600) as progress:
        progress.update(10, info="loss 2.0000")  # the first line was printed at the start: this one waits
        progress.update(60, info="loss 1.0000")  # the end is always shown
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train  step 0/60  starting  0s in")
    assert lines[-1].startswith("train  step 60/60  loss 1.0000") and "left" not in lines[-1]
    assert len(lines) == 2


def test_a_stalled_command_still_prints_every_heartbeat():
    out = io.StringIO()
    with StepProgress("generate gsm8k", total=8, unit="samples", stream=out, heartbeat_s=0.5) as progress:
        progress.update(4)
        time.sleep(1.6)
    lines = out.getvalue().splitlines()
    assert sum("samples 4/8" in line for line in lines) >= 2, lines
    assert "left" in lines[-1]


def test_a_resumed_run_is_paced_by_its_own_steps_only():
    out = io.StringIO()
    with StepProgress("train", total=2400, unit="step", stream=out, interval_s=0) as progress:
        progress.initial = 1800
        time.sleep(0.5)
        progress.update(1900)  # 100 steps in ~0.5 s: ~2.5 s for the 500 left, not 500 / (1900 / 0.5)
    seconds = int(out.getvalue().splitlines()[-1].split("~")[1].split("s left")[0])
    assert 2 <= seconds <= 4, out.getvalue()


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
