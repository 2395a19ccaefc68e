"""Drawing for the synthetic shapes world: shape geometry, colours, backgrounds, object placement.

Everything here is pixels and geometry; what the objects *mean* (categories, splits, COCO/LVIS files)
lives in :mod:`bench.data.synthetic`. Shapes are polygons in a unit box ``[-1, 1]^2`` (circles are
fine polygons), rasterised with PIL without anti-aliasing, so every object pixel has exactly its
vocabulary colour and a box computed from the rasterised mask is tight to the pixel.

All randomness comes from the generators the caller passes in (``random.Random`` for decisions,
``numpy.random.Generator`` for per-pixel noise); nothing here touches global random state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Saturated colours, all far from the light, low-saturation background tones below.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 60, 190),
    "orange": (245, 140, 20),
    "pink": (245, 120, 190),
    "brown": (130, 80, 40),
    "cyan": (30, 200, 220),
    "black": (20, 20, 20),
    "teal": (0, 128, 128),
    "magenta": (220, 0, 200),
    "lime": (150, 230, 40),
    "navy": (20, 30, 110),
    "maroon": (120, 20, 40),
    "olive": (120, 120, 20),
}

BACKGROUNDS = ("plain", "noise", "stripes", "gradient", "clutter")


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    """``n`` points on a circle, the first pointing up (image y grows downwards)."""
    angles = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _fit_unit_box(points: np.ndarray) -> np.ndarray:
    """Centre a polygon on its extent and scale its longer side to 2, so ``size`` means extent."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2) * (2 / (hi - lo).max())


def _star() -> np.ndarray:
    outer, inner = _regular(5), _regular(5, 0.45, -math.pi / 2 + math.pi / 5)
    return _fit_unit_box(np.stack([outer, inner], axis=1).reshape(-1, 2))


def _semicircle() -> np.ndarray:
    angles = np.linspace(math.pi, 2 * math.pi, 25)
    return _fit_unit_box(np.stack([np.cos(angles), np.sin(angles)], axis=1))


_CIRCLE = _regular(48)

# Each shape is a list of (polygon, filled) layers: filled layers add to the object's mask and
# unfilled ones cut holes (ring, crescent), all in unit-box coordinates.
SHAPES: dict[str, list[tuple[np.ndarray, bool]]] = {
    "square": [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), True)],
    "circle": [(_CIRCLE, True)],
    "triangle": [(np.array([[0, -1], [1, 1], [-1, 1]], float), True)],
    "star": [(_star(), True)],
    "hexagon": [(_fit_unit_box(_regular(6, phase=0.0)), True)],
    "pentagon": [(_fit_unit_box(_regular(5)), True)],
    "cross": [
        (np.array([[-0.33, -1], [0.33, -1], [0.33, -0.33], [1, -0.33], [1, 0.33], [0.33, 0.33],
                   [0.33, 1], [-0.33, 1], [-0.33, 0.33], [-1, 0.33], [-1, -0.33], [-0.33, -0.33]]), True)
    ],
    "diamond": [(np.array([[0, -1], [0.65, 0], [0, 1], [-0.65, 0]]), True)],
    "ring": [(_CIRCLE, True), (0.55 * _CIRCLE, False)],
    "crescent": [(_CIRCLE, True), (0.85 * _CIRCLE + [0.45, -0.15], False)],
    "arrow": [
        (np.array([[-1, -0.3], [0.15, -0.3], [0.15, -0.8], [1, 0], [0.15, 0.8], [0.15, 0.3], [-1, 0.3]]), True)
    ],
    "bar": [(np.array([[-1, -0.35], [1, -0.35], [1, 0.35], [-1, 0.35]], float), True)],
    "semicircle": [(_semicircle(), True)],
}

# Shapes that look the same at every angle are not rotated, so their boxes stay symmetric.
_ROTATION_FREE = {"circle", "ring"}

_PLACEMENT_ATTEMPTS = 40


@dataclass(frozen=True)
class ObjectRequest:
    """One object to place: its shape, fill colour and the range its extent (pixels) is drawn from."""

    shape: str
    rgb: tuple[int, int, int]
    size_range: tuple[float, float]


@dataclass(frozen=True)
class DrawnObject:
    """A placed object: which request it fulfils, its visible box ``(x, y, w, h)`` and visible pixels."""

    request: int
    bbox: tuple[int, int, int, int]
    area: int


def _muted_tone(rng: random.Random) -> np.ndarray:
    """A light, nearly grey colour, so every vocabulary colour stands out against it."""
    grey = rng.randint(160, 225)
    return np.array([grey + rng.randint(-12, 12) for _ in range(3)], dtype=np.float64)


