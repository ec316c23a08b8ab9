"""L2Norm of SSD's conv4_3 source (docs/reference.md#the-detector).

The conv4_3 activations are an order of magnitude larger than the deeper sources; SSD rescales each spatial
position to unit L2 norm over channels and multiplies by a learnable per-channel scale initialised to 20.  The
reference puts the epsilon inside the square root; we do the same so imported weights give identical outputs.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="robustdet_tf")
class L2Norm(keras.layers.Layer):
    """``out[c] = w[c] * x[c] / sqrt(sum_c x[c]^2 + eps)`` over the last (channel) axis."""

    def __init__(self, scale: float = 20.0, epsilon: float = 1e-10, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.weight = self.add_weight(
            name="weight",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.scale),
        )

    def call(self, x):
        norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        return self.weight * x / norm

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "epsilon": self.epsilon}
