"""A terminal progress bar for training: steps, ETA, loss and tokens/s.

On a terminal the bar redraws itself in place with carriage returns:

    train [=========>          ]  480/1000  48% | 6.1 step/s | ETA 1m25s | loss 0.2134 | 5.2k tok/s

Anywhere else (CI logs, files) it logs the same text as a plain line through absl logging every
`log_every_s` seconds, and at the first and the last step, so logs stay readable.

While the bar is on a terminal, log records do not land in the middle of it: a filter on the absl
logger and on the root logger's handlers clears the bar's line before a record is printed, and the
bar is drawn again at the next update. Other output should go through `ProgressBar.write`.
"""

from __future__ import annotations

import logging as std_logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from absl import logging

_CLEAR_LINE = "\r\x1b[K"  # back to column 0, erase to the end of the line


def format_duration(seconds: float) -> str:
    """12 -> "12s", 275 -> "4m35s", 3725 -> "1h02m"."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_rate(value: float) -> str:
    """950 -> "950", 5230 -> "5.2k", 1.5e6 -> "1.5M"."""
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


class _ClearBarFilter(std_logging.Filter):
    """Lets every record through, clearing the bar's terminal line first."""

    def __init__(self, bar: ProgressBar):
        super().__init__()
        self._bar = bar

    def filter(self, record: std_logging.LogRecord) -> bool:
        self._bar._clear_line()
        return True


