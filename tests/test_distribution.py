"""Strategy names and the chief rule read from TF_CONFIG (the cluster itself is tested in test_multi_worker.py)."""

import json
import os

import pytest
import tensorflow as tf

from robustdet_tf import distribution


def _cluster(monkeypatch, kind, index, chief=False):
    cluster = {"worker": ["h1:1", "h2:1"], **({"chief": ["h0:1"]} if chief else {})}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}}))


def test_the_chief_writes_and_the_others_write_into_scratch(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribution.is_chief() and distribution.num_workers() == 1 and distribution.worker_index() == 0
    _cluster(monkeypatch, "worker", 0)
    assert distribution.is_chief() and distribution.num_workers() == 2
    assert distribution.write_dir(str(tmp_path / "checkpoints")) == str(tmp_path / "checkpoints")
    _cluster(monkeypatch, "worker", 1)
    assert not distribution.is_chief() and distribution.worker_index() == 1
    assert distribution.write_dir(str(tmp_path / "checkpoints")) == os.path.join(
        str(tmp_path), ".scratch_worker_1", "checkpoints")
    _cluster(monkeypatch, "worker", 0, chief=True)
    assert not distribution.is_chief() and distribution.num_workers() == 3 and distribution.worker_index() == 1
    _cluster(monkeypatch, "chief", 0, chief=True)
    assert distribution.is_chief()


def test_outside_a_strategy_the_replica_arithmetic_is_the_identity():
    assert distribution.num_replicas() == 1
    value = tf.constant([1.5, -2.0])
    for helper in (distribution.replica_sum, distribution.replica_mean, distribution.gather_replicas):
        assert helper(value) is value
    grads = [tf.constant([2.0]), None]
    assert distribution.replica_share(grads) == grads
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        assert distribution.num_replicas() == 1
    assert float(strategy.run(lambda: distribution.replica_mean(tf.constant(3.0)))) == 3.0  # a replica context of one


def test_strategy_names(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribution.make_strategy("auto") is tf.distribute.get_strategy()  # no GPU here
    assert distribution.make_strategy("one_device").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="config.train.strategy='nccl'"):
        distribution.make_strategy("nccl")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribution.make_strategy("multi_worker")


def test_local_cluster_names_distinct_free_localhost_ports():
    import socket

    cluster = distribution.local_cluster(3)
    addresses = cluster["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("localhost:") for a in addresses)
    for address in addresses:  # released again: a worker can bind it
        with socket.socket() as s:
            s.bind(("localhost", int(address.split(":")[1])))
