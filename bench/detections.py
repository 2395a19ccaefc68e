"""The detection record every model produces and every evaluator consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageDetections:
    """Detections of one image, in the dataset's own terms.

    ``boxes`` are ``[N, 4]`` float ``(x1, y1, x2, y2)`` in *original* image pixel coordinates (models
    detect on a resized image; :func:`bench.data.transforms.boxes_to_original` maps them back).
    ``category_ids`` are the dataset's JSON category ids, not contiguous labels, so detections from
    several prompt chunks can simply be concatenated.
    """

    image_id: int
    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.category_ids = np.asarray(self.category_ids, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.category_ids) != n:
            raise ValueError(
                f"ImageDetections for image {self.image_id}: {n} boxes, {len(self.scores)} scores and "
                f"{len(self.category_ids)} category ids; the three must have the same length."
            )

    def __len__(self) -> int:
        return len(self.boxes)
