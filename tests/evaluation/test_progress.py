"""Progress lines of a robustness table (``evaluation.progress``): per finished cell, and inside a long cell."""

from robustdet_tf.evaluation.progress import TableProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_inside_a_long_cell_and_at_each_cell_end_with_the_time_left():
    clock, lines = Clock(), []
    progress = TableProgress(cells=2, images=100, printer=lines.append, every=30.0, clock=clock)
    progress.start_cell("ssd", "A_cls")
    for _ in range(4):  # 25 images every 20 s: a line once 30 s have passed since the last
        clock.now += 20.0
        progress.batch_done(25)
    assert lines == ["cell 1/2 (ssd, A_cls): 50/100 images, 40 s, cell ETA 40 s",
                     "cell 1/2 (ssd, A_cls): 100/100 images, 80 s, cell ETA 0 s"]
    progress.end_cell()
    assert lines[-1] == "cell 1/2 (ssd, A_cls): 100 images in 80 s; table ETA 80 s"
    progress.start_cell("ssd", "CWA")
    clock.now += 10.0
    progress.end_cell(reused=True)
    assert lines[-1] == "cell 2/2 (ssd, CWA): finished shards reused; all cells done"


def test_unknown_image_count_gives_counts_without_an_eta():
    clock, lines = Clock(), []
    progress = TableProgress(cells=3, images=None, printer=lines.append, every=5.0, clock=clock)
    progress.start_cell("m", "clean")
    clock.now += 6.0
    progress.batch_done(8)
    clock.now += 200.0
    progress.end_cell()
    assert lines == ["cell 1/3 (m, clean): 8 images, 6 s", "cell 1/3 (m, clean): 8 images in 3.4 min; table ETA 6.9 min"]