class ProgressBar:
    """Progress of a training run.

    Example:
        bar = ProgressBar(total_steps=1000, initial_step=step)
        for ...:
            bar.update(step, loss=loss, tokens_per_s=tokens_per_s)
        bar.close()
    """

    def __init__(self, total_steps: int | None, *, initial_step: int = 0,
                 description: str = "train", unit: str = "step",
                 stream: TextIO | None = None,
                 is_tty: bool | None = None, log_every_s: float = 30.0,
                 min_redraw_s: float = 0.1, width: int = 20,
                 clock: Callable[[], float] = time.monotonic):
        """Args:
          total_steps: the step at which training ends; None if unknown (no bar, no ETA).
          initial_step: the step training starts (or resumes) from.
          description: first word of the line.
          unit: what is counted, for the rate ("step/s", "window/s").
          stream: where the terminal bar goes; default sys.stderr.
          is_tty: draw in place; default: whether `stream` is a terminal.
          log_every_s: seconds between plain lines when not on a terminal.
          min_redraw_s: least seconds between redraws on a terminal.
          width: characters of the bar itself.
          clock: seconds, monotonic (tests pass a fake one).
        """
        self.total_steps = total_steps
        self.description = description
        self.unit = unit
        self._stream = stream if stream is not None else sys.stderr
        if is_tty is None:
            is_tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self.is_tty = is_tty
        self._log_every_s = log_every_s
        self._min_redraw_s = min_redraw_s
        self._width = width
        self._clock = clock
        self._start_step = initial_step
        self._start_time: float | None = None  # time of the first update: excludes tracing
        self._last_output: float | None = None
        self._line_shown = False
        self._step = initial_step
        self._fields: dict[str, Any] = {}
        self._closed = False
        self._filter: _ClearBarFilter | None = None
        self._filtered: list[std_logging.Filterer] = []
        if self.is_tty:
            self._filter = _ClearBarFilter(self)
            # absl's own logger catches every absl.logging call whatever handler prints it; the
            # root handlers catch records of other libraries' loggers.
            self._filtered = [logging.get_absl_logger(), *std_logging.getLogger().handlers]
            for target in self._filtered:
                target.addFilter(self._filter)

    # ---- public API ----------------------------------------------------------------------------

    def update(self, step: int, loss: float | None = None, tokens_per_s: float | None = None,
               **extra: Any) -> None:
        """Reports that `step` steps are done.

        Args:
          step: the global step.
          loss: the latest training loss, shown with 4 decimals.
          tokens_per_s: throughput, shown as e.g. "5.2k tok/s".
          **extra: more numbers to show as "name value" (e.g. lr=1e-3).
        """
        now = self._clock()
        if self._start_time is None:
            # Rates and ETA count from the first update, so the first step's tracing and
            # compilation time does not distort them.
            self._start_time = now
            self._start_step = step
        self._step = step
        self._fields = {}
        if loss is not None:
            self._fields["loss"] = loss
        if tokens_per_s is not None:
            self._fields["tokens_per_s"] = tokens_per_s
        self._fields.update(extra)
        finished = self.total_steps is not None and step >= self.total_steps
        if self.is_tty:
            if (finished or self._last_output is None or not self._line_shown
                    or now - self._last_output >= self._min_redraw_s):
                self._stream.write(_CLEAR_LINE + self.render(now))
                self._stream.flush()
                self._line_shown = True
                self._last_output = now
        elif (finished or self._last_output is None
              or now - self._last_output >= self._log_every_s):
            logging.info("%s", self.render(now))
            self._last_output = now

    def refresh(self) -> bool:
        """Logs the current line again when not on a terminal and `log_every_s` has passed
        since the last one (a step that takes long is not silence). Nothing before the first
        update, nothing on a terminal (the bar is on screen). Returns whether it logged."""
        if self.is_tty or self._start_time is None or self._closed:
            return False
        now = self._clock()
        if self._last_output is not None and now - self._last_output < self._log_every_s:
            return False
        logging.info("%s", self.render(now))
        self._last_output = now
        return True

    @property
    def seconds_since_output(self) -> float | None:
        """Seconds since the bar last logged or drew a line (None: never)."""
        return None if self._last_output is None else self._clock() - self._last_output

    def write(self, message: str) -> None:
        """Prints a line of text without breaking the bar."""
        if self.is_tty:
            self._clear_line()
            self._stream.write(message + "\n")
            self._stream.flush()
        else:
            logging.info("%s", message)

    def close(self) -> None:
        """Leaves the final state on its own line and detaches from absl logging."""
        if self._closed:
            return
        self._closed = True
        for target in self._filtered:
            target.removeFilter(self._filter)
        if self.is_tty and self._start_time is not None:
            self._stream.write(_CLEAR_LINE + self.render(self._clock()) + "\n")
            self._stream.flush()
            self._line_shown = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- rendering -----------------------------------------------------------------------------

    def steps_per_s(self, now: float) -> float | None:
        """Steps per second since the first update, None before any time has passed."""
        if self._start_time is None or now <= self._start_time or self._step <= self._start_step:
            return None
        return (self._step - self._start_step) / (now - self._start_time)

    def render(self, now: float) -> str:
        """The progress text (no line end)."""
        parts = []
        total = self.total_steps
        if total:
            fraction = min(max(self._step / total, 0.0), 1.0)
            filled = int(fraction * self._width)
            arrow = ">" if filled < self._width else ""
            bar = ("=" * filled + arrow).ljust(self._width)
            digits = len(str(total))
            parts.append(f"{self.description} [{bar}] {self._step:>{digits}}/{total} "
                         f"{fraction * 100:3.0f}%")
        else:
            parts.append(f"{self.description} step {self._step}")
        rate = self.steps_per_s(now)
        if rate is not None:
            parts.append(f"{rate:.2g} {self.unit}/s" if rate < 10
                         else f"{rate:.0f} {self.unit}/s")
            if total:
                parts.append(f"ETA {format_duration(max(total - self._step, 0) / rate)}")
        elif total:
            parts.append("ETA ?")
        for name, value in self._fields.items():
            if name == "loss":
                parts.append(f"loss {float(value):.4f}")
            elif name == "tokens_per_s":
                parts.append(f"{format_rate(float(value))} tok/s")
            elif isinstance(value, float):
                parts.append(f"{name} {value:.4g}")
            else:
                parts.append(f"{name} {value}")
        return " | ".join(parts)

    def _clear_line(self) -> None:
        if self.is_tty and self._line_shown:
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()
            self._line_shown = False
