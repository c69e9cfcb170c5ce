"""A checkpoint's image preprocessing, read from its `preprocessor_config.json`.

A model only answers well from pixels prepared as in its training: CLIP's shortest-edge resize and
centre crop with CLIP's mean and std (LLaVA-1.5, after padding to a square), BLIP's square resize
(BLIP-2, InstructBLIP), SigLIP's square bilinear resize to [-1, 1]. This module applies those steps
with the same arithmetic as transformers' PIL image processors (PIL resampling on uint8, rescale in
float64 cast to float32, normalise in float32), so that `pixel_values` match theirs to float32
rounding, and it never imports transformers.

lab's scene-trained run folders write one too (`SCENE`): a square resize and x / 127.5 - 1, which is
what `lab.data.collate.pixels` computes for the scenes, spelled as a BLIP-style config so that
transformers' own processor reads the folder the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

FILE = "preprocessor_config.json"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
BICUBIC, BILINEAR = 3, 2  # PIL's resampling codes, as the configs store them

# transformers' class defaults, for keys a config leaves out (the seeds' checkpoints state them all).
DEFAULTS: dict[str, dict[str, Any]] = {
    "CLIPImageProcessor": dict(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=BICUBIC
    ),
    "BlipImageProcessor": dict(size={"height": 384, "width": 384}, do_center_crop=False, resample=BICUBIC),
    "SiglipImageProcessor": dict(
        size={"height": 224, "width": 224}, do_center_crop=False, resample=BILINEAR, image_mean=(0.5,) * 3,
        image_std=(0.5,) * 3,
    ),
}  # fmt: skip
DEFAULTS["LlavaImageProcessor"] = {**DEFAULTS["CLIPImageProcessor"], "do_pad": False}
# Keys that change pixels but that this module does not implement: an error, never silently ignored.
UNSUPPORTED = ("image_grid_pinpoints", "do_image_splitting", "max_image_tiles", "do_reduce_labels")


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """The steps of one checkpoint's image preprocessing, in transformers' order: pad to a square
    (LLaVA-1.5, with the mean colour), resize, centre crop, rescale, normalise."""

    kind: str = "BlipImageProcessor"
    size: dict = dataclasses.field(default_factory=lambda: {"height": 384, "width": 384})
    crop_size: dict | None = None
    resample: int = BICUBIC
    do_resize: bool = True
    do_center_crop: bool = False
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    do_convert_rgb: bool = True
    do_pad: bool = False

    @classmethod
    def from_dict(cls, d: dict, source: str = FILE) -> ImageProcessor:
        kind = d.get("image_processor_type") or d.get("feature_extractor_type") or ""
        kind = kind.removesuffix("Fast").removesuffix("Pil")
        if kind not in DEFAULTS:
            raise ValueError(f"{source}: image_processor_type {kind!r} is not supported; lab reads {sorted(DEFAULTS)}")
        bad = [k for k in UNSUPPORTED if d.get(k)]
        if bad:
            raise ValueError(f"{source}: {bad} change the pixels and are not supported by lab's image processor")
        values = {**DEFAULTS[kind], **d}
        fields = {f.name for f in dataclasses.fields(cls)} - {"kind"}
        kw = {k: values[k] for k in fields if values.get(k) is not None}
        for key in ("size", "crop_size"):
            if isinstance(kw.get(key), int):  # old configs: one int
                kw[key] = {"shortest_edge": kw[key]} if key == "size" and kind != "BlipImageProcessor" else None
                kw[key] = kw[key] or {"height": values[key], "width": values[key]}
        for key in ("image_mean", "image_std"):
            if key in kw:
                v = kw[key]
                kw[key] = tuple(float(x) for x in (v if isinstance(v, list | tuple) else [v] * 3))
        return cls(kind=kind, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_processor_type"] = d.pop("kind")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if v is not None}

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of `pixel_values` for any input image."""
        box = self.crop_size if self.do_center_crop else self.size
        if "height" not in box:
            raise ValueError(f"{self.kind}: a shortest-edge resize without a centre crop has no fixed size")
        return box["height"], box["width"]

    def _resize_to(self, h: int, w: int) -> tuple[int, int]:
        s = self.size
        if "shortest_edge" in s:  # the short side becomes the edge; the long side is truncated, as transformers
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s["shortest_edge"], int(s["shortest_edge"] * long / short)
            return (new_long, new_short) if w <= h else (new_short, new_long)
        return s["height"], s["width"]

    def one(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One image (PIL, or uint8 `h w 3`) -> float32 `3 H W`."""
        im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        if self.do_convert_rgb:
            im = im.convert("RGB")
        if self.do_pad and im.width != im.height:  # LLaVA-1.5: pad to a square with the mean colour, centred
            side = max(im.width, im.height)
            colour = tuple(int(x * 255) for x in self.image_mean)
            square = Image.new("RGB", (side, side), colour)
            square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
            im = square
        if self.do_resize:
            h, w = self._resize_to(im.height, im.width)
            im = im.resize((w, h), resample=self.resample)
        x = np.asarray(im)
        if self.do_center_crop:
            ch, cw = self.crop_size["height"], self.crop_size["width"]
            top, left = (x.shape[0] - ch) // 2, (x.shape[1] - cw) // 2
            if top < 0 or left < 0:
                raise ValueError(f"image {x.shape[1]}x{x.shape[0]} after resizing is smaller than the crop {cw}x{ch}")
            x = x[top : top + ch, left : left + cw]
        x = x.transpose(2, 0, 1)  # c h w, as transformers computes
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        x = x.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return x

    def __call__(self, images) -> torch.Tensor:
        """An image or a list of them -> `pixel_values` `b 3 H W`."""
        images = images if isinstance(images, list | tuple) else [images]
        return torch.from_numpy(np.stack([self.one(im) for im in images]))

    def save(self, folder: str | Path) -> None:
        Path(folder, FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def scene_processor(image_size: int) -> ImageProcessor:
    """What lab's scene training feeds the ViT: a square image, x / 127.5 - 1 (`collate.pixels`)."""
    return ImageProcessor(
        kind="BlipImageProcessor",
        size={"height": image_size, "width": image_size},
        rescale_factor=1 / 127.5,
        image_mean=(1.0, 1.0, 1.0),
        image_std=(1.0, 1.0, 1.0),
    )


def load_image_processor(folder: str | Path) -> ImageProcessor | None:
    """The folder's image processor, or None when it has no preprocessor_config.json."""
    path = Path(folder, FILE)
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    return ImageProcessor.from_dict(d, str(path))
