"""Sharded evaluation: shards merged in order give the one-pass table exactly (values and bootstrap intervals); an
interrupted table resumes by shard
without recomputing finished shards; a resume with another plan is refused; workers divide the shards statically."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.evaluation import robustness, sharded
from robustdet_tf.evaluation.evaluate import evaluate_detections, make_metric
from robustdet_tf.evaluation.shard_plan import PlanMismatchError
from robustdet_tf.evaluation.table_spec import TableRun, TableSpec
from robustdet_tf.metrics.bootstrap import BootstrapSpec, table_intervals
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.evaluation.test_robustness import CLASS_NAMES, SIZE, rectangles
from tests.helpers import train_on_detection_loss

NUM_IMAGES, BATCH = 11, 3  # batches of 3, 3, 3, 2
ATTACKS = ("clean", "A_cls")
QUICK = {"pgd": {"steps": 2}}


def eval_batches(images, targets):
    eval_targets = {**targets, "difficult": np.zeros_like(targets["labels"], bool),
                    "original_size": np.full((len(images), 2), SIZE, np.int32)}
    return tf.data.Dataset.from_tensor_slices((images, eval_targets)).batch(BATCH)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny SSD trained on 11 rectangles (saved as model.keras for the subprocess tests), its evaluation batches
    and the reference numbers: every cell evaluated in one pass by ``evaluate_detections`` (no shards)."""
    keras.utils.set_random_seed(0)
    images, targets = rectangles(NUM_IMAGES, SIZE, seed=3)
    model = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)
    model.build()
    train_on_detection_loss(model, images, targets, steps=40)
    folder = tmp_path_factory.mktemp("model")
    model.save(folder / "model.keras")
    batches = eval_batches(images, targets)
    protocol = robustness.make_protocol("reference", QUICK)
    reference = {}
    for attack in ATTACKS:
        metric = make_metric("voc07", CLASS_NAMES)
        reference[attack] = evaluate_detections(model, batches, metric, robustness.make_attack(attack, protocol))
        reference[attack]["matches"] = metric.ranked_matches()
    assert reference["clean"]["mAP"] > 0.3 and reference["A_cls"]["mAP"] < reference["clean"]["mAP"]
    return model, batches, reference, folder / "model.keras"


def table(model, batches, output_dir, **kwargs):
    run = TableRun(**{k: kwargs.pop(k) for k in ("strategy", "workers", "printer", "metric_factory", "data")
                      if k in kwargs})
    return robustness.evaluate_robustness({"m": model}, batches, CLASS_NAMES, output_dir,
                                          TableSpec(attacks=ATTACKS, overrides=QUICK, plots=False, **kwargs), run)


def assert_table_is_reference(results, reference):
    for attack in ATTACKS:
        assert results["models"]["m"][attack] == reference[attack]["mAP"], attack
        assert results["per_class_AP"]["m"][attack] == {k: float(v) for k, v in reference[attack]["AP"].items()}
    assert results["num_images"] == NUM_IMAGES
    # The bootstrap intervals are those of the one-pass metrics (the default 1000 resamples, seed 0).
    expected = table_intervals({("m", a): reference[a]["matches"] for a in ATTACKS}, ["m"], list(ATTACKS),
                               BootstrapSpec())
    for attack in ATTACKS:
        cell = results["cells"]["m"][attack]
        assert (cell["ci_low"], cell["ci_high"]) == expected["cells"]["m"][attack], attack
    assert (results["worst_case"]["m"]["ci_low"], results["worst_case"]["m"]["ci_high"]) == expected["lowest"]["m"]


@pytest.mark.parametrize("shard_batches", [None, 1, 2, 4])
def test_sharded_table_equals_the_one_pass_table(setup, tmp_path, shard_batches):
    model, batches, reference, _ = setup
    results = table(model, batches, tmp_path, shard_batches=shard_batches)
    assert_table_is_reference(results, reference)
    assert not (tmp_path / "shards").exists()  # the finished table keeps no partial results
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == ["robustness.json", "robustness.md"]


class Interrupt(RuntimeError):
    pass


def counting_steps(monkeypatch, fail_after=None):
    """Wrap every cell's batch step: count the calls per attack; raise ``Interrupt`` on call ``fail_after + 1``."""
    calls = {}
    original = robustness.batch_step

    def batch_step(model, attack, strategy=None):
        step = original(model, attack, strategy)
        name = "clean" if attack is None else "attack"

        def counted(images, targets):
            if fail_after is not None and sum(calls.values()) >= fail_after:
                raise Interrupt("simulated interruption")
            calls[name] = calls.get(name, 0) + 1
            return step(images, targets)

        return counted

    monkeypatch.setattr(robustness, "batch_step", batch_step)
    return calls


def test_an_interrupted_table_resumes_by_shard(setup, tmp_path, monkeypatch):
    model, batches, reference, _ = setup
    with monkeypatch.context() as patch:
        counting_steps(patch, fail_after=6)  # clean: 4 batches; A_cls: shards 0 and 1 done, then interrupted
        with pytest.raises(Interrupt):
            table(model, batches, tmp_path, shard_batches=1)
    assert sharded.is_unfinished(tmp_path)
    assert sorted(sharded.finished_shards(sharded.cell_dir(tmp_path, "m", "clean"))) == [0, 1, 2, 3, 4]
    assert sorted(sharded.finished_shards(sharded.cell_dir(tmp_path, "m", "A_cls"))) == [0, 1]

    calls = counting_steps(monkeypatch)
    printed = []
    results = table(model, batches, tmp_path, shard_batches=1, printer=printed.append)
    assert calls == {"attack": 2}  # only A_cls shards 2 and 3; the clean cell is not even read
    assert printed[-1] == "worker 0 of 1: computed 3 shards, reused 7 finished shards (2 cells)"  # + A_cls's end
    assert printed[0] == "cell 1/2 (m, clean): finished shards reused; table ETA 0 s"  # the progress lines
    assert printed[1].startswith("cell 2/2 (m, A_cls): ") and printed[1].endswith("; all cells done")
    assert_table_is_reference(results, reference)
    assert not sharded.is_unfinished(tmp_path)


