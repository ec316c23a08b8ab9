"""Graph functions traced once per input signature (structure, dtypes, shapes) and then only called.

Why: evaluation and the diagnostics build one compiled step per (model, attack) — a table has a dozen or more — and
call each on a few batches.  Traced through ordinary ``tf.function`` calls, each step's first call counts as a
retrace of the same Python code (TensorFlow's retracing detector keys on the code object, which every step built by
one factory shares), so a correct table logs "triggered tf.function retracing" warnings.  Here each step is traced
explicitly (``get_concrete_function``) once per input shape — a set's full batches and its smaller last batch — and
calling it is only a call.  Shapes stay static (no open batch dimension): the graph TensorFlow optimises is the one
an ordinary first call would trace, so speed and numerics are those of a plain ``tf.function``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf


def traced_once(fn: Callable[..., Any], *, jit_compile: bool = False, autograph: bool = False) -> Callable[..., Any]:
    """``fn`` (positional tensor arguments, nested structures allowed) as a graph function traced once per input
    structure, dtypes and shapes.

    Without AutoGraph by default: the steps traced here hold no Python control flow on tensors (the attacks' step
    loops are explicit ``while`` loops, ``attacks.budget.repeat``), and AutoGraph's conversion of every function a
    step calls took about a quarter of each trace; code that needs it passes ``autograph=True`` (a Python ``if`` or
    ``for`` on a tensor then fails loudly at trace time instead of silently)."""
    def positional(*args: Any) -> Any:  # a partial's bound keywords must not become part of the signature
        return fn(*args)

    function = tf.function(positional, jit_compile=jit_compile, autograph=autograph)
    traced: dict[str, Any] = {}

    def call(*args: Any) -> Any:
        args = tf.nest.map_structure(tf.convert_to_tensor, args)
        specs = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), args)
        key = repr(specs)  # structure, dtypes and shapes (TensorSpec's repr holds them)
        if key not in traced:
            traced[key] = function.get_concrete_function(*specs)
        return traced[key](*args)

    return call
