"""The "scenes world": the shapes world made hard enough that RL has headroom (issue 28).

Where the shapes world (`diffrl.envs.shapes`) has one object size, three shapes, three colors and at most two objects
named by a prompt, a scene here holds 3-5 objects (up to 6 for counting) on a 4x4 grid of 10-pixel cells (40x40
pixels), of five shapes, five colors and two sizes, and its prompts bind attributes across several objects and relate
specific (colored) objects. Prompts are GenEval metadata (djghosh13/geneval `prompts/create_prompts.py`'s format)
with one extension, a clause's `size` ("small" or "large"), which `diffrl.rewards.geneval` checks like a color.

Why 40x40 in cells of 10: the built-in model spends one token per cell at patch size 10, the size at which the
shipped model learns the shapes world; 16 cells leave room for six counted objects beside distractors while a cell
still shows a 5-pixel object's shape. Objects are centred in their cell, at most one per cell, solid colors on black.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, permutations, product

import numpy as np

from diffrl.envs.geometry import relative_position

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
          "white": (255, 255, 255)}
SIZES = {"small": 5, "large": 8}
GRID = 4
CELL = 10
IMAGE_SIZE = GRID * CELL
TAGS = ("single_object", "colors", "two_object", "multi_object", "counting", "position", "color_attr", "size_attr")
COUNTS = (2, 3, 4, 5, 6)
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
MIN_OBJECTS, MAX_OBJECTS = 3, 5  # objects in a scene, distractors included (counting prompts may ask for more)


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean [size, size] mask sampled at pixel centres: inscribed disk, full box, upward triangle, diamond, plus."""
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    masks = {
        "circle": (x - c) ** 2 + (y - c) ** 2 <= (size / 2) ** 2,
        "square": np.ones((size, size), dtype=bool),
        "triangle": np.abs(x - c) <= (y + 1) / 2,  # apex 1-2 px wide, base the full width
        "diamond": np.abs(x - c) + np.abs(y - c) <= size / 2,
        "cross": (np.abs(x - c) <= size / 8) | (np.abs(y - c) <= size / 8),  # bars 2 px wide when large, 1 when small
    }
    if shape not in masks:
        raise ValueError(f"unknown shape '{shape}'; allowed: {SHAPES}")
    return masks[shape]


SHAPE_MASKS = {(shape, size): shape_mask(shape, SIZES[size]) for shape in SHAPES for size in SIZES}


@dataclass(frozen=True)
class SceneObject:
    """One object: a shape of one palette color and size in grid cell (row, col); row 0 is the top row."""

    shape: str
    color: str
    size: str
    row: int
    col: int


def object_box(obj: SceneObject) -> tuple[float, float, float, float]:
    """The object's pixel bounding box (x1, y1, x2, y2), x2/y2 exclusive: its size square, centred in its cell."""
    side = SIZES[obj.size]
    margin = (CELL - side) // 2
    x1, y1 = obj.col * CELL + margin, obj.row * CELL + margin
    return (float(x1), float(y1), float(x1 + side), float(y1 + side))


def render(objects: list[SceneObject]) -> np.ndarray:
    """Draw the objects on a black canvas as solid colors without anti-aliasing; uint8 [40, 40, 3]."""
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    used: set[tuple[int, int]] = set()
    for obj in objects:
        if obj.color not in COLORS:
            raise ValueError(f"unknown color '{obj.color}'; allowed: {tuple(COLORS)}")
        if obj.size not in SIZES:
            raise ValueError(f"unknown size '{obj.size}'; allowed: {tuple(SIZES)}")
        if obj.shape not in SHAPES:
            raise ValueError(f"unknown shape '{obj.shape}'; allowed: {SHAPES}")
        if not (0 <= obj.row < GRID and 0 <= obj.col < GRID) or (obj.row, obj.col) in used:
            raise ValueError(f"cell ({obj.row}, {obj.col}) is outside the {GRID}x{GRID} grid or already taken")
        used.add((obj.row, obj.col))
        x1, y1, x2, y2 = (int(v) for v in object_box(obj))
        image[y1:y2, x1:x2][SHAPE_MASKS[obj.shape, obj.size]] = COLORS[obj.color]
    return image


def _clause(shape: str, count: int = 1, color: str | None = None, size: str | None = None) -> dict:
    clause: dict = {"class": shape, "count": count}
    if color:
        clause["color"] = color
    if size:
        clause["size"] = size
    return clause


def _phrase(clause: dict) -> str:
    words = [w for w in (clause.get("size"), clause.get("color"), clause["class"]) if w]
    return "a " + " ".join(words)


def _listing(clauses: list[dict]) -> str:
    phrases = [_phrase(c) for c in clauses]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1] if len(phrases) > 2 else " and ".join(phrases)


def _plural(shape: str) -> str:
    return f"{shape}{'es' if shape.endswith('s') else 's'}"


def caption(entry: dict) -> str:
    """The caption of a prompt's metadata, by its tag (the one grammar all_prompts and perturbed prompts share)."""
    include = entry["include"]
    if entry["tag"] == "counting":
        return f"a photo of {NUMBER_WORDS[include[0]['count']]} {_plural(include[0]['class'])}"
    if entry["tag"] == "position":
        target, subject = include
        return f"a photo of {_phrase(subject)} {subject['position'][0]} {_phrase(target)}"
    return f"a photo of {_listing(include)}"


def _entry(tag: str, include: list[dict], **extra) -> dict:
    entry = {"tag": tag, "include": include, **extra}
    return {**entry, "prompt": caption(entry)}


