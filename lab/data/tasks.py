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
from typing import Any

import numpy as np

from lab.data.scenes import CELLS, COLORS, SHAPES, SIZES, Obj, Scene, SceneConfig

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = ("left of", "right of", "above", "below")
YES_NO = ("yes", "no")


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
    go unlearned (ablations/HISTORY.md, "A dense stage-0 objective, first try")."""
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


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything lab knows about one question family. The vocabulary, the data, the evaluation's
    chance levels and closed answer sets, and the stage-0 LM's text mix all read it here.

    `answers(scene_config)` lists every answer the maker can give (None: free text, the caption):
    chance is one over their number. `words` are further words the maker fills into a template's
    slots. `lm_share` is how many shares of the stage-0 LM's text mix the family gets (0: the LM
    never reads it)."""

    templates: tuple[str, ...]
    maker: Callable[[Scene, np.random.Generator], tuple[dict, str]]
    answers: Callable[[Any], tuple[str, ...]] | None
    held_out: bool = False
    lm_share: int = 1
    min_objects: int = 1
    words: tuple[str, ...] = ()

    def answer_set(self, scene_cfg) -> tuple[str, ...]:
        if self.answers is None:
            raise ValueError("a free-text family has no answer set")
        return self.answers(scene_cfg)

    def chance(self, scene_cfg) -> float:
        """Uniform guessing over the family's possible answers for these scenes."""
        return 1 / len(self.answer_set(scene_cfg))


# Scenes of any size: a family's answers for them are every answer it can give.
ANY_SCENE = SceneConfig(min_objects=1, max_objects=len(CELLS), unique_shapes=False)


