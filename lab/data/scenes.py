"""Procedural scenes: a few colored shapes on a 3×3 grid, rendered with numpy.

Everything a question can ask about (shape, color, size, grid cell) is kept in the `Scene`, so
answers are computed, never annotated. One object per grid cell keeps positions unambiguous;
shapes are unique within a scene by default so "the triangle" names exactly one object.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lab.config import Config, ConfigError

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")


def cell_name(row: int, col: int) -> str:
    """3×3 grid cell as words: 'top left', 'top', ..., 'center', ..., 'bottom right'."""
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


CELLS = tuple(cell_name(r, c) for r in range(3) for c in range(3))


@dataclasses.dataclass
class SceneConfig(Config):
    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 3
    unique_shapes: bool = True  # each shape at most once, so "the <shape>" is one object
    distractors: int = 0  # gray specks that are not objects
    noise: float = 0.0  # pixel noise std, in [0, 255] units
    jitter: float = 0.15  # object centre offset within its cell, as a fraction of the cell

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ConfigError(f"scene.image_size {self.image_size} is too small to draw shapes (minimum 16)")
        most = len(SHAPES) if self.unique_shapes else 9
        if not 1 <= self.min_objects <= self.max_objects <= most:
            raise ConfigError(
                f"scene objects must satisfy 1 <= min_objects <= max_objects <= {most}, "
                f"got {self.min_objects}..{self.max_objects}"
            )


@dataclasses.dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    row: int
    col: int

    @property
    def cell(self) -> str:
        return cell_name(self.row, self.col)


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    seed: int  # enough to re-render exactly, with the config

    def with_shape(self, shape: str) -> list[Obj]:
        return [o for o in self.objects if o.shape == shape]


def sample_scene(rng: np.random.Generator, cfg: SceneConfig, seed: int = 0) -> Scene:
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    shapes = rng.choice(len(SHAPES), size=n, replace=not cfg.unique_shapes)
    objs = [
        Obj(
            shape=SHAPES[shapes[i]],
            color=list(COLORS)[int(rng.integers(len(COLORS)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            row=int(cells[i]) // 3,
            col=int(cells[i]) % 3,
        )
        for i in range(n)
    ]
    objs.sort(key=lambda o: (o.row, o.col))  # reading order: captions list objects this way
    return Scene(objects=tuple(objs), seed=seed)


def render(scene: Scene, cfg: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """`H W 3` uint8 image of the scene (dark background, optional noise and specks)."""
    s = cfg.image_size
    img = np.full((s, s, 3), 30, dtype=np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    cell = s / 3
    for o in scene.objects:
        jx, jy = rng.uniform(-cfg.jitter, cfg.jitter, size=2) * cell
        cx, cy = (o.col + 0.5) * cell + jx, (o.row + 0.5) * cell + jy
        r = cell * (0.28 if o.size == "small" else 0.45)
        dx, dy = xx - cx, yy - cy
        if o.shape == "circle":
            mask = dx**2 + dy**2 <= r**2
        elif o.shape == "square":
            mask = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
        elif o.shape == "diamond":
            mask = np.abs(dx) + np.abs(dy) <= 1.1 * r
        else:  # triangle, apex up: half-width grows linearly from the apex to the base
            t = (dy + r) / (2 * r)
            mask = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
        img[mask] = COLORS[o.color]
    for _ in range(cfg.distractors):
        x, y = rng.integers(0, s - 1, size=2)
        img[y : y + 2, x : x + 2] = 128
    if cfg.noise > 0:
        img += rng.normal(0, cfg.noise, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
