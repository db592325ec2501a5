"""The progress line of ``simulate(..., progress=True)``: simulations per second and ETA.

It counts simulations (rows), not batches, so a one-θ-per-call simulator and a batched one
read alike. On a terminal (or in a Jupyter kernel) it is a live tqdm line on stderr::

    simulating:  42%|████▏     | 420/1000 [00:21<00:29, 19.8 sim/s, failed=2]

The rate is the mean since the call started (tqdm ``smoothing=0``), over the simulations this
call ran (a resumed bank's finished rows count towards the total but not the rate), and the
ETA is what is left at that rate. A mean rather than tqdm's smoothed recent rate because
calls of seconds on N workers finish in bursts of N, which makes the recent rate jump.

Elsewhere (a log file, a batch job's output) a live line would write a line per update, so
one summary line goes to stderr when the run ends or stops::

    simulate: 1000 of 1000 simulations (2 failed) in 50.5 s, 19.8 simulations/s

Quiet by default (``progress=False``).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "live"]


def live(stream: TextIO) -> bool:
    """Whether a live line suits ``stream``: a terminal, or a Jupyter kernel's output."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules


class Progress:
    """Counts finished simulations of one run and shows them as the module docstring says.

    Args:
        total: Simulations in the run.
        done: How many were finished before this call (a resumed bank's).
        enabled: False makes every method a no-op.
        stream: Where the line goes (``sys.stderr`` by default).
    """

    def __init__(self, total: int, done: int, enabled: bool, stream: TextIO | None = None):
        self.total, self.done, self.failed, self.enabled = total, done, 0, bool(enabled)
        self.initial, self.start = done, time.monotonic()
        self.stream = sys.stderr if stream is None else stream
        self.bar: Any = None
        if self.enabled and live(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                desc="simulating",
                unit="sim",
                smoothing=0,
                dynamic_ncols=True,
                file=self.stream,
            )

    def update(self, rows: int, failed: int = 0) -> None:
        """``rows`` more simulations finished, ``failed`` of them failed."""
        if not self.enabled:
            return
        self.done += rows
        self.failed += failed
        if self.bar is not None:
            if self.failed:
                self.bar.set_postfix_str(f"failed={self.failed}", refresh=False)
            self.bar.update(rows)

    def summary(self) -> str:
        """The one line printed when no live line is shown."""
        seconds = time.monotonic() - self.start
        ran = self.done - self.initial
        rate = ran / seconds if seconds > 0 else float("inf")
        failed = f" ({self.failed} failed)" if self.failed else ""
        resumed = f", {self.initial} from the bank" if self.initial else ""
        return (
            f"simulate: {self.done} of {self.total} simulations{failed} in {seconds:.1f} s"
            f"{resumed}, {rate:.3g} simulations/s"
        )

    def close(self) -> None:
        """End the live line, or print the summary line."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            print(self.summary(), file=self.stream, flush=True)
        self.enabled = False
