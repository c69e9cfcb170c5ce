"""Linear probes: where along the pipeline is each scene attribute still linearly readable?

A model that answers "what color is the circle ?" wrongly may have lost the colour in the vision
encoder, in the connector, or in the LLM, which reads it but does not say it. A ridge probe on
frozen features at each site separates the three:

- `pixels`: the raw image (the ceiling a linear read-out of the input reaches),
- `vit`: every vision token, concatenated (`b (n d)`),
- `connector`: every visual embedding handed to the LLM (instruction-aware queries read the
  neutral caption instruction, so they are asked for the whole scene),
- `llm`: the LLM's final hidden state at the answer position of a question, per family
  (held-out families included: is the answer there even when the reply is wrong?).

Scene-level targets (pixels, vit, connector): colour, shape and size of the object in each of the
9 grid cells ("none" when empty), averaged over cells; the object count; the cell of each shape,
averaged over shapes present. Probes fit on the train split, pick their ridge strength on val,
and report test accuracy beside the majority-class rate.

    python -m ablations.probe --run RUN_FOLDER [--run ...] [--out probe.json]
    python -m ablations.probe --run STAGE0_VISION_FOLDER --cells   (nonlinear per-cell probe)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from einops import rearrange

import lab
from lab.data import Collator, SceneDataConfig, SceneTasks, load_tokenizer, pixels
from lab.data.scenes import CELLS, COLORS, SHAPES, SIZES, Scene
from lab.data.tasks import FAMILY
from lab.rundir import RunDir

SITES = ("pixels", "vit", "connector", "llm")
SCENE_ATTRS = ("color", "shape", "size", "count", "position")
LLM_FAMILIES = tuple(f for f, fam in FAMILY.items() if fam.answers is not None and fam.lm_share)
NEUTRAL = "describe the image ."
LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def scene_targets(scene: Scene) -> dict[str, int]:
    """Class index per target; -1 where the target does not exist (a shape that is absent)."""
    at = {o.cell: o for o in scene.objects}
    out: dict[str, int] = {}
    for c in CELLS:
        o = at.get(c)
        out[f"color@{c}"] = list(COLORS).index(o.color) if o else len(COLORS)
        out[f"shape@{c}"] = SHAPES.index(o.shape) if o else len(SHAPES)
        out[f"size@{c}"] = SIZES.index(o.size) if o else len(SIZES)
    out["count"] = len(scene.objects)
    for s in SHAPES:
        found = scene.with_shape(s)
        out[f"position:{s}"] = CELLS.index(found[0].cell) if found else -1
    return out


class RidgeProbe:
    """Least-squares classifiers on one-hot targets over one feature matrix (standardised,
    float64). One eigendecomposition of the Gram matrix serves every target and every ridge
    strength; the strength is chosen on val, accuracy reported on test beside the majority rate."""

    def __init__(self, fit: torch.Tensor, val: torch.Tensor, test: torch.Tensor) -> None:
        mu, sd = fit.mean(0), fit.std(0).clamp_min(1e-6)
        self.fit, self.val, self.test = ((x - mu) / sd for x in (fit, val, test))
        n, d = self.fit.shape
        self.dual = d > n  # work in sample space when features outnumber samples
        gram = self.fit @ self.fit.T if self.dual else self.fit.T @ self.fit
        self.evals, self.evecs = torch.linalg.eigh(gram)
        self.scale = self.evals.mean().clamp_min(1e-12)

    def weights(self, y: torch.Tensor, lam: float) -> torch.Tensor:
        inv = self.evecs @ torch.diag(1.0 / (self.evals + lam * self.scale)) @ self.evecs.T
        return self.fit.T @ (inv @ y) if self.dual else inv @ (self.fit.T @ y)

    def __call__(self, yf: torch.Tensor, yv: torch.Tensor, yt: torch.Tensor) -> dict:
        """Targets are class indices; -1 marks a sample whose target does not exist. Such samples
        get a class of their own in the fit (keeping one Gram matrix) and are not scored."""
        classes = int(max(yf.max(), yv.max(), yt.max())) + 2
        y = torch.nn.functional.one_hot(yf.clamp_min(-1) % classes, classes).double() - 1.0 / classes
        best = (-1.0, None)
        for lam in LAMBDAS:
            w = self.weights(y, lam)
            acc = _scored(self.val @ w, yv)
            if acc > best[0]:
                best = (acc, w)
        scored = yf[yf >= 0]
        majority = torch.bincount(scored).argmax()
        keep = yt >= 0
        return {
            "acc": _scored(self.test @ best[1], yt),
            "chance": yt[keep].eq(majority).double().mean().item(),
            "n_test": int(keep.sum()),
        }


def _scored(logits: torch.Tensor, y: torch.Tensor) -> float:
    keep = y >= 0
    return logits[keep, :-1].argmax(1).eq(y[keep]).double().mean().item()


def _scene_features(model, tok, data: SceneDataConfig, split: str, n: int, batch: int = 128) -> dict:
    """Flattened features per site plus the scene targets, for n samples of `split`."""
    ds = SceneTasks(data.replace(stream="caption"), split)
    q = model.cfg.connector.qformer
    aware = bool(q and q.instruction_aware)
    feats: dict[str, list] = {s: [] for s in SITES if s != "llm"}
    targets: dict[str, list] = {}
    for i in range(0, n, batch):
        samples = [ds[j] for j in range(i, min(n, i + batch))]
        px = pixels([s.image for s in samples])
        vit = model.vision(px)
        ids = mask = None
        if aware:
            rows = [tok.encode(NEUTRAL)] * len(samples)
            ids, mask = torch.tensor(rows), torch.ones(len(rows), len(rows[0]), dtype=torch.long)
        conn = model.connector(vit, ids, mask)
        for site, x in (("pixels", px), ("vit", vit), ("connector", conn)):
            feats[site].append(rearrange(x, "b ... -> b (...)").double())
        for s in samples:
            for k, v in scene_targets(s.scene).items():
                targets.setdefault(k, []).append(v)
    return {"x": {k: torch.cat(v) for k, v in feats.items()}, "y": {k: torch.tensor(v) for k, v in targets.items()}}


def _llm_features(model, tok, data: SceneDataConfig, family: str, split: str, n: int, batch: int = 128):
    """Final hidden state at the answer position, and the answer as a class label."""
    ds = SceneTasks(data.replace(stream="instruct", families=[family]), split)
    q = model.cfg.connector.qformer
    collate = Collator(tok, model.cfg.image_tokens, instruction=bool(q and q.instruction_aware))
    xs, answers = [], []
    for i in range(0, n, batch):
        samples = [ds[j] for j in range(i, min(n, i + batch))]
        b = collate(samples, prompt_only=True)  # left-padded: the last position is the answer's
        visual = model.visual_embeddings(b["pixel_values"], b.get("instruction_ids"), b.get("instruction_mask"))
        h = model.llm.hidden(model.input_embeddings(b["input_ids"], visual), b["attention_mask"])
        xs.append(h[:, -1].double())
        answers += [s.turns[-1][1] for s in samples]
    return torch.cat(xs), answers


@torch.no_grad()
def probe_model(
    model, tok, data: SceneDataConfig, n_fit: int = 2000, n_val: int = 500, n_test: int = 1000, sites=SITES
) -> dict:
    """{site: {attribute: {"acc", "chance", "n_test"}}} for one model (see the module doc)."""
    model.eval()
    sizes = {"train": n_fit, "val": n_val, "test": n_test}
    out: dict[str, dict] = {}
    scene = {split: _scene_features(model, tok, data, split, n) for split, n in sizes.items()}
    groups: dict[str, Callable[[str], bool]] = {
        "color": lambda k: k.startswith("color@"),
        "shape": lambda k: k.startswith("shape@"),
        "size": lambda k: k.startswith("size@"),
        "count": lambda k: k == "count",
        "position": lambda k: k.startswith("position:"),
    }
    for site in (s for s in ("pixels", "vit", "connector") if s in sites):
        probe = RidgeProbe(*(scene[s]["x"][site] for s in sizes))
        out[site] = {}
        for attr, member in groups.items():
            rows = [probe(*(scene[s]["y"][k] for s in sizes)) for k in scene["train"]["y"] if member(k)]
            out[site][attr] = _mean_rows(rows)
    if "llm" not in sites:
        return out
    out["llm"] = {}
    for fam in LLM_FAMILIES:
        if data.scene.max_objects < 2 and fam == "relation":
            continue
        parts = {s: _llm_features(model, tok, data, fam, s, n) for s, n in sizes.items()}
        vocab = sorted({a for _, answers in parts.values() for a in answers})
        probe = RidgeProbe(*(parts[s][0] for s in sizes))
        out["llm"][fam] = probe(*(torch.tensor([vocab.index(a) for a in parts[s][1]]) for s in sizes))
    return out


def _cell_tokens(encoders: dict, px: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per grid cell: its pixels and each encoder's patch tokens, `b 9 f`."""
    any_vit = next(iter(encoders.values()))
    g = any_vit.cfg.image_size // any_vit.cfg.patch_size
    if g % 3 or any_vit.cfg.image_size % 3:
        raise ValueError(f"cell probe needs patches aligned with the 3×3 grid; got a {g}×{g} patch grid")
    out = {"pixels": rearrange(px, "b c (r h) (q w) -> b (r q) (c h w)", r=3, q=3)}
    for name, vit in encoders.items():
        tokens = vit(px)[:, -g * g :]  # patch tokens, CLS (if any) dropped
        out[name] = rearrange(tokens, "b (r i q j) d -> b (r q) (i j d)", r=3, i=g // 3, q=3, j=g // 3)
    return out


def _mlp_probe(xf, yf, xt, yt, steps: int) -> float:
    """A one-hidden-layer MLP per cell; accuracy over the cells that hold an object."""
    mu, sd = xf.mean((0, 1)), xf.std((0, 1)).clamp_min(1e-5)
    xf, xt = ((x - mu) / sd for x in (xf, xt))
    xf, yf = xf.flatten(0, 1), yf.flatten()
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(xf.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, int(yf.max()) + 1)
    )
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            i = torch.randint(len(xf), (256,), generator=gen)
            loss = torch.nn.functional.cross_entropy(net(xf[i]), yf[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    pred, yt = net(xt.flatten(0, 1)).argmax(-1), yt.flatten()
    obj = yt < int(yf.max())  # the last class is "empty cell"
    return pred[obj].eq(yt[obj]).float().mean().item()


@torch.no_grad()
def cell_probe(folder: str | Path, n_fit: int = 3000, n_test: int = 1000, steps: int = 1500) -> dict:
    """Nonlinear probe of one grid cell's object (shape, colour) from that cell's pixels, from the
    patch tokens of a randomly initialised ViT of the same shape, and from the trained ViT's.
    Ridge probes on the whole image cannot read shape even from pixels (jittered outlines are not
    linearly separable); an MLP on the cell's own features can, so this separates "the encoder
    lost it" from "a linear read-out cannot see it". Chance among objects: 1/4 shapes, 1/6 colours."""
    folder = Path(folder)
    from lab.models.vision import VisionEncoder

    model = lab.load_pretrained(folder).eval()
    torch.manual_seed(0)
    encoders = {"vit_random_init": VisionEncoder(model.cfg.vision).eval(), "vit": model.vision}
    data = _run_data(folder).replace(stream="caption")
    feats, ys = {}, {}
    for split, n in (("train", n_fit), ("test", n_test)):
        ds = SceneTasks(data, split)
        samples = [ds[i] for i in range(n)]
        parts = [_cell_tokens(encoders, pixels([s.image for s in samples[i : i + 256]])) for i in range(0, n, 256)]
        feats[split] = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        y = torch.tensor([[len(SHAPES), len(COLORS)]] * 9).repeat(n, 1, 1)
        for i, s in enumerate(samples):
            for o in s.scene.objects:
                y[i, o.row * 3 + o.col] = torch.tensor([SHAPES.index(o.shape), list(COLORS).index(o.color)])
        ys[split] = y
    return {
        site: {
            attr: _mlp_probe(feats["train"][site], ys["train"][..., j], feats["test"][site], ys["test"][..., j], steps)
            for j, attr in enumerate(("shape", "color"))
        }
        for site in feats["train"]
    }


def _mean_rows(rows: list[dict]) -> dict:
    rows = [r for r in rows if r["n_test"]]
    return {
        "acc": sum(r["acc"] for r in rows) / len(rows),
        "chance": sum(r["chance"] for r in rows) / len(rows),
        "n_test": sum(r["n_test"] for r in rows),
    }


def probe_table(results: dict[str, dict]) -> str:
    """Markdown: one row per (model, site), accuracy (majority rate) per attribute."""
    cols = list(dict.fromkeys((*SCENE_ATTRS, *LLM_FAMILIES)))
    lines = ["| model | site | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for name, res in results.items():
        for site, attrs in res.items():
            cells = [f"{attrs[c]['acc']:.2f} ({attrs[c]['chance']:.2f})" if c in attrs else "" for c in cols]
            lines.append(f"| {name} | {site} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _run_data(folder: Path) -> SceneDataConfig:
    saved = RunDir(folder).train_config()
    data = SceneDataConfig.from_dict(saved["data"]) if saved else SceneDataConfig()
    return data.replace(pool=0)


def probe_run(folder: str | Path, **kwargs) -> dict:
    """Probe a run folder's model on the scene data it was trained with."""
    folder = Path(folder)
    model, tok = lab.load_pretrained(folder), load_tokenizer(folder)
    return probe_model(model, tok, _run_data(folder), **kwargs)


@torch.no_grad()
def text_accuracy(folder: str | Path, per_family: int = 200, split: str = "val") -> dict:
    """The LM alone, given the true caption as text: exact match per question family. This is
    the ceiling of any frozen-LLM variant: a connector can at best hand the LLM the caption."""
    from lab.data import FAMILIES, normalize
    from lab.models.generation import generate_causal

    folder = Path(folder)
    model, tok = lab.load_pretrained(folder), load_tokenizer(folder)
    model.eval()
    data, collate = _run_data(folder), Collator(tok, 0)
    acc = {}
    for fam in (f for f in FAMILIES if f != "caption"):
        ds = SceneTasks(data.replace(stream="text", families=[fam]), split)
        hits = 0
        for i in range(0, per_family, 128):
            samples = [ds[j] for j in range(i, min(per_family, i + 128))]
            b = collate(samples, prompt_only=True)
            out = generate_causal(
                model.llm,
                b["input_ids"],
                model.llm.embed(b["input_ids"]),
                b["attention_mask"],
                max_new_tokens=6,
                eos_token_id=tok.eos_id,
                pad_token_id=tok.pad_id,
            )
            for s, row in zip(samples, out[:, b["input_ids"].shape[1] :].tolist(), strict=True):
                row = row[: row.index(tok.eos_id)] if tok.eos_id in row else row
                hits += normalize(tok.decode(row)) == normalize(s.turns[-1][1])
        acc[fam] = hits / per_family
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="a run folder (repeatable)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--n-fit", type=int, default=2000)
    p.add_argument("--cells", action="store_true", help="the nonlinear per-cell probe (shape, colour) instead")
    args = p.parse_args()
    if args.cells:
        results = {str(r): cell_probe(r, n_fit=args.n_fit) for r in args.run}
        for run, sites in results.items():
            print(run, json.dumps({k: {a: round(v, 3) for a, v in x.items()} for k, x in sites.items()}))
    else:
        results = {str(r): probe_run(r, n_fit=args.n_fit) for r in args.run}
        print(probe_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
