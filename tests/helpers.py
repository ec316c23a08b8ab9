"""Small data builders shared by tests."""

import numpy as np


def rectangles(n, size, seed=0, max_boxes=3):
    """Images with solid rectangles whose colour encodes the class (classes 0..2), padded targets."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 60, (n, size, size, 3)).astype(np.float32)
    colours = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]], np.float32)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    labels = -np.ones((n, max_boxes), np.int32)
    for i in range(n):
        for j in range(rng.integers(1, max_boxes + 1)):
            w, h = rng.uniform(0.25, 0.6, 2)
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            c = rng.integers(0, 3)
            images[i, int(y0 * size) : int((y0 + h) * size), int(x0 * size) : int((x0 + w) * size)] = colours[c]
            boxes[i, j] = (x0, y0, x0 + w, y0 + h)
            labels[i, j] = c
    return images, {"boxes": boxes, "labels": labels}