def test_a_resume_with_another_plan_is_refused_and_nothing_deleted(setup, tmp_path, monkeypatch):
    model, batches, _, _ = setup
    with monkeypatch.context() as patch:
        counting_steps(patch, fail_after=5)
        with pytest.raises(Interrupt):
            table(model, batches, tmp_path, shard_batches=1)
    def listing():  # the partial results, byte for byte in time (the lock file only names its holder)
        return sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")
                      if not p.name.startswith(".lock"))

    before = listing()
    with pytest.raises(PlanMismatchError, match=r"protocol\.pgd\.steps: saved 2, now 3.*another output folder"):
        robustness.evaluate_robustness({"m": model}, batches, CLASS_NAMES, tmp_path,
                                       TableSpec(attacks=ATTACKS, overrides={"pgd": {"steps": 3}}, plots=False,
                                                 shard_batches=1))
    with pytest.raises(PlanMismatchError, match="shard_batches: saved 1, now 2"):
        table(model, batches, tmp_path, shard_batches=2)
    retrained = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)
    with pytest.raises(PlanMismatchError, match=r"models\.m"):
        table(retrained, batches, tmp_path, shard_batches=1)
    assert listing() == before


def test_workers_divide_the_shards_and_the_chief_merges(setup, tmp_path):
    """Worker 1 of 2 computes the odd shards and writes no table; the chief then computes the even ones and merges
    all; a chief whose partner never comes names the missing shards and their worker."""
    model, batches, reference, _ = setup
    lonely = tmp_path / "lonely"
    with pytest.raises(TimeoutError, match=r"shards missing: 1 \(worker 1\), 3 \(worker 1\).*same --output_dir"):
        table(model, batches, lonely, shard_batches=1, workers=sharded.Workers(0, 2, True), shard_timeout=0.2)

    folder = tmp_path / "pair"
    assert table(model, batches, folder, shard_batches=1, workers=sharded.Workers(1, 2, False)) is None
    assert sorted(sharded.finished_shards(sharded.cell_dir(folder, "m", "A_cls"))) == [1, 3]
    assert not (folder / "robustness.json").exists()
    results = table(model, batches, folder, shard_batches=1, workers=sharded.Workers(0, 2, True))
    assert_table_is_reference(results, reference)


@pytest.mark.parametrize("how", ["truncated", "zero-length"])
def test_a_damaged_shard_is_named_kept_aside_and_computed_again(setup, tmp_path, monkeypatch, capsys, how):
    """A shard file cut by a crash or a full disk: the resume names it, moves it to damaged_shards/ (kept after the
    table is written) and computes that shard again; the table is the one-pass table."""
    model, batches, reference, _ = setup
    with monkeypatch.context() as patch:
        counting_steps(patch, fail_after=6)  # clean: shards 0..4 done; A_cls: shards 0 and 1 done
        with pytest.raises(Interrupt):
            table(model, batches, tmp_path, shard_batches=1)
    shard = sharded.shard_file(sharded.cell_dir(tmp_path, "m", "A_cls"), 1)
    data = open(shard, "rb").read()
    with open(shard, "wb") as handle:
        handle.write(data[: len(data) // 2] if how == "truncated" else b"")
    capsys.readouterr()

    calls = counting_steps(monkeypatch)
    results = table(model, batches, tmp_path, shard_batches=1)
    assert calls == {"attack": 3}  # A_cls shards 1 (again), 2 and 3
    assert_table_is_reference(results, reference)
    said = capsys.readouterr().err
    assert f"shard {shard} is damaged" in said and "is computed again" in said
    kept = tmp_path / "damaged_shards" / "m" / "A_cls" / "shard-00001.npz"
    assert kept.read_bytes() == (data[: len(data) // 2] if how == "truncated" else b"")


@pytest.mark.slow
def test_a_second_evaluation_into_a_busy_output_folder_is_refused_naming_the_holder(setup, tmp_path):
    """One evaluation per output folder: while one holds it (here a process holding its lock, as a running table
    does), another is refused at once with the holder named and nothing touched; a killed holder leaves no lock."""
    import subprocess
    import sys

    from robustdet_tf.io import WorkdirLockedError

    model, batches, reference, _ = setup
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom robustdet_tf.io import workdir_lock\n"
         f"with workdir_lock({str(tmp_path)!r}, name='.lock-worker0'):\n    print('held', flush=True)\n"
         "    time.sleep(600)\n"],
        cwd=root, stdout=subprocess.PIPE, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLockedError, match=f"in use by another run \\(pid {holder.pid} .*another "
                                                     "--output_dir"):
            table(model, batches, tmp_path, shard_batches=1)
        assert not (tmp_path / "shards").exists()
        # A worker of the same cluster (another index) shares the folder by design.
        assert table(model, batches, tmp_path, shard_batches=1, workers=sharded.Workers(1, 2, False)) is None
    finally:
        holder.kill()
        holder.wait()
    assert_table_is_reference(table(model, batches, tmp_path, shard_batches=1), reference)
