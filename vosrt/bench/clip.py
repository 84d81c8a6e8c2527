"""The benchmark's synthetic clip: discs moving over a smooth random background."""
from __future__ import annotations

import numpy as np
from PIL import Image


def synthetic_clip(size: tuple[int, int], objects: int, frames: int, seed: int = 0
                   ) -> tuple[list[np.ndarray], np.ndarray]:
    """``frames`` RGB images ``HxWx3`` uint8 of ``objects`` discs moving over a smooth random
    background, and the first frame's label map ``HxW`` (labels 1..objects)."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.integers(0, 256, (max(h // 32, 2), max(w // 32, 2), 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    centres = rng.uniform(0.25, 0.75, (objects, 2)) * (h, w)
    velocities = rng.normal(0, 0.01, (objects, 2)) * min(h, w)
    radii = rng.uniform(0.06, 0.12, objects) * min(h, w)
    colours = rng.integers(0, 256, (objects, 3))
    rows, cols = np.mgrid[:h, :w]
    images, first_mask = [], np.zeros((h, w), np.int64)
    for t in range(frames):
        image = background.copy()
        for k in range(objects):
            cy, cx = centres[k] + t * velocities[k]
            disc = (rows - cy) ** 2 + (cols - cx) ** 2 < radii[k] ** 2
            image[disc] = colours[k]
            if t == 0:
                first_mask[disc] = k + 1
        images.append(image)
    return images, first_mask
