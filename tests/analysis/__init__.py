"""Tests of robustdet_tf.analysis."""
