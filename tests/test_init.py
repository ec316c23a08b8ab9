"""``import robustdet_tf`` alone is enough to load a saved ``.keras`` model (every layer is registered)."""

import os
import subprocess
import sys

import pytest

from robustdet_tf.models.robustdet import RobustDet
from tests.conftest import TINY_SSD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_a_fresh_interpreter_loads_a_keras_file_after_import_robustdet_tf(tmp_path):
    model = RobustDet(**TINY_SSD, num_kernels=2, aid_width=4, cfr=True, decoder_width=16,
                      class_names=("a", "b", "c"))
    model.build()
    path = tmp_path / "model.keras"
    model.save(path)
    script = (
        "import keras, robustdet_tf\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        "print(type(m).__name__, m.class_names, len(m.weights))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == str(len(model.weights))
    assert "RobustDet ('a', 'b', 'c')" in proc.stdout
