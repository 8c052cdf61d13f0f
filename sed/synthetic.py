"""A synthetic COCO-format detection data set: the data of the tests, the quick start and the
small-scale experiments.

Fourteen families (`--family`, `FAMILIES`):
- shapes (the default, on which every setting of the project was developed): a random background
  (a linear gradient between two muted colours), clutter that is not one of the classes (thin
  lines, arcs, pixel-noise blobs) and 0-8 filled shapes of five classes drawn in random order
  (later shapes occlude earlier ones);
- rings: held out for confirming settings on data they were not tuned on (the --distill-norm count
  default was chosen with it in view): rings, stars and hexagons (1-5 per image, 6 px to 0.6 of
  the image side) on smoothed colour noise;
- polygons: held out until the --distill-norm count default was chosen, a third family for
  checking it: pentagons, semicircles and trapezoids (1-6 per image, 8 px to 0.45 of the image
  side) on smoothed colour noise with clutter;
- glyphs: generated at stop 19 after every default was set, a fourth family for the pre-registered check
  of the settings to recommend on new data: crescents, arrows, chevrons and square frames (1-7 per
  image, 5 px to 0.55 of the image side) on stripes with clutter;
- blocks: generated at stop 20, before its check of --hard-label-rois, a fifth family: L shapes, T
  shapes and bowties (1-6 per image, 6 px to 0.5 of the image side) on a checkerboard with clutter;
- marks: generated at stop 21, before its check of --teacher-proposals, a sixth family: kites, houses
  and hourglasses (1-5 per image, 5 px to 0.5 of the image side) on polka dots with clutter;
- signs: generated at stop 22, before any run on it, a seventh family for checking the defaults again:
  parallelograms, octagons and arches (1-6 per image, 6 px to 0.5 of the image side) on plaid with clutter;
- badges: generated at stop 26, before any run on it, an eighth family for the seeded check of a
  candidate default: quarter-discs, lightning bolts and dumbbells (1-6 per image, 5 px to 0.55 of the
  image side) on a grid of thin lines with clutter;
- icons: generated at stop 28, before any run on it, a ninth family for checking the default on data no
  setting has seen: saltires, teardrops and staircases (1-5 per image, 6 px to 0.5 of the image side) on
  concentric ripples with clutter;
- tiles: generated at stop 29, before any run on it, a tenth family for checking the default on data no
  setting has seen: hearts, flags and ladders (1-6 per image, 5 px to 0.5 of the image side) on a brick
  wall with clutter;
- stencils: generated at stop 33, before any run on it, an eleventh family for checking the default's
  long schedule on data no setting has seen: crowns, pills and combs (1-6 per image, 5 px to 0.5 of the
  image side) on a mosaic of three colours with clutter;
- emblems: generated at stop 34, before any run on it, a twelfth family for checking the default on data
  no setting has seen: cups, zeds and trefoils (1-5 per image, 6 px to 0.5 of the image side) on specks
  of a second colour with clutter;
- crests: generated at stop 39, before any run on it, a thirteenth family for checking a candidate default
  on data no setting has seen: shields, keys and bells (1-6 per image, 5 px to 0.5 of the image side) on
  zigzag bands of two colours with clutter;
- easy: three of the shapes, 16 px to 0.7 of the image side, at most 3 per image, no clutter
  (`make demo`).
The shapes family reproduces, in miniature, what SED targets:
- large scale variance: object sizes are log-uniform from 4 px to half the image side;
- class imbalance: class frequencies 0.40 / 0.25 / 0.15 / 0.12 / 0.08;
- background dominates: few objects per image, clutter, some background-only images.
Category ids are deliberately not contiguous (1, 3, 7, 8, 12) so the id -> label mapping of
`sed.data.CocoDetection` is exercised, and image heights vary (0.75, 1, 1.25 x width by default)
so the aspect-ratio grouping of the sampler is exercised.

Deterministic: the same arguments give byte-identical JSON and PNG files (numpy Generator seeded
with [seed, split]; train and val use different streams).

    python -m sed.synthetic data/shapes --num-train 200 --num-val 50 --seed 0 --image-size 128
writes data/shapes/annotations/{train,val}.json and data/shapes/{train,val}/*.png.
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

@dataclass(frozen=True)
class Family:
    """One synthetic family: its classes and how images are drawn."""
    categories: tuple        # (COCO category id, name, sampling weight): non-contiguous ids, unequal frequencies
    min_object_size: int     # px, smallest object side before aspect jitter
    max_object_fraction: float  # largest object side as a fraction of the shorter image side
    max_objects: int         # objects per non-empty image: uniform in 1..max_objects
    background: str          # "gradient" | "noise" (smoothed colour noise) | "stripes" | "checker" | "dots" | "plaid"
    #                          | "grid" | "ripples" | "bricks" | "mosaic" | "speckle" | "zigzag"
    clutter: bool            # lines, arcs and noise patches that are not objects


FAMILIES = {
    # the family every setting of the project was developed and tuned on
    "shapes": Family(((1, "rectangle", 0.40), (3, "ellipse", 0.25), (7, "triangle", 0.15),
                      (8, "cross", 0.12), (12, "diamond", 0.08)), 4, 0.5, 8, "gradient", True),
    # a second family that no default was tuned on: other classes, sizes and backgrounds
    "rings": Family(((2, "ring", 0.5), (5, "star", 0.3), (9, "hexagon", 0.2)), 6, 0.6, 5, "noise", False),
    # a third family, unseen by every default up to --distill-norm count: other classes, sizes, clutter on noise
    "polygons": Family(((4, "pentagon", 0.45), (6, "semicircle", 0.35), (10, "trapezoid", 0.2)), 8, 0.45, 6,
                       "noise", True),
    # a fourth family, generated after every default was set (stop 19): other classes, stripes, clutter
    "glyphs": Family(((11, "crescent", 0.35), (13, "arrow", 0.3), (14, "chevron", 0.2), (15, "frame", 0.15)),
                     5, 0.55, 7, "stripes", True),
    # a fifth family, generated at stop 20 before the check of --hard-label-rois: other classes, a checkerboard
    "blocks": Family(((16, "ell", 0.4), (17, "tee", 0.35), (18, "bowtie", 0.25)), 6, 0.5, 6, "checker", True),
    # a sixth family, generated at stop 21 before the check of --teacher-proposals: other classes, polka dots
    "marks": Family(((19, "kite", 0.45), (20, "house", 0.35), (21, "hourglass", 0.2)), 5, 0.5, 5, "dots", True),
    # a seventh family, generated at stop 22 before any run on it: other classes, plaid
    "signs": Family(((22, "parallelogram", 0.4), (23, "octagon", 0.35), (24, "arch", 0.25)), 6, 0.5, 6, "plaid",
                    True),
    # an eighth family, generated at stop 26 before any run on it: other classes, a grid of thin lines
    "badges": Family(((25, "sector", 0.4), (26, "bolt", 0.35), (27, "dumbbell", 0.25)), 5, 0.55, 6, "grid", True),
    # a ninth family, generated at stop 28 before any run on it: other classes, concentric ripples
    "icons": Family(((28, "saltire", 0.4), (29, "teardrop", 0.35), (30, "staircase", 0.25)), 6, 0.5, 5, "ripples",
                    True),
    # a tenth family, generated at stop 29 before any run on it: other classes, a brick wall
    "tiles": Family(((31, "heart", 0.4), (32, "flag", 0.35), (33, "ladder", 0.25)), 5, 0.5, 6, "bricks", True),
    # an eleventh family, generated at stop 33 before any run on it: other classes, a mosaic of three colours
    "stencils": Family(((34, "crown", 0.4), (35, "pill", 0.35), (36, "comb", 0.25)), 5, 0.5, 6, "mosaic", True),
    # a twelfth family, generated at stop 34 before any run on it: other classes, specks of a second colour
    "emblems": Family(((37, "cup", 0.4), (38, "zed", 0.35), (39, "trefoil", 0.25)), 6, 0.5, 5, "speckle", True),
    # a thirteenth family, generated at stop 39 before any run on it: other classes, zigzag bands
    "crests": Family(((40, "shield", 0.4), (41, "key", 0.35), (42, "bell", 0.25)), 5, 0.5, 6, "zigzag", True),
    # make demo: three of the shapes, larger and fewer, no clutter: learnt from scratch in minutes
    "easy": Family(((1, "rectangle", 0.5), (3, "ellipse", 0.3), (7, "triangle", 0.2)), 16, 0.7, 3,
                   "gradient", False),
}
CATEGORIES = FAMILIES["shapes"].categories
MIN_CONTRAST = 140.0         # minimum RGB distance between an object and the background colours


def _draw_shape(name, w, h):
    """Mask [h, w] (PIL "L", 255 inside) of one filled shape that touches the borders of its box."""
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    r, b = w - 1, h - 1      # right and bottom pixel (ImageDraw coordinates are inclusive)
    if name == "rectangle":
        d.rectangle([0, 0, r, b], fill=255)
    elif name == "ellipse":
        d.ellipse([0, 0, r, b], fill=255)
    elif name == "triangle":
        d.polygon([(r / 2, 0), (r, b), (0, b)], fill=255)
    elif name == "cross":    # two bars, each a third of the box thick
        d.rectangle([r / 3, 0, 2 * r / 3, b], fill=255)
        d.rectangle([0, b / 3, r, 2 * b / 3], fill=255)
    elif name == "diamond":
        d.polygon([(r / 2, 0), (r, b / 2), (r / 2, b), (0, b / 2)], fill=255)
    elif name == "ring":     # an annulus, the hole half the outer size
        d.ellipse([0, 0, r, b], fill=255)
        d.ellipse([r / 4, b / 4, 3 * r / 4, 3 * b / 4], fill=0)
    elif name == "semicircle":  # the upper half of an ellipse twice the box's height
        d.pieslice([0, 0, r, 2 * b], 180, 360, fill=255)
    elif name == "trapezoid":   # top side half the bottom one
        d.polygon([(r / 4, 0), (3 * r / 4, 0), (r, b), (0, b)], fill=255)
    elif name == "crescent":    # the left half of an ellipse twice the box's width, less an inner ellipse: a C
        d.ellipse([0, 0, 2 * r, b], fill=255)
        d.ellipse([r / 2, 0.15 * b, 2.5 * r, 0.85 * b], fill=0)
    elif name == "arrow":       # pointing right: a shaft a third of the box high, a head 0.4 of the box long
        d.rectangle([0, b / 3, 0.6 * r, 2 * b / 3], fill=255)
        d.polygon([(0.6 * r, 0), (r, b / 2), (0.6 * r, b)], fill=255)
    elif name == "chevron":     # pointing up, arms a third of the box thick
        d.polygon([(r / 2, 0), (r, 2 * b / 3), (r, b), (r / 2, b / 3), (0, b), (0, 2 * b / 3)], fill=255)
    elif name == "frame":       # a square outline, sides a quarter of the box thick
        d.rectangle([0, 0, r, b], fill=255)
        d.rectangle([r / 4, b / 4, 3 * r / 4, 3 * b / 4], fill=0)
    elif name == "ell":         # a left bar and a bottom bar, each a third of the box thick
        d.rectangle([0, 0, r / 3, b], fill=255)
        d.rectangle([0, 2 * b / 3, r, b], fill=255)
    elif name == "tee":         # a top bar and a centred stem, each a third of the box thick
        d.rectangle([0, 0, r, b / 3], fill=255)
        d.rectangle([r / 3, 0, 2 * r / 3, b], fill=255)
    elif name == "bowtie":      # two triangles meeting at the centre, bases on the left and right sides
        d.polygon([(0, 0), (r / 2, b / 2), (0, b)], fill=255)
        d.polygon([(r, 0), (r / 2, b / 2), (r, b)], fill=255)
    elif name == "kite":        # top and bottom points, widest a third of the way down
        d.polygon([(r / 2, 0), (r, b / 3), (r / 2, b), (0, b / 3)], fill=255)
    elif name == "house":       # a square body, its lower 0.6 of the box, under a triangular roof
        d.polygon([(r / 2, 0), (r, 0.4 * b), (r, b), (0, b), (0, 0.4 * b)], fill=255)
    elif name == "hourglass":   # two triangles meeting at the centre, bases on the top and bottom sides
        d.polygon([(0, 0), (r, 0), (r / 2, b / 2)], fill=255)
        d.polygon([(0, b), (r, b), (r / 2, b / 2)], fill=255)
    elif name == "parallelogram":  # top side shifted right by a third of the box
        d.polygon([(r / 3, 0), (r, 0), (2 * r / 3, b), (0, b)], fill=255)
    elif name == "octagon":     # the box with its corners cut at a third of each side
        d.polygon([(r / 3, 0), (2 * r / 3, 0), (r, b / 3), (r, 2 * b / 3), (2 * r / 3, b), (r / 3, b),
                   (0, 2 * b / 3), (0, b / 3)], fill=255)
    elif name == "arch":        # the box less a half-ellipse opening at the bottom, half the box wide and high
        d.rectangle([0, 0, r, b], fill=255)
        d.ellipse([r / 4, b / 2, 3 * r / 4, 1.5 * b], fill=0)
    elif name == "sector":      # a quarter of an ellipse centred on the bottom-left corner
        d.pieslice([-r, 0, r, 2 * b], 270, 360, fill=255)
    elif name == "bolt":        # a lightning bolt: two slanted strokes offset at mid-height
        d.polygon([(0.7 * r, 0), (0, 0.55 * b), (0.45 * r, 0.55 * b), (0.3 * r, b), (r, 0.4 * b),
                   (0.55 * r, 0.4 * b)], fill=255)
    elif name == "dumbbell":    # two discs, each 0.4 of the box wide, joined by a bar a third of the box high
        d.ellipse([0, 0, 0.4 * r, b], fill=255)
        d.ellipse([0.6 * r, 0, r, b], fill=255)
        d.rectangle([0.2 * r, b / 3, 0.8 * r, 2 * b / 3], fill=255)
    elif name == "saltire":     # an X: two diagonal bars, each a quarter of the box wide along its sides
        d.polygon([(0, 0), (r / 4, 0), (r, 3 * b / 4), (r, b), (3 * r / 4, b), (0, b / 4)], fill=255)
        d.polygon([(r, 0), (r, b / 4), (r / 4, b), (0, b), (0, 3 * b / 4), (3 * r / 4, 0)], fill=255)
    elif name == "teardrop":    # a disc in the lower 0.6 of the box under a triangle rising to a top point
        d.ellipse([0, 0.4 * b, r, b], fill=255)
        d.polygon([(r / 2, 0), (r, 0.7 * b), (0, 0.7 * b)], fill=255)
    elif name == "staircase":   # three steps rising to the right, each a third of the box wide and high
        d.polygon([(0, b), (0, 2 * b / 3), (r / 3, 2 * b / 3), (r / 3, b / 3), (2 * r / 3, b / 3), (2 * r / 3, 0),
                   (r, 0), (r, b)], fill=255)
    elif name == "heart":       # two discs across the upper half over a triangle pointing down to the bottom
        d.ellipse([0, 0, 0.55 * r, b / 2], fill=255)
        d.ellipse([0.45 * r, 0, r, b / 2], fill=255)
        d.polygon([(0, b / 4), (r, b / 4), (r / 2, b)], fill=255)
    elif name == "flag":        # a pole a fifth of the box wide, full height, and a cloth over the top 0.55
        d.rectangle([0, 0, r / 5, b], fill=255)
        d.rectangle([0, 0, r, 0.55 * b], fill=255)
    elif name == "ladder":      # two rails a fifth of the box wide and three rungs an eighth of the box high
        d.rectangle([0, 0, r / 5, b], fill=255)
        d.rectangle([4 * r / 5, 0, r, b], fill=255)
        for y in (b / 8, b / 2, 7 * b / 8):
            d.rectangle([0, y - b / 16, r, y + b / 16], fill=255)
    elif name == "crown":       # a band over the lower 0.5 of the box under three points reaching the top
        d.polygon([(0, b), (0, 0), (r / 4, b / 2), (r / 2, 0), (3 * r / 4, b / 2), (r, 0), (r, b)], fill=255)
    elif name == "pill":        # a capsule: a rectangle whose shorter sides are half-discs
        d.rounded_rectangle([0, 0, r, b], radius=min(r, b) / 2, fill=255)
    elif name == "comb":        # a back a third of the box high over four teeth, each a seventh of the box wide
        d.rectangle([0, 0, r, b / 3], fill=255)
        for x in (0, 2 * r / 7, 4 * r / 7, 6 * r / 7):
            d.rectangle([x, 0, x + r / 7, b], fill=255)
    elif name == "cup":         # a U: two side bars and a bottom bar, each a quarter of the box thick
        d.rectangle([0, 0, r / 4, b], fill=255)
        d.rectangle([3 * r / 4, 0, r, b], fill=255)
        d.rectangle([0, 3 * b / 4, r, b], fill=255)
    elif name == "zed":         # a Z: top and bottom bars a quarter of the box high joined by a diagonal stroke
        d.rectangle([0, 0, r, b / 4], fill=255)
        d.rectangle([0, 3 * b / 4, r, b], fill=255)
        d.polygon([(0.7 * r, b / 4), (r, b / 4), (0.3 * r, 3 * b / 4), (0, 3 * b / 4)], fill=255)
    elif name == "trefoil":     # three discs, each half the box wide and high: two below, one centred above
        d.ellipse([r / 4, 0, 3 * r / 4, b / 2], fill=255)
        d.ellipse([0, b / 2, r / 2, b], fill=255)
        d.ellipse([r / 2, b / 2, r, b], fill=255)
    elif name == "shield":      # straight sides over the upper 0.55 of the box, then two edges to a bottom point
        d.polygon([(0, 0), (r, 0), (r, 0.55 * b), (r / 2, b), (0, 0.55 * b)], fill=255)
    elif name == "key":         # a bow (disc) at the top left, a shaft to the right, two teeth hanging from it
        d.ellipse([0, 0, 0.45 * r, 0.6 * b], fill=255)
        d.rectangle([0.35 * r, 0.2 * b, r, 0.4 * b], fill=255)
        d.rectangle([0.6 * r, 0.4 * b, 0.75 * r, b], fill=255)
        d.rectangle([0.85 * r, 0.4 * b, r, 0.8 * b], fill=255)
    elif name == "bell":        # a dome over the top 0.3, flaring sides, a rim the full width at the bottom
        d.ellipse([0.2 * r, 0, 0.8 * r, 0.6 * b], fill=255)
        d.polygon([(0.2 * r, 0.3 * b), (0.8 * r, 0.3 * b), (r, 0.85 * b), (0, 0.85 * b)], fill=255)
        d.rectangle([0, 0.85 * b, r, b], fill=255)
    elif name in ("star", "hexagon", "pentagon"):  # 5-point star (inner radius 0.45) or polygon, touching its box
        corners = {"star": 10, "hexagon": 6, "pentagon": 5}[name]
        angles = np.pi / 2 + 2 * np.pi * np.arange(corners) / corners
        radii = np.where(np.arange(corners) % 2, 0.45, 1.0) if name == "star" else np.ones(corners)
        x, y = radii * np.cos(angles), -radii * np.sin(angles)
        x, y = (x - x.min()) / np.ptp(x) * r, (y - y.min()) / np.ptp(y) * b
        d.polygon(list(zip(x.tolist(), y.tolist())), fill=255)
    return mask


def _blend(c0, c1, t):
    """Colours c0 + t (c1 - c0) for t [h, w] in [0, 1] -> (image, (c0, c1))."""
    pixels = c0 + t[..., None] * (c1 - c0)                         # [h, w, 3]
    return Image.fromarray(pixels.astype(np.uint8)), (c0, c1)


def _background(rng, w, h):
    """Linear gradient between two muted colours along a random direction -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w]
    t = (xs * np.cos(angle) + ys * np.sin(angle)) / max(w, h)     # [h, w]
    return _blend(c0, c1, (t - t.min()) / max(t.max() - t.min(), 1e-6))


