"""Task families: instruction/answer pairs computed from a `Scene`.

Held-in families are trained on; held-out ones (relations between two objects, comparing two
counts) never appear in instruction tuning, mirroring InstructBLIP's held-out evaluation.
Each family has several phrasings so a model must read the instruction, not memorise a string.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

import numpy as np

from lab.data.scenes import CELLS, COLORS, SHAPES, SIZES, Obj, Scene

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "caption": ("describe the image .", "what is in the picture ?", "give a short description of the scene ."),
    "color": (
        "what color is the {shape} ?",
        "which color does the {shape} have ?",
        "tell me the color of the {shape} .",
    ),
    "size": ("is the {shape} small or large ?", "what size is the {shape} ?", "how big is the {shape} ?"),
    "count": ("how many objects are there ?", "how many shapes are in the image ?", "count the objects ."),
    "exists": (
        "is there a {color} {shape} ?",
        "does the image contain a {color} {shape} ?",
        "can you see a {color} {shape} ?",
    ),
    "position": ("where is the {shape} ?", "in which part of the image is the {shape} ?", "locate the {shape} ."),
    "relation": ("is the {a} {rel} the {b} ?", "is the {a} placed {rel} the {b} ?"),
    "compare_count": (
        "are there more {c1} objects than {c2} objects ?",
        "are {c1} objects more numerous than {c2} ones ?",
    ),
}
HELD_IN = ("caption", "color", "size", "count", "exists", "position")
HELD_OUT = ("relation", "compare_count")
QA_HELD_IN = tuple(f for f in HELD_IN if f != "caption")  # the question families: caption is scored by slot recall
# Closed answer sets of the yes/no families: what InstructBLIP-style ranking chooses among.
ANSWER_SETS = {"exists": ("yes", "no"), "relation": ("yes", "no"), "compare_count": ("yes", "no")}
FAMILIES = HELD_IN + HELD_OUT
RELATIONS = ("left of", "right of", "above", "below")


def caption(scene: Scene) -> str:
    """Objects in reading order: 'small red circle at top left and large blue square at center'."""
    return " and ".join(f"{o.size} {o.color} {o.shape} at {o.cell}" for o in scene.objects)


def cell_phrases(scene: Scene) -> list[str]:
    """One phrase per grid cell in reading order: the object there ("large red circle at top
    left") or "no objects at top left". The targets of stage 0's dense (per-cell) objective."""
    at = {o.cell: o for o in scene.objects}
    return [f"{at[c].size} {at[c].color} {at[c].shape} at {c}" if c in at else f"no objects at {c}" for c in CELLS]


def all_cell_phrases() -> list[str]:
    """Every phrase `cell_phrases` can produce (9 cells × (48 objects + empty)), in a fixed order."""
    objects = [f"{z} {c} {s}" for z in ("small", "large") for c in COLORS for s in SHAPES]
    return [f"{o} at {cell}" for cell in CELLS for o in [*objects, "no objects"]]


WORD_GROUPS: tuple[tuple[str, ...], ...] = (
    (*SHAPES, "no objects"),
    (*COLORS, "no objects"),
    (*SIZES, "no objects"),
    CELLS,
)


def cell_words(scene: Scene) -> list[tuple[str, str, str, str]]:
    """Per grid cell in reading order: (shape, colour, size, cell name) of its object, with
    "no objects" for the first three when the cell is empty (one entry of each `WORD_GROUPS`)."""
    at = {o.cell: o for o in scene.objects}
    empty = "no objects"
    return [(at[c].shape, at[c].color, at[c].size, c) if c in at else (empty, empty, empty, c) for c in CELLS]


@functools.cache
def dense_candidates(kind: str) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """The phrases stage 0's dense loss scores each patch token against, and their groups
    ((start, end) slices; one answer per group). Always every possible phrase, never only a batch's:
    in a batch of 32 scenes a cell's colour and size alone single out its phrase, and shape would
    go unlearned (measured, ablations/HISTORY.md)."""
    if kind == "phrase":
        phrases = tuple(all_cell_phrases())
        return phrases, ((0, len(phrases)),)
    phrases, groups = [], []
    for words in WORD_GROUPS:
        groups.append((len(phrases), len(phrases) + len(words)))
        phrases += words
    return tuple(phrases), tuple(groups)


@functools.cache
def _phrase_index() -> dict[str, int]:
    return {p: i for i, p in enumerate(dense_candidates("phrase")[0])}


def dense_target(scene: Scene, kind: str) -> list[list[int]]:
    """Per cell (reading order), the index into `dense_candidates(kind)` of each group's answer."""
    if kind == "phrase":
        return [[_phrase_index()[p]] for p in cell_phrases(scene)]
    offsets = [lo for lo, _ in dense_candidates(kind)[1]]
    return [[o + g.index(w) for g, w, o in zip(WORD_GROUPS, ws, offsets, strict=True)] for ws in cell_words(scene)]


def hard_negative(scene: Scene, rng: np.random.Generator) -> str:
    """A caption that names the same words but binds them wrongly: two objects swap their shapes
    (or colours), or a lone object changes shape. In-batch captions differ in colours and cells,
    so a contrastive encoder can match them without ever encoding shape (measured: an MLP reads the
    shape of a cell's object from pixels 0.99, from the contrastive ViT 0.77); negatives like these
    are NegCLIP's remedy for that bag-of-words shortcut (Yuksekgonul et al., ICLR 2023)."""
    objs = list(scene.objects)
    if len(objs) == 1:
        o = objs[0]
        objs[0] = dataclasses.replace(o, shape=_pick(rng, [s for s in SHAPES if s != o.shape]))
    else:
        i, j = (int(k) for k in rng.choice(len(objs), size=2, replace=False))
        field = "shape" if rng.random() < 0.5 or objs[i].color == objs[j].color else "color"
        a, b = getattr(objs[i], field), getattr(objs[j], field)
        objs[i], objs[j] = dataclasses.replace(objs[i], **{field: b}), dataclasses.replace(objs[j], **{field: a})
    return caption(dataclasses.replace(scene, objects=tuple(objs)))


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _holds(rel: str, a: Obj, b: Obj) -> bool:
    return {"left of": a.col < b.col, "right of": a.col > b.col, "above": a.row < b.row, "below": a.row > b.row}[rel]


def _caption(scene, rng):
    return {}, caption(scene)


def _color(scene, rng):
    o = _pick(rng, scene.objects)
    return {"shape": o.shape}, o.color


def _size(scene, rng):
    o = _pick(rng, scene.objects)
    return {"shape": o.shape}, o.size


def _count(scene, rng):
    return {}, NUMBERS[len(scene.objects)]


def _exists(scene, rng):
    present = {(o.color, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        color, shape = _pick(rng, sorted(present))
        return {"color": color, "shape": shape}, "yes"
    if rng.random() < 0.5:  # hard negative: a shape that is there, in another color
        shape = _pick(rng, scene.objects).shape
        color = _pick(rng, [c for c in COLORS if (c, shape) not in present])
    else:
        color, shape = _pick(rng, [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present])
    return {"color": color, "shape": shape}, "no"


def _position(scene, rng):
    o = _pick(rng, scene.objects)
    return {"shape": o.shape}, o.cell


def _relation(scene, rng):
    """Yes and no equally often: a relation drawn uniformly holds only a third of the time (two
    objects share a row or a column), which would let "no" score 0.67 without looking."""
    a, b = (scene.objects[i] for i in rng.choice(len(scene.objects), size=2, replace=False))
    want = bool(rng.random() < 0.5)
    rel = _pick(rng, [r for r in RELATIONS if _holds(r, a, b) == want])  # both exist: a, b differ in a cell
    return {"a": a.shape, "b": b.shape, "rel": rel}, "yes" if want else "no"


def _compare_count(scene, rng):
    counts = {c: sum(o.color == c for o in scene.objects) for c in COLORS}
    c1, c2 = (list(COLORS)[i] for i in rng.choice(len(COLORS), size=2, replace=False))
    while counts[c1] == counts[c2]:  # a tie has no yes/no answer that reads naturally
        c1, c2 = (list(COLORS)[i] for i in rng.choice(len(COLORS), size=2, replace=False))
    return {"c1": c1, "c2": c2}, "yes" if counts[c1] > counts[c2] else "no"


MAKERS: dict[str, Callable[[Scene, np.random.Generator], tuple[dict, str]]] = {
    "caption": _caption,
    "color": _color,
    "size": _size,
    "count": _count,
    "exists": _exists,
    "position": _position,
    "relation": _relation,
    "compare_count": _compare_count,
}
MIN_OBJECTS = {"relation": 2}  # families that need more than one object


def make_task(scene: Scene, family: str, rng: np.random.Generator) -> tuple[str, str]:
    """(instruction, answer) of one family for this scene."""
    if family not in MAKERS:
        raise ValueError(f"unknown task family {family!r}; choose from {list(MAKERS)}")
    if len(scene.objects) < MIN_OBJECTS.get(family, 1):
        raise ValueError(f"family {family!r} needs at least {MIN_OBJECTS[family]} objects per scene")
    slots, answer = MAKERS[family](scene, rng)
    return _pick(rng, TEMPLATES[family]).format(**slots), answer


def normalize(text: str) -> str:
    """Case and whitespace folded, trailing period dropped: the exact-match convention."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return re.sub(r"\s*\.$", "", text)


_PHRASE = re.compile(r"^(?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) at (?P<cell>.+)$")


def slot_recall(scene: Scene, generated: str) -> float:
    """Fraction of (shape, color, size, cell) slots of the scene's objects the caption states."""
    said = {}
    for phrase in normalize(generated).split(" and "):
        m = _PHRASE.match(phrase.strip())
        if m:
            said.setdefault(m["shape"], m.groupdict())
    hits = 0
    for o in scene.objects:
        p = said.get(o.shape)
        if p is not None:
            hits += 1 + (p["color"] == o.color) + (p["size"] == o.size) + (p["cell"] == o.cell)
    return hits / (4 * len(scene.objects))


def vocabulary() -> list[str]:
    """Every word the generator can emit, in a fixed order (the tokenizer's base vocabulary)."""
    words = set(NUMBERS) | set(COLORS) | set(SHAPES) | {"small", "large", "yes", "no", "and", "at"}
    words |= {w for c in CELLS for w in c.split()} | {w for r in RELATIONS for w in r.split()}
    words |= {"scene", "user", "assistant", ":"}
    for ts in TEMPLATES.values():
        for t in ts:
            words |= {w for w in re.sub(r"\{\w+\}", " ", t).split()}
    return sorted(words)
