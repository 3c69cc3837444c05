"""The procedural "shapes world": a 30x30 canvas, a 3x3 grid of cells, fixed-size pure-color shapes.

It is the embedded default's data source. Its prompts are GenEval prompts in GenEval's own metadata format and caption
templates (djghosh13/geneval `prompts/create_prompts.py`), restricted to three shapes and three colors, so GenEval's
real rules (`diffrl.rewards.geneval`) score the images of a tiny CPU model. The world is built for learnability
(measured in the project's probes of the shapes world, docs/architecture.md): one black background, one object size, at most one object per cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffrl.envs.geometry import relative_position

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
GRID = 3
CELL = 10
OBJECT_SIZE = 8
IMAGE_SIZE = GRID * CELL
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COUNTS = (2, 3, 4)
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}

_MARGIN = (CELL - OBJECT_SIZE) // 2


def _shape_masks() -> dict[str, np.ndarray]:
    """Boolean 8x8 masks, sampled at pixel centers: inscribed disk, full box, upward isosceles triangle."""
    center = (OBJECT_SIZE - 1) / 2
    y, x = np.mgrid[0:OBJECT_SIZE, 0:OBJECT_SIZE].astype(np.float64)
    radius = OBJECT_SIZE / 2
    circle = (x - center) ** 2 + (y - center) ** 2 <= radius**2
    square = np.ones((OBJECT_SIZE, OBJECT_SIZE), dtype=bool)
    # Row y spans a half-width of (y + 1) / 2 px around the center: 2 px at the apex row, the full 8 px at the base.
    triangle = np.abs(x - center) <= (y + 1) / 2
    return {"circle": circle, "square": square, "triangle": triangle}


SHAPE_MASKS = _shape_masks()


@dataclass(frozen=True)
class ShapeObject:
    """One object: a shape of one palette color in the grid cell (row, col); row 0 is the top row."""

    shape: str
    color: str
    row: int
    col: int


def object_box(obj: ShapeObject) -> tuple[float, float, float, float]:
    """The rendered object's pixel bounding box (x1, y1, x2, y2), x2/y2 exclusive; every shape fills its 8x8 box."""
    x1 = obj.col * CELL + _MARGIN
    y1 = obj.row * CELL + _MARGIN
    return (float(x1), float(y1), float(x1 + OBJECT_SIZE), float(y1 + OBJECT_SIZE))


def render(objects: list[ShapeObject]) -> np.ndarray:
    """Draw objects on a black 30x30 canvas as solid pure colors without anti-aliasing; returns uint8 [30, 30, 3]."""
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    used: set[tuple[int, int]] = set()
    for obj in objects:
        if obj.shape not in SHAPE_MASKS:
            raise ValueError(f"unknown shape '{obj.shape}'; allowed: {SHAPES}")
        if obj.color not in COLORS:
            raise ValueError(f"unknown color '{obj.color}'; allowed: {tuple(COLORS)}")
        if not (0 <= obj.row < GRID and 0 <= obj.col < GRID):
            raise ValueError(f"cell ({obj.row}, {obj.col}) is outside the {GRID}x{GRID} grid")
        if (obj.row, obj.col) in used:
            raise ValueError(f"two objects in cell ({obj.row}, {obj.col}); at most one object per cell")
        used.add((obj.row, obj.col))
        x1, y1, x2, y2 = (int(v) for v in object_box(obj))
        image[y1:y2, x1:x2][SHAPE_MASKS[obj.shape]] = COLORS[obj.color]
    return image