def counting_entry(shape: str, n: int) -> dict:
    """Exactly n of a shape: the n + 1 exclusion is GenEval's counting rule."""
    return _entry("counting", [_clause(shape, n)], exclude=[_clause(shape, n + 1)])


def all_prompts() -> list[dict]:
    """Every prompt of the world as GenEval metadata, in a fixed order. Per tag:
    single_object (a shape), colors (a size and a color), two_object (two shapes), multi_object (3-5 shapes),
    counting (2-6 of a shape; excludes n + 1), position (a colored shape related to another colored shape: the
    relation binds to specific objects), color_attr (three shapes, three colors), size_attr (two shapes, two sizes)."""
    prompts = [_entry("single_object", [_clause(s)]) for s in SHAPES]
    prompts += [_entry("colors", [_clause(shape, color=color, size=size)])
                for shape, color, size in product(SHAPES, COLORS, SIZES)]
    prompts += [_entry("two_object", [_clause(a), _clause(b)]) for a, b in permutations(SHAPES, 2)]
    prompts += [_entry("multi_object", [_clause(s) for s in names])
                for n in (3, 4, 5) for names in combinations(SHAPES, n)]
    prompts += [counting_entry(shape, n) for shape, n in product(SHAPES, COUNTS)]
    for (a, b), relation, (color_a, color_b) in product(permutations(SHAPES, 2), RELATIONS,
                                                        permutations(COLORS, 2)):
        target, subject = _clause(b, color=color_b), {**_clause(a, color=color_a), "position": [relation, 0]}
        prompts.append(_entry("position", [target, subject]))
    prompts += [_entry("color_attr", [_clause(s, color=c) for s, c in zip(names, colors)])
                for names, colors in product(combinations(SHAPES, 3), permutations(COLORS, 3))]
    prompts += [_entry("size_attr", [_clause(a, size=size_a), _clause(b, size=size_b)])
                for (a, b), (size_a, size_b) in product(permutations(SHAPES, 2), product(SIZES, repeat=2))]
    return prompts


def prompt_splits(heldout_per_tag: int = 4, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held_out): per tag, `heldout_per_tag` prompts drawn with one generator seeded by `seed` are held out
    (never trained on, never in pretraining); both lists keep the all_prompts() order."""
    prompts = all_prompts()
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for tag in TAGS:
        indices = [i for i, p in enumerate(prompts) if p["tag"] == tag]
        if not 1 <= heldout_per_tag < len(indices):
            raise ValueError(f"heldout_per_tag must be in [1, {len(indices) - 1}] for tag {tag}, got {heldout_per_tag}")
        held.update(int(i) for i in rng.permutation(indices)[:heldout_per_tag])
    return ([p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held])


def check_metadata(metadata: dict) -> None:
    """Refuse metadata this world cannot draw, naming the field."""
    total = 0
    for clause in metadata.get("include", []):
        for key, allowed in (("class", SHAPES), ("color", tuple(COLORS)), ("size", tuple(SIZES))):
            if key in clause and clause[key] not in allowed:
                raise ValueError(f"metadata {key} '{clause[key]}' is not in the scenes world; allowed: {allowed}")
        total += clause["count"]
    if total > GRID * GRID:
        raise ValueError(f"metadata asks for {total} objects; the grid holds at most {GRID * GRID}")


def _relations_hold(metadata: dict, groups: list[list[SceneObject]]) -> bool:
    for clause, group in zip(metadata.get("include", []), groups):
        if "position" in clause:
            relation, target = clause["position"]
            if any(relation not in relative_position(object_box(o), object_box(t))
                   for o in group for t in groups[target]):
                return False
    return True


def sample_scene(metadata: dict, rng: np.random.Generator, max_tries: int = 1000) -> list[SceneObject]:
    """A random scene GenEval's strict rules accept for `metadata`, filled with distractors up to 3-5 objects.

    Unspecified colors and sizes are drawn uniformly; cells are distinct and random. Distractors are shapes the
    prompt does not name (so its counts stay exact), of random color and size: a prompt is about some of the objects
    in the image, as in a real photo. Relations are checked with GenEval's rule on the boxes, redrawing until they
    hold."""
    check_metadata(metadata)
    colors, sizes = tuple(COLORS), tuple(SIZES)
    includes = metadata.get("include", [])
    named = {clause["class"] for clause in includes}
    free = [s for s in SHAPES if s not in named]
    wanted = [(c["class"], c.get("color"), c.get("size")) for c in includes for _ in range(c["count"])]
    required = len(wanted)
    extra = 0 if not free or required >= MAX_OBJECTS else int(rng.integers(max(MIN_OBJECTS - required, 0),
                                                                             MAX_OBJECTS - required + 1))
    wanted += [(free[int(rng.integers(len(free)))], None, None) for _ in range(extra)]
    drawn = [(shape, color or colors[int(rng.integers(len(colors)))], size or sizes[int(rng.integers(len(sizes)))])
             for shape, color, size in wanted]
    for _ in range(max_tries):
        cells = rng.choice(GRID * GRID, size=len(drawn), replace=False).tolist()
        objects = [SceneObject(shape, color, size, *divmod(cell, GRID)) for (shape, color, size), cell in
                   zip(drawn, cells)]
        groups, start = [], 0
        for clause in includes:
            groups.append(objects[start:start + clause["count"]])
            start += clause["count"]
        if _relations_hold(metadata, groups):
            return objects
    raise ValueError(f"no scene satisfies the position clauses of {metadata!r} after {max_tries} draws")


def render_prompt(metadata: dict, rng: np.random.Generator) -> np.ndarray:
    """render(sample_scene(metadata, rng)): one random ground-truth image for a prompt."""
    return render(sample_scene(metadata, rng))