def _noise_background(rng, w, h):
    """Colour noise smoothed at a random scale (blotches of 1/16 to 1/4 of the image) -> (image, colours)."""
    cells = int(rng.integers(4, 17))
    coarse = rng.uniform(40, 215, size=(cells, cells, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    return img, tuple(np.asarray(img, dtype=float).reshape(-1, 3).mean(axis=0)[None])


def _stripes_background(rng, w, h):
    """Sinusoidal stripes between two muted colours, random period (6-32 px) and direction -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 32)
    ys, xs = np.mgrid[0:h, 0:w]
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)   # [h, w]
    return _blend(c0, c1, t)


def _checker_background(rng, w, h):
    """A checkerboard of two muted colours, random cell size (8-32 px) and offset -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    cell = rng.uniform(8, 32)
    ys, xs = np.mgrid[0:h, 0:w] + rng.uniform(0, cell, size=(2, 1, 1))
    return _blend(c0, c1, ((xs // cell + ys // cell) % 2).astype(float))   # t [h, w] in {0, 1}


def _dots_background(rng, w, h):
    """Polka dots of one muted colour on another, random spacing (8-24 px) and offset, dot diameter half
    the spacing -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    spacing = rng.uniform(8, 24)
    ys, xs = np.mgrid[0:h, 0:w] + rng.uniform(0, spacing, size=(2, 1, 1))
    dy, dx = ys % spacing - spacing / 2, xs % spacing - spacing / 2      # offset from the nearest dot centre
    return _blend(c0, c1, (np.hypot(dx, dy) <= spacing / 4).astype(float))   # t [h, w] in {0, 1}


def _plaid_background(rng, w, h):
    """Two perpendicular sinusoidal stripe patterns between two muted colours, averaged: random period
    (8-28 px) and direction -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    angle, period = rng.uniform(0, np.pi / 2), rng.uniform(8, 28)
    ys, xs = np.mgrid[0:h, 0:w]
    u = xs * np.cos(angle) + ys * np.sin(angle)                    # [h, w] along one direction
    v = -xs * np.sin(angle) + ys * np.cos(angle)                   # [h, w] along the perpendicular one
    t = 0.5 + 0.25 * (np.sin(2 * np.pi * u / period) + np.sin(2 * np.pi * v / period))   # [h, w] in [0, 1]
    return _blend(c0, c1, t)


def _grid_background(rng, w, h):
    """Thin lines (1-3 px) of one muted colour on another, a square grid of random spacing (8-24 px) and
    offset -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    spacing, width = rng.uniform(8, 24), rng.integers(1, 4)
    ys, xs = np.mgrid[0:h, 0:w] + rng.uniform(0, spacing, size=(2, 1, 1))
    on_line = (xs % spacing < width) | (ys % spacing < width)              # [h, w]
    return _blend(c0, c1, on_line.astype(float))   # t [h, w] in {0, 1}


def _ripples_background(rng, w, h):
    """Concentric sinusoidal rings between two muted colours around a random centre (inside or near the
    image), random period (8-28 px) -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    cx, cy = rng.uniform(-0.25, 1.25) * w, rng.uniform(-0.25, 1.25) * h
    period = rng.uniform(8, 28)
    ys, xs = np.mgrid[0:h, 0:w]
    t = 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(xs - cx, ys - cy) / period)   # [h, w] in [0, 1]
    return _blend(c0, c1, t)


def _bricks_background(rng, w, h):
    """A brick wall: bricks of one muted colour, mortar lines (1-2 px) of another, random brick height
    (6-16 px, twice as wide) and offset, every other row shifted by half a brick -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    height, mortar = rng.uniform(6, 16), rng.integers(1, 3)
    ys, xs = np.mgrid[0:h, 0:w] + rng.uniform(0, 2 * height, size=(2, 1, 1))
    row = np.floor(ys / height)                                             # [h, w] brick row index
    x_in_brick = (xs + (row % 2) * height) % (2 * height)                   # odd rows shifted by half a brick
    on_mortar = (ys % height < mortar) | (x_in_brick < mortar)              # [h, w]
    return _blend(c0, c1, on_mortar.astype(float))   # t [h, w] in {0, 1}


def _mosaic_background(rng, w, h):
    """Square cells of random size (8-24 px) and offset, each one of three muted colours at random
    -> (image, colours)."""
    colours = rng.uniform(60, 190, size=(3, 3))
    cell = rng.uniform(8, 24)
    ys, xs = np.mgrid[0:h, 0:w] + rng.uniform(0, cell, size=(2, 1, 1))
    rows, cols = (ys // cell).astype(int), (xs // cell).astype(int)        # [h, w] cell of each pixel
    pick = rng.integers(0, 3, size=(rows.max() + 1, cols.max() + 1))       # each cell's colour index
    return Image.fromarray(colours[pick[rows, cols]].astype(np.uint8)), tuple(colours)


def _speckle_background(rng, w, h):
    """Square specks (2-4 px, on a random grid) of one muted colour covering a random 20-40 % of another
    -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=3), rng.uniform(60, 190, size=3)
    speck = int(rng.integers(2, 5))
    cells = rng.random(size=(h // speck + 1, w // speck + 1)) < rng.uniform(0.2, 0.4)   # speck-sized cells
    ys, xs = np.mgrid[0:h, 0:w] // speck
    return _blend(c0, c1, cells[ys, xs].astype(float))   # t [h, w] in {0, 1}


def _zigzag_background(rng, w, h):
    """Bands of two muted colours (4-12 px wide) that zigzag across the image (amplitude 4-16 px, period
    12-40 px), horizontally or vertically at random -> (image, colours)."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    band, amplitude, period = rng.uniform(4, 12), rng.uniform(4, 16), rng.uniform(12, 40)
    ys, xs = np.mgrid[0:h, 0:w]
    along, across = (xs, ys) if rng.random() < 0.5 else (ys, xs)
    triangle = np.abs((along / period) % 2 - 1)                      # [h, w] in [0, 1]
    t = ((across + amplitude * triangle) // band % 2).astype(float)  # [h, w] in {0, 1}
    return _blend(c0, c1, t)


def _object_colour(rng, bg_colours):
    """A random colour far from every background colour (visible contrast)."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if all(np.linalg.norm(colour - c) >= MIN_CONTRAST for c in bg_colours):
            return tuple(int(v) for v in colour)


def _clutter(rng, img):
    """Non-annotated distractors: thin lines, arcs and pixel-noise blobs."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 7)):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        x0, x1 = sorted(rng.uniform(0, w, size=2))
        y0, y1 = sorted(rng.uniform(0, h, size=2))
        kind = rng.integers(3)
        if kind == 0:
            d.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 3)))
        elif kind == 1:
            start = float(rng.uniform(0, 360))
            d.arc([x0, y0, x1 + 1, y1 + 1], start, start + float(rng.uniform(30, 200)), fill=colour)
        else:   # a patch of random pixels
            s = int(rng.integers(3, max(4, min(w, h) // 6)))
            px, py = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            img.paste(Image.fromarray(rng.integers(0, 256, size=(s, s, 3), dtype=np.uint8)), (px, py))


def _render(rng, w, h, empty, family):
    """One image and its annotations [(category_id, [x, y, w, h], area)] in drawing order."""
    backgrounds = {"gradient": _background, "noise": _noise_background, "stripes": _stripes_background,
                   "checker": _checker_background, "dots": _dots_background, "plaid": _plaid_background,
                   "grid": _grid_background, "ripples": _ripples_background,
                   "bricks": _bricks_background, "mosaic": _mosaic_background,
                   "speckle": _speckle_background, "zigzag": _zigzag_background}
    img, bg_colours = backgrounds[family.background](rng, w, h)
    if family.clutter:
        _clutter(rng, img)
    anns = []
    n = 0 if empty else int(rng.integers(1, family.max_objects + 1))
    categories, lo = family.categories, family.min_object_size
    weights = np.array([c[2] for c in categories])
    for k in rng.choice(len(categories), size=n, p=weights / weights.sum()):
        cat_id, name, _ = categories[k]
        # log-uniform size, aspect jitter in [1/1.5, 1.5], then fit inside the image
        size = np.exp(rng.uniform(np.log(lo), np.log(min(w, h) * family.max_object_fraction)))
        aspect = np.exp(rng.uniform(-np.log(1.5), np.log(1.5)))
        bw = int(np.clip(round(size * np.sqrt(aspect)), lo, w))
        bh = int(np.clip(round(size / np.sqrt(aspect)), lo, h))
        x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        mask = _draw_shape(name, bw, bh)
        img.paste(_object_colour(rng, bg_colours), (x, y), mask)
        # tight box around the drawn pixels (COCO: x, y of the top-left pixel, w, h in pixels)
        ys, xs = np.nonzero(np.asarray(mask))
        box = [x + int(xs.min()), y + int(ys.min()),
               int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        anns.append((cat_id, box, int(len(xs))))
    # mild sensor noise over everything
    pixels = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), anns


def _write_split(out_dir, split, num_images, rng, image_size, height_ratios, empty_fraction, family):
    """Render one split into OUT/<split>/*.png and OUT/annotations/<split>.json."""
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num_images), desc=f"synthetic {split}", leave=False):
        w = image_size
        h = int(round(image_size * float(rng.choice(height_ratios))))
        empty = bool(rng.random() < empty_fraction)
        img, anns = _render(rng, w, h, empty, family)
        file_name = f"{i:06d}.png"
        img.save(image_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        for cat_id, box, area in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat_id,
                                "bbox": box, "area": area, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n, _ in family.categories]}
    ann_file = out_dir / "annotations" / f"{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(coco))
    return ann_file, image_dir


def generate(out_dir, num_train=200, num_val=50, seed=0, image_size=128,
             height_ratios=(0.75, 1.0, 1.25), empty_fraction=0.05, family="shapes"):
    """Write the data set; returns {"train_ann", "train_images", "val_ann", "val_images"} (Paths).

    height_ratios: image height = round(image_size * choice(height_ratios)), width = image_size;
    pass (1.0,) for square images. empty_fraction: probability that a train image has no objects
    (val images always have at least one). family: a key of FAMILIES.
    """
    out_dir = Path(out_dir)
    paths = {}
    for split_index, (split, n, empty) in enumerate([("train", num_train, empty_fraction),
                                                     ("val", num_val, 0.0)]):
        rng = np.random.default_rng([seed, split_index])   # separate stream per split
        paths[f"{split}_ann"], paths[f"{split}_images"] = _write_split(
            out_dir, split, n, rng, image_size, height_ratios, empty, FAMILIES[family])
    return paths


def main(argv=None):
    from sed.config import check_writable_dir
    from sed.errors import ArgumentParser, UserError, user_errors
    p = ArgumentParser(description="Write a synthetic COCO-format shapes data set.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="output directory")
    p.add_argument("--num-train", type=int, default=200, help="number of train images")
    p.add_argument("--num-val", type=int, default=50, help="number of val images")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--image-size", type=int, default=128, help="image width in pixels")
    p.add_argument("--height-ratios", type=float, nargs="+", default=[0.75, 1.0, 1.25],
                   help="image height = width * one of these (pass 1 for square images)")
    p.add_argument("--empty-fraction", type=float, default=0.05,
                   help="fraction of train images with no objects")
    p.add_argument("--family", choices=sorted(FAMILIES), default="shapes",
                   help="shapes: 5 classes on gradients with clutter; rings: 3 other classes on colour noise; "
                        "polygons: 3 others on noise with clutter; glyphs: 4 others on stripes with clutter; "
                        "blocks: 3 others on a checkerboard; marks: 3 others on polka dots; signs: 3 others on "
                        "plaid; badges: 3 others on a grid of lines; icons: 3 others on ripples; tiles: 3 others "
                        "on bricks; stencils: 3 others on a mosaic; emblems: 3 others on specks (all eight with "
                        "clutter); easy: 3 large "
                        "shapes, no clutter (the demo)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of a user error")
    args = p.parse_args(argv)
    checks = [(args.num_train >= 1, f"--num-train: must be >= 1, got {args.num_train}"),
              (args.num_val >= 1, f"--num-val: must be >= 1, got {args.num_val}"),
              # 16 px: the smallest width at which the shapes render (design choice: checked here)
              (args.image_size >= 16, f"--image-size: must be >= 16 pixels, got {args.image_size}"),
              (all(args.image_size * r >= 16 and r <= 4 for r in args.height_ratios),
               f"--height-ratios: image heights must be 16 px to 4x the width, got {args.height_ratios}"),
              (0 <= args.empty_fraction <= 1, f"--empty-fraction: must be in [0, 1], got {args.empty_fraction}"),
              (args.seed >= 0, f"--seed: must be >= 0 (numpy's generators), got {args.seed}")]
    with user_errors(args.debug):
        check_writable_dir(args.out, "OUT")
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        paths = generate(args.out, args.num_train, args.num_val, args.seed, args.image_size,
                         tuple(args.height_ratios), args.empty_fraction, args.family)
    for k, v in paths.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
