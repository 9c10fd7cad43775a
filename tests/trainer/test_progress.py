"""Tests for trainer.progress: terminal redraws, plain log lines, ETA and absl interplay."""

import io

from absl import logging

from trainer import progress

CLEAR = "\r\x1b[K"


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_formatting():
    assert [progress.format_duration(s) for s in (0, 12.4, 59.6, 275, 3725, 90000)] == [
        "0s", "12s", "1m00s", "4m35s", "1h02m", "25h00m"]
    assert [progress.format_rate(v) for v in (950, 5230, 1.5e6)] == ["950", "5.2k", "1.5M"]


def test_terminal_bar_redraws_in_place_with_eta():
    stream, clock = io.StringIO(), FakeClock()
    bar = progress.ProgressBar(100, stream=stream, is_tty=True, clock=clock, width=10)
    bar.update(10, loss=0.5, tokens_per_s=5230.0)
    assert stream.getvalue() == (
        CLEAR + "train [=>        ]  10/100  10% | ETA ? | loss 0.5000 | 5.2k tok/s")
    clock.now += 2.0
    bar.update(20, loss=0.25, tokens_per_s=6000.0, lr=1e-3)
    # 10 steps in 2 s since the first update: 5 step/s, 80 steps left: 16 s.
    assert stream.getvalue().split(CLEAR)[-1] == (
        "train [==>       ]  20/100  20% | 5 step/s | ETA 16s | loss 0.2500 | 6.0k tok/s"
        " | lr 0.001")
    writes = stream.getvalue().count(CLEAR)
    clock.now += 0.01  # faster than min_redraw_s: no redraw
    bar.update(21, loss=0.2)
    assert stream.getvalue().count(CLEAR) == writes
    clock.now += 1.0
    bar.update(100, loss=0.1)
    assert stream.getvalue().split(CLEAR)[-1].startswith("train [==========] 100/100 100%")
    assert "ETA 0s" in stream.getvalue().split(CLEAR)[-1]
    assert "\n" not in stream.getvalue()
    bar.close()
    assert stream.getvalue().endswith("loss 0.1000\n")
    bar.close()  # idempotent
    assert stream.getvalue().count("\n") == 1


def test_plain_lines_when_not_on_a_terminal(monkeypatch):
    lines = []
    monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: lines.append(fmt % args))
    stream, clock = io.StringIO(), FakeClock()
    bar = progress.ProgressBar(50, stream=stream, clock=clock, log_every_s=30.0, width=4)
    assert not bar.is_tty  # StringIO is no terminal
    for step in range(1, 51):
        clock.now += 1.0
        bar.update(step, loss=1.0 / step)
    bar.close()
    assert stream.getvalue() == ""  # nothing drawn: everything went through absl logging
    # The first update, then every 30 s, then the last step.
    assert [line.split("]")[1].split("/")[0].strip() for line in lines] == ["1", "31", "50"]
    assert lines[-1] == "train [====] 50/50 100% | 1 step/s | ETA 0s | loss 0.0200"
    assert all("\r" not in line for line in lines)


def test_unknown_total():
    stream, clock = io.StringIO(), FakeClock()
    bar = progress.ProgressBar(None, stream=stream, is_tty=True, clock=clock)
    bar.update(5)
    clock.now += 1
    bar.update(30, tokens_per_s=12.0)
    assert stream.getvalue().split(CLEAR)[-1] == "train step 30 | 25 step/s | 12 tok/s"


def test_absl_records_do_not_break_the_bar():
    stream, clock = io.StringIO(), FakeClock()
    bar = progress.ProgressBar(10, stream=stream, is_tty=True, clock=clock)
    absl_logger = logging.get_absl_logger()
    try:
        assert bar._filter in absl_logger.filters
        bar.update(1, loss=1.0)
        drawn = stream.getvalue()
        logging.warning("a message from elsewhere")
        assert stream.getvalue() == drawn + CLEAR  # the bar's line was cleared first
        clock.now += 0.001  # within min_redraw_s, but the bar was erased: drawn again
        bar.update(2, loss=0.9)
        assert stream.getvalue().endswith("loss 0.9000")
        bar.write("eval: f1 0.5")
        assert stream.getvalue().endswith(CLEAR + "eval: f1 0.5\n")
    finally:
        bar.close()
    assert bar._filter not in absl_logger.filters


def test_refresh_logs_a_long_step_again(monkeypatch):
    lines = []
    monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: lines.append(fmt % args))
    clock = FakeClock()
    bar = progress.ProgressBar(10, stream=io.StringIO(), clock=clock, log_every_s=30.0, width=4)
    assert bar.refresh() is False and lines == []  # nothing before the first update
    assert bar.seconds_since_output is None
    bar.update(1, loss=0.5)
    assert len(lines) == 1
    clock.now += 29.0
    assert bar.refresh() is False and len(lines) == 1
    assert bar.seconds_since_output == 29.0
    clock.now += 1.0
    assert bar.refresh() is True
    assert lines[-1] == "train [>   ]  1/10  10% | ETA ? | loss 0.5000"
    bar.close()
    clock.now += 60.0
    assert bar.refresh() is False and len(lines) == 2  # closed
    tty = progress.ProgressBar(10, stream=io.StringIO(), is_tty=True, clock=clock)
    tty.update(1)
    clock.now += 60.0
    assert tty.refresh() is False  # a terminal bar is on screen already
    tty.close()