def draw_background(kind: str, width: int, height: int, rng: random.Random,
                    np_rng: np.random.Generator) -> np.ndarray:
    """A ``[height, width, 3]`` uint8 background of one domain kind (see :data:`BACKGROUNDS`).

    ``clutter`` adds thin scribbles in vocabulary colours: distractors that share the objects'
    colours but not their shapes, so a detector cannot succeed by colour alone.
    """
    base = _muted_tone(rng)
    ys, xs = np.mgrid[0:height, 0:width]
    if kind == "plain" or kind == "clutter":
        canvas = np.broadcast_to(base, (height, width, 3))
    elif kind == "noise":
        canvas = base + np_rng.normal(0.0, 16.0, size=(height, width, 3))
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 16)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) % period < period / 2
        canvas = np.where(phase[..., None], base, base - rng.randint(25, 50))
    elif kind == "gradient":
        angle, other = rng.uniform(0, 2 * math.pi), _muted_tone(rng) - rng.randint(20, 50)
        along = xs * math.cos(angle) + ys * math.sin(angle)
        t = ((along - along.min()) / max(np.ptp(along), 1.0))[..., None]
        canvas = (1 - t) * base + t * other
    else:
        raise ValueError(f"Unknown background {kind!r}; expected one of {BACKGROUNDS}.")
    canvas = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    if kind == "clutter":
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        palette = list(COLOURS.values())
        for _ in range(rng.randint(5, 12)):
            points = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(rng.randint(2, 5))]
            draw.line(points, fill=rng.choice(palette), width=rng.randint(1, 2))
        canvas = np.asarray(image).copy()
    return canvas


def to_greyscale(canvas: np.ndarray) -> np.ndarray:
    """Convert to luminance and back to three equal channels, so loaders still see RGB images."""
    return np.asarray(Image.fromarray(canvas).convert("L").convert("RGB")).copy()


def _rasterise(shape: str, size: float, angle: float, cx: float, cy: float) -> tuple[np.ndarray, int, int]:
    """The shape's full (unclipped) mask on a square patch, and the patch's top-left pixel."""
    radius = int(math.ceil(size * 0.75)) + 1  # half the unit box's diagonal (sqrt(2)/2 * size), padded
    ox, oy = int(math.floor(cx)) - radius, int(math.floor(cy)) - radius
    patch = Image.new("L", (2 * radius + 1, 2 * radius + 1), 0)
    draw = ImageDraw.Draw(patch)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    for polygon, filled in SHAPES[shape]:
        points = polygon @ rotation.T * (size / 2) + [cx - ox, cy - oy]
        draw.polygon(points.ravel().tolist(), fill=255 if filled else 0)
    return np.asarray(patch) > 0, ox, oy


def place_objects(canvas: np.ndarray, requests: list[ObjectRequest], rng: random.Random,
                  max_rotation: float, min_visible: float) -> list[DrawnObject]:
    """Paint ``requests`` onto ``canvas`` (in place, later ones on top) and return their boxes.

    A placement is redrawn (up to a fixed number of tries, then the object is skipped) unless the
    new object and every object under it keep at least ``min_visible`` of their pixels, counting
    pixels lost to the image border too: objects may overlap and be cut off, never vanish. Boxes
    and areas are those of the *visible* pixels, as in COCO, where both come from what is seen.
    """
    height, width = canvas.shape[:2]
    owner = np.full((height, width), -1, dtype=np.int32)  # index into `placed` of the top object
    placed: list[int] = []
    full_pixels: list[int] = []
    visible_pixels: list[int] = []
    for index, request in enumerate(requests):
        for _ in range(_PLACEMENT_ATTEMPTS):
            size = rng.uniform(*request.size_range)
            angle = 0.0 if request.shape in _ROTATION_FREE else math.radians(rng.uniform(-max_rotation, max_rotation))
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            mask, ox, oy = _rasterise(request.shape, size, angle, cx, cy)
            x0, y0 = max(ox, 0), max(oy, 0)
            x1, y1 = min(ox + mask.shape[1], width), min(oy + mask.shape[0], height)
            if x0 >= x1 or y0 >= y1:
                continue
            full = int(mask.sum())
            visible = mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            if full == 0 or visible.sum() < min_visible * full:
                continue
            window = owner[y0:y1, x0:x1]
            lost = np.bincount(window[visible & (window >= 0)], minlength=len(placed))
            remaining = np.asarray(visible_pixels, dtype=np.int64) - lost
            if np.any(remaining < min_visible * np.asarray(full_pixels)):
                continue
            window[visible] = len(placed)
            canvas[y0:y1, x0:x1][visible] = request.rgb
            visible_pixels[:] = remaining.tolist()
            visible_pixels.append(int(visible.sum()))
            full_pixels.append(full)
            placed.append(index)
            break
    drawn = []
    for slot, index in enumerate(placed):
        ys, xs = np.nonzero(owner == slot)
        x, y = int(xs.min()), int(ys.min())
        bbox = (x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1)
        drawn.append(DrawnObject(index, bbox, visible_pixels[slot]))
    return drawn
