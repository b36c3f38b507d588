"""Progress of the one-shot commands, piped: plain lines, paced."""

import io

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
    from tests.helpers import wait_for

    out = io.StringIO()
    with StepProgress("generate gsm8k", total=8, unit="samples", stream=out, heartbeat_s=0.5) as progress:
        progress.update(4)
        # Nothing moves: the heartbeat thread alone prints the same point again (a loaded
        # machine may be slow to run it: wait for the lines, up to a bound far above 0.5 s).
        wait_for(lambda: sum("samples 4/8" in line for line in out.getvalue().splitlines()) >= 2, 30,
                 "a heartbeat line", interval=0.1)
    lines = out.getvalue().splitlines()
    assert "left" in lines[-1]


class _Clock:
    """time.monotonic() as the test sets it."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_a_resumed_run_is_paced_by_its_own_steps_only(monkeypatch):
    import gmt_ray.progress

    clock = _Clock()
    monkeypatch.setattr(gmt_ray.progress, "time", clock)
    out = io.StringIO()
    with StepProgress("train", total=2400, unit="step", stream=out, interval_s=0, heartbeat_s=3600) as progress:
        progress.initial = 1800
        clock.now += 0.5
        progress.update(1900)  # 100 steps in 0.5 s: 2.5 s for the 500 left, not 500 / (1900 / 0.5)
    assert out.getvalue().splitlines()[-1] == "train  step 1900/2400  0s in  ~2s left"  # 2.5 s, rounded to even


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