def all_prompts() -> list[dict]:
    """Every prompt of the world as GenEval metadata dicts (tag, include, optional exclude, prompt), in a fixed order.

    Mirrors GenEval's create_prompts.py per tag: two_object, position and color_attr use two distinct classes (both
    orders); counting excludes count n + 1; position relates include[1] to include[0] as [relation, 0]; color_attr
    uses two distinct colors. No class or color starts with a vowel, so the article is always "a".
    """
    prompts: list[dict] = []
    for shape in SHAPES:
        prompts.append(
            {"tag": "single_object", "include": [{"class": shape, "count": 1}], "prompt": f"a photo of a {shape}"}
        )
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    for a, b in pairs:
        prompts.append(
            {
                "tag": "two_object",
                "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of a {a} and a {b}",
            }
        )
    for shape in SHAPES:
        for n in COUNTS:
            prompts.append(
                {
                    "tag": "counting",
                    "include": [{"class": shape, "count": n}],
                    "exclude": [{"class": shape, "count": n + 1}],
                    "prompt": f"a photo of {NUMBER_WORDS[n]} {shape}s",
                }
            )
    for shape in SHAPES:
        for color in COLORS:
            prompts.append(
                {
                    "tag": "colors",
                    "include": [{"class": shape, "count": 1, "color": color}],
                    "prompt": f"a photo of a {color} {shape}",
                }
            )
    for a, b in pairs:
        for relation in RELATIONS:
            prompts.append(
                {
                    "tag": "position",
                    "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
                    "prompt": f"a photo of a {a} {relation} a {b}",
                }
            )
    color_pairs = [(c, d) for c in COLORS for d in COLORS if c != d]
    for a, b in pairs:
        for color_a, color_b in color_pairs:
            prompts.append(
                {
                    "tag": "color_attr",
                    "include": [
                        {"class": a, "count": 1, "color": color_a},
                        {"class": b, "count": 1, "color": color_b},
                    ],
                    "prompt": f"a photo of a {color_a} {a} and a {color_b} {b}",
                }
            )
    return prompts


def prompt_splits(heldout_fraction: float = 0.25, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split all_prompts() into (train, held_out), stratified by tag, each tag keeping at least one prompt per side.

    Per tag, round(heldout_fraction * n) prompts (clamped to [1, n - 1]) are drawn with one generator seeded by
    `seed`; both lists keep the all_prompts() order.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    prompts = all_prompts()
    rng = np.random.default_rng(seed)
    held_out_indices: set[int] = set()
    for tag in TAGS:
        indices = [i for i, p in enumerate(prompts) if p["tag"] == tag]
        n_held = min(len(indices) - 1, max(1, round(heldout_fraction * len(indices))))
        held_out_indices.update(int(i) for i in rng.permutation(indices)[:n_held])
    train = [p for i, p in enumerate(prompts) if i not in held_out_indices]
    held_out = [p for i, p in enumerate(prompts) if i in held_out_indices]
    return train, held_out


def _check_metadata(metadata: dict) -> None:
    total = 0
    for req in metadata.get("include", []):
        if req["class"] not in SHAPES:
            raise ValueError(f"metadata class '{req['class']}' is not a shape of this world; allowed: {SHAPES}")
        if "color" in req and req["color"] not in COLORS:
            raise ValueError(f"metadata color '{req['color']}' is not in this world; allowed: {tuple(COLORS)}")
        total += req["count"]
    if total > GRID * GRID:
        raise ValueError(f"metadata asks for {total} objects; the grid holds at most {GRID * GRID}")


def _relations_hold(metadata: dict, groups: list[list[ShapeObject]]) -> bool:
    """Every position clause holds between every object of its group and every object of the target group."""
    for req, group in zip(metadata.get("include", []), groups):
        if "position" not in req:
            continue
        relation, target = req["position"]
        for obj in group:
            for target_obj in groups[target]:
                if relation not in relative_position(object_box(obj), object_box(target_obj)):
                    return False
    return True


def sample_scene(metadata: dict, rng: np.random.Generator, max_tries: int = 1000) -> list[ShapeObject]:
    """A random scene that GenEval's strict rules accept for `metadata`: exact counts, colors and relations.

    Unspecified colors are drawn uniformly; cells are distinct and random; there are no extra objects. Relations
    are checked with GenEval's relative_position on the rendered boxes, redrawing the cells until they hold.
    """
    _check_metadata(metadata)
    colors = tuple(COLORS)
    includes = metadata.get("include", [])
    chosen = [[req.get("color") or colors[rng.integers(len(colors))] for _ in range(req["count"])] for req in includes]
    total = sum(len(group) for group in chosen)
    for _ in range(max_tries):
        cells = iter(rng.choice(GRID * GRID, size=total, replace=False).tolist())
        groups = []
        for req, group_colors in zip(includes, chosen):
            groups.append([ShapeObject(req["class"], color, *divmod(next(cells), GRID)) for color in group_colors])
        if _relations_hold(metadata, groups):
            return [obj for group in groups for obj in group]
    raise ValueError(f"no scene satisfies the position clauses of {metadata!r} after {max_tries} draws")


def render_prompt(metadata: dict, rng: np.random.Generator) -> np.ndarray:
    """render(sample_scene(metadata, rng)): one random ground-truth image for a prompt."""
    return render(sample_scene(metadata, rng))