def _fixed(answers: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
    return lambda scene_cfg: answers


# Held-in families are trained on; held-out ones never appear in instruction tuning. The LM's mix
# gives "exists" two shares: it is the one held-in family that checks two words against the scene,
# and with one share the LM answered it at chance (val, seed 0, 2,000 steps: exists 0.50 -> 0.90,
# mean held-in text accuracy 0.83 -> 0.88 with the double share).
FAMILY: dict[str, Family] = {
    "caption": Family(
        ("describe the image .", "what is in the picture ?", "give a short description of the scene ."),
        _caption,
        None,
    ),
    "color": Family(
        ("what color is the {shape} ?", "which color does the {shape} have ?", "tell me the color of the {shape} ."),
        _color,
        _fixed(tuple(COLORS)),
    ),
    "size": Family(
        ("is the {shape} small or large ?", "what size is the {shape} ?", "how big is the {shape} ?"),
        _size,
        _fixed(SIZES),
    ),
    "count": Family(
        ("how many objects are there ?", "how many shapes are in the image ?", "count the objects ."),
        _count,
        lambda scene_cfg: NUMBERS[scene_cfg.min_objects : scene_cfg.max_objects + 1],
        words=NUMBERS,
    ),
    "exists": Family(
        (
            "is there a {color} {shape} ?",
            "does the image contain a {color} {shape} ?",
            "can you see a {color} {shape} ?",
        ),
        _exists,
        _fixed(YES_NO),
        lm_share=2,
    ),
    "position": Family(
        ("where is the {shape} ?", "in which part of the image is the {shape} ?", "locate the {shape} ."),
        _position,
        _fixed(CELLS),
    ),
    "relation": Family(
        ("is the {a} {rel} the {b} ?", "is the {a} placed {rel} the {b} ?"),
        _relation,
        _fixed(YES_NO),
        held_out=True,
        min_objects=2,
        words=RELATIONS,
    ),
    "compare_count": Family(
        ("are there more {c1} objects than {c2} objects ?", "are {c1} objects more numerous than {c2} ones ?"),
        _compare_count,
        _fixed(YES_NO),
        held_out=True,
    ),
}
FAMILIES = tuple(FAMILY)
HELD_IN = tuple(f for f in FAMILIES if not FAMILY[f].held_out)
HELD_OUT = tuple(f for f in FAMILIES if FAMILY[f].held_out)
QA_HELD_IN = tuple(f for f in HELD_IN if FAMILY[f].answers)  # caption is scored by slot recall
# Closed yes/no answer sets: what InstructBLIP-style ranking chooses among on held-out families.
ANSWER_SETS = {f: YES_NO for f, fam in FAMILY.items() if fam.answers and fam.answers(SceneConfig()) == YES_NO}
TEMPLATES = {f: fam.templates for f, fam in FAMILY.items()}
MIN_OBJECTS = {f: fam.min_objects for f, fam in FAMILY.items() if fam.min_objects > 1}


def lm_mix() -> list[str]:
    """The stage-0 LM's text families, each repeated by its share."""
    return [f for f, fam in FAMILY.items() for _ in range(fam.lm_share)]


def make_task(scene: Scene, family: str, rng: np.random.Generator) -> tuple[str, str]:
    """(instruction, answer) of one family for this scene."""
    if family not in FAMILY:
        raise ValueError(f"unknown task family {family!r}; choose from {list(FAMILY)}")
    fam = FAMILY[family]
    if len(scene.objects) < fam.min_objects:
        raise ValueError(f"family {family!r} needs at least {fam.min_objects} objects per scene")
    slots, answer = fam.maker(scene, rng)
    if fam.answers is not None and answer not in fam.answer_set(ANY_SCENE):
        raise ValueError(f"family {family!r} answered {answer!r}, which is not among its declared answers")
    instruction = _pick(rng, fam.templates).format(**slots)
    stray = set(instruction.split()) - _words_of(family)
    if stray:  # a slot filled with a word no record declares would reach the tokenizer as <unk>
        raise ValueError(f"family {family!r} asked {instruction!r}: add {sorted(stray)} to its words")
    return instruction, answer


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


# The scene language's words in the order every saved checkpoint's tokenizer uses. Words a new family
# brings are appended after them (`vocabulary`), so every existing id keeps its meaning and runs
# saved before the family still load (`lab.train.trainer.run_tokenizer`).
BASE_WORDS = (
    ". : ? a above and are assistant at below big blue bottom can center circle color contain count describe "
    "description diamond does eight five four give green have how image in is large left locate many me more "
    "nine no numerous objects of one ones or part picture placed purple red right scene see seven shapes short "
    "six size small square tell than the there three top triangle two user what where which white yellow yes you "
    "zero"
).split()


def family_words(family: Family) -> set[str]:
    """Every word a family can put in a question or an answer: its templates' (slots left out),
    its answers', its slot words'; and the scene's names (shapes, colours) any slot may hold."""
    words = {w for t in family.templates for w in re.sub(r"\{\w+\}", " ", t).split()}
    if family.answers is not None:
        words |= {w for a in family.answers(ANY_SCENE) for w in a.split()}
    return words | {w for x in family.words for w in x.split()} | set(SHAPES) | set(COLORS)


@functools.cache
def _words_of(family: str) -> frozenset[str]:
    return frozenset(family_words(FAMILY[family]))


def unknown_words(tok, families) -> dict[str, list[str]]:
    """{family: its words that `tok` (a scene word tokenizer) cannot encode}: a model whose tokenizer
    predates a family would read and write them as <unk>. Empty for a transformers tokenizer."""
    known = getattr(tok, "index", None)
    if known is None:
        return {}
    missing = {f: sorted(w for w in _words_of(f) if w not in known) for f in families}
    return {f: ws for f, ws in missing.items() if ws}


def vocabulary() -> list[str]:
    """Every word the generator can emit: `BASE_WORDS`, then the words families bring beyond them
    (sorted), so adding a family appends and never renumbers (the tokenizer's base vocabulary)."""
    words = {w for fam in FAMILY.values() for w in family_words(fam)}
    words |= set(caption_words())
    return [*BASE_WORDS, *sorted(words - set(BASE_WORDS))]


def caption_words() -> list[str]:
    """A caption's and a prompt's words: sizes, colours, shapes, cells, "and", "at", the roles."""
    words = {*SIZES, *COLORS, *SHAPES, "and", "at", "scene", "user", "assistant", ":"}
    return sorted(words | {w for c in CELLS for w in c.split()})
