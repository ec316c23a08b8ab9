"""Progress of a robustness table: which cell runs, how many images are done, and how long the rest will take.

Why: a table is a grid of attacked passes over the evaluation set, and one cell (say A_cls with PGD-20 on 4,952
images) can run for an hour on a CPU.  Training reports a line every few steps; evaluation did not report at all
until the table was written.  This prints one line when a cell finishes (its time, the table's estimated time
left) and, inside a long cell, a line at most every ``every`` seconds (images done, the cell's time left) — on a
terminal and in a log file alike, since the lines go through the run's printer.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class TableProgress:
    """Counts the cells and images of one table and prints where it stands.

    ``cells``: the cells this process computes; ``images``: images per cell (``None`` if unknown: no ETA inside a
    cell); ``every``: the most seconds between two lines inside a cell.  ``clock`` is injectable for tests.
    """

    def __init__(self, cells: int, images: int | None, printer: Callable[[str], None], every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.cells, self.images, self.printer, self.every, self.clock = cells, images, printer, every, clock
        self.started = clock()
        self.finished = 0
        self.cell_name = ""
        self.cell_started = self.last_line = self.started
        self.done = 0

    def start_cell(self, model: str, attack: str) -> None:
        self.cell_name = f"cell {self.finished + 1}/{self.cells} ({model}, {attack})"
        self.cell_started = self.last_line = self.clock()
        self.done = 0

    def batch_done(self, images: int) -> None:
        """``images`` more images of the current cell are attacked and detected."""
        self.done += int(images)
        now = self.clock()
        if now - self.last_line < self.every:
            return
        self.last_line = now
        elapsed = now - self.cell_started
        line = f"{self.cell_name}: {self.done}"
        if self.images:
            left = elapsed / max(self.done, 1) * (self.images - self.done)
            line += f"/{self.images} images, {_duration(elapsed)}, cell ETA {_duration(left)}"
        else:
            line += f" images, {_duration(elapsed)}"
        self.printer(line)

    def end_cell(self, reused: bool = False) -> None:
        now = self.clock()
        self.finished += 1
        spent = now - self.cell_started
        left = (now - self.started) / self.finished * (self.cells - self.finished)
        what = "finished shards reused" if reused else f"{self.done} images in {_duration(spent)}"
        tail = f"table ETA {_duration(left)}" if self.finished < self.cells else "all cells done"
        self.printer(f"{self.cell_name}: {what}; {tail}")
