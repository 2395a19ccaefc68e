"""A validation split held out from the training images, for datasets whose validation is their test.

Some datasets ship one annotation file for both validation and test (ODinW's PascalVOC has only
``train`` and ``valid``; GLIP scores and selects on ``valid`` alike). Selecting weights or
hyper-parameters on such a split would choose them on test data, so when a sweep selects on
validation (``selection: best-val`` or ``--tune``) those datasets get a validation split drawn from
their *training* images instead, by one fixed, documented rule:

* full data: :data:`HELD_OUT_FRACTION` of the training images (at least one), drawn with
  :data:`HELD_OUT_SEED` from the images in ascending id order, become validation; training uses the
  rest. The split is the same for every method and seed, so replicates differ only in training.
* K-shot: the K-shot sample is drawn from the whole training split first, exactly as without a
  held-out split (so it is GLIP's, or the prepared, sample), and validation is drawn by the same rule
  from the training images *outside* that sample, sized as for full data (fewer if fewer remain).

Test images are never used. The rule's name (:data:`HELD_OUT`) is part of every affected run's key
and record (``RunSpec.validation``), so results with and without it never mix.
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.data.coco_format import CocoAnnotations
from bench.errors import DataError

HELD_OUT_FRACTION = 0.2
HELD_OUT_SEED = 0
DECLARED = "split"  # validation is the dataset's own validation split
HELD_OUT = f"held-out-train-{HELD_OUT_FRACTION:g}-seed{HELD_OUT_SEED}"
VALIDATIONS = (DECLARED, HELD_OUT)


def validation_is_test(val_annotations: Path, test_annotations: Path) -> bool:
    """Whether a dataset's validation and test splits are one annotation file."""
    return Path(val_annotations).resolve() == Path(test_annotations).resolve()


def held_out_image_ids(train: CocoAnnotations, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """The training image ids that become validation: :data:`HELD_OUT_FRACTION` of the training
    split's size, drawn with :data:`HELD_OUT_SEED` from the images not in ``exclude`` (a K-shot sample)."""
    candidates = [image_id for image_id in train.image_ids if image_id not in exclude]
    wanted = max(1, round(HELD_OUT_FRACTION * len(train.image_ids)))
    if not candidates or (not exclude and len(candidates) < 2):
        raise DataError(
            f"{train.path} has {len(train.image_ids)} training image(s) and {len(candidates)} outside the few-shot "
            "sample: too few to hold a validation split out of them (this dataset's validation file is its test file). "
            "Use fewer shots, or --protocol-set selection=last without --tune, which selects nothing on validation."
        )
    random.Random(HELD_OUT_SEED).shuffle(candidates)
    return sorted(candidates[: min(wanted, len(candidates) - (0 if exclude else 1))])


def split_off_validation(train: CocoAnnotations, sample: CocoAnnotations | None = None) -> tuple[CocoAnnotations, CocoAnnotations]:
    """``(training annotations, held-out validation annotations)`` of a training split; ``sample``
    is the K-shot training sample drawn from ``train`` (None: full data, which loses the held-out images)."""
    exclude = frozenset(sample.images) if sample is not None else frozenset()
    validation = held_out_image_ids(train, exclude)
    if sample is not None:
        return sample, train.subset(validation)
    held = set(validation)
    return train.subset([i for i in train.image_ids if i not in held]), train.subset(validation)
