"""Progress of a robustness table: which cell runs, how many images are done, and how long the rest will take.

Why: a table is a grid of attacked passes over the evaluation set, and one cell (say A_cls with PGD-20 on 4,952
images) can run for an hour on a CPU.  Training reports a line every few steps; evaluation did not report at all
until the table was written.  This prints one line when a cell finishes (its time, the table's estimated time
left) and, inside a long cell, a line at most every ``every`` seconds (images done, the cell's time left) — on a
terminal and in a log file alike, since the lines go through the run's printer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class TableProgress:
    """Counts the cells and images of one table and prints where it stands.

    ``cells``: the ``(model, attack)`` cells this process computes, in order; ``images``: images per cell (``None``
    if unknown: no ETA inside a cell); ``every``: the most seconds between two lines inside a cell.  The table's
    time left sums an estimate per remaining cell: the mean time of the finished cells of its model, else of its
    attack, else of all (cells of one model cost alike; RobustDet's cost several times the SSD's).  ``clock`` is
    injectable for tests.
    """

    def __init__(self, cells: Sequence[tuple[str, str]], images: int | None, printer: Callable[[str], None],
                 every: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.cells, self.images, self.printer, self.every, self.clock = list(cells), images, printer, every, clock
        self.spent: dict[tuple[str, str], float] = {}
        self.cell_name = ""
        self.cell_started = self.last_line = clock()
        self.done = 0

    def start_cell(self, model: str, attack: str) -> None:
        self.current = (model, attack)
        self.cell_name = f"cell {len(self.spent) + 1}/{len(self.cells)} ({model}, {attack})"
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

    def _estimate(self, cell: tuple[str, str]) -> float:
        for same in (lambda c: c[0] == cell[0], lambda c: c[1] == cell[1], lambda c: True):
            times = [t for c, t in self.spent.items() if same(c)]
            if times:
                return sum(times) / len(times)
        return 0.0

    def end_cell(self, reused: bool = False) -> None:
        spent = self.clock() - self.cell_started
        self.spent[self.current] = spent
        left = sum(self._estimate(cell) for cell in self.cells if cell not in self.spent)
        what = "finished shards reused" if reused else f"{self.done} images in {_duration(spent)}"
        tail = f"table ETA {_duration(left)}" if len(self.spent) < len(self.cells) else "all cells done"
        self.printer(f"{self.cell_name}: {what}; {tail}")
