"""Progress lines of a robustness table (``evaluation.progress``): per finished cell, and inside a long cell."""

from robustdet_tf.evaluation.progress import TableProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_inside_a_long_cell_and_at_each_cell_end_with_the_time_left():
    clock, lines = Clock(), []
    cells = [("ssd", "A_cls"), ("ssd", "CWA"), ("robustdet", "A_cls"), ("robustdet", "CWA")]
    progress = TableProgress(cells, images=100, printer=lines.append, every=30.0, clock=clock)
    progress.start_cell("ssd", "A_cls")
    for _ in range(4):  # 25 images every 20 s: a line once 30 s have passed since the last
        clock.now += 20.0
        progress.batch_done(25)
    assert lines == ["cell 1/4 (ssd, A_cls): 50/100 images, 40 s, cell ETA 40 s",
                     "cell 1/4 (ssd, A_cls): 100/100 images, 80 s, cell ETA 0 s"]
    progress.end_cell()  # left: ssd CWA as ssd's mean (80), robustdet A_cls as A_cls' (80), robustdet CWA (80)
    assert lines[-1] == "cell 1/4 (ssd, A_cls): 100 images in 80 s; table ETA 4.0 min"
    progress.start_cell("ssd", "CWA")
    clock.now += 40.0
    progress.end_cell(reused=True)  # ssd's mean 60 s; robustdet A_cls 80 s, robustdet CWA 40 s
    assert lines[-1] == "cell 2/4 (ssd, CWA): finished shards reused; table ETA 2.0 min"
    progress.start_cell("robustdet", "A_cls")
    clock.now += 300.0
    progress.end_cell()  # robustdet's own mean now: 300 s for its last cell
    assert lines[-1] == "cell 3/4 (robustdet, A_cls): 0 images in 5.0 min; table ETA 5.0 min"
    progress.start_cell("robustdet", "CWA")
    progress.end_cell()
    assert lines[-1].endswith("all cells done")


def test_unknown_image_count_gives_counts_without_an_eta():
    clock, lines = Clock(), []
    progress = TableProgress([("m", "clean"), ("m", "A_cls"), ("m", "CWA")], images=None, printer=lines.append,
                             every=5.0, clock=clock)
    progress.start_cell("m", "clean")
    clock.now += 6.0
    progress.batch_done(8)
    clock.now += 200.0
    progress.end_cell()
    assert lines == ["cell 1/3 (m, clean): 8 images, 6 s",
                     "cell 1/3 (m, clean): 8 images in 3.4 min; table ETA 6.9 min"]
