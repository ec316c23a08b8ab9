"""Official PyTorch checkpoints ↔ our Keras models: the key maps and the reader/writer (``--mode=import``)."""
