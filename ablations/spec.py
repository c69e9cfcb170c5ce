"""A comparison written as a YAML file: `python -m ablations --spec my.yaml [--quick | --smoke]`.

It runs through the suite's runner, ledger, verdicts and report like the built-in comparisons, and a
variant that computes what a saved job computed (same fingerprint) is found in the ledger, not
retrained. The format (every key but `paper`, `otherwise`, `shared` and a variant's `group`/`eval` is
required):

```yaml
name: pool_vs_linear                  # results go to OUT/<name>/
shared: {model.freeze_vision: true, model.freeze_llm: false}   # every variant's overrides
variants:                             # each: TrainConfig overrides of one instruction-tuning step
  linear: {overrides: {model.connector.kind: linear}}
  mlp: {overrides: {model.connector.kind: mlp}}
  mlp_1obj: {overrides: {model.connector.kind: mlp}, group: control, eval: {data.scene.max_objects: 1}}
claims:
  - claim: an MLP beats a linear projection
    a: mlp
    b: linear
    metric: held_in_acc               # or held_out_ranked_acc, acc_<family>, ranked_<family>
    direction: 1                      # 1: a > b, -1: a < b, 0: no difference
    paper: "LLaVA-1.5: linear -> MLP, GQA 46.8 -> 47.3"
    otherwise: what it would mean if it did not reproduce
```

Every variant trains from the stage-0 ViT and LM, with the suite's regime and budget
(`ablations.regime`); overrides are checked against `TrainConfig` when the suite is planned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ablations.plan import Comparison, Step, Variant
from ablations.verdicts import paired
from lab.config import ConfigError
from lab.data.tasks import FAMILIES

TOP = {"name", "shared", "variants", "claims"}
VARIANT = {"overrides", "group", "eval"}
CLAIM = {"claim", "a", "b", "metric", "direction", "paper", "otherwise"}
METRICS = {"held_in_acc", "held_out_acc", "held_out_ranked_acc"}
METRICS |= {f"{kind}_{f}" for kind in ("acc", "ranked") for f in FAMILIES}


def load(path: str | Path) -> Comparison:
    """The spec at `path` as a Comparison; a ConfigError naming the file and key for anything off."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    where = str(path)
    _mapping(spec, where, TOP, {"name", "variants", "claims"})
    name = spec["name"]
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"{where}: name {name!r} must be a word (letters, digits, _): it names a results folder")
    shared = spec.get("shared") or {}
    _mapping(shared, f"{where}: shared", None, set())
    variants = []
    for vname, v in _items(spec["variants"], f"{where}: variants"):
        _mapping(v, f"{where}: variants.{vname}", VARIANT, {"overrides"})
        group = v.get("group", "main")
        if group not in ("main", "control", "sweep"):
            raise ConfigError(f"{where}: variants.{vname}.group={group!r}; choose main, control or sweep")
        _mapping(v["overrides"], f"{where}: variants.{vname}.overrides", None, set())
        step = Step("instruct", {**shared, **v["overrides"]})
        variants.append(Variant(vname, [step], eval_overrides=dict(v.get("eval") or {}), group=group))
    names = {v.name for v in variants}
    claims = []
    for i, c in enumerate(spec["claims"] or []):
        at = f"{where}: claims[{i}]"
        _mapping(c, at, CLAIM, {"claim", "a", "b", "metric", "direction"})
        for side in ("a", "b"):
            if c[side] not in names:
                raise ConfigError(f"{at}.{side}={c[side]!r} is not a variant; variants: {sorted(names)}")
        if c["metric"] not in METRICS:
            raise ConfigError(f"{at}.metric={c['metric']!r}; choose one of {sorted(METRICS)}")
        if c["direction"] not in (-1, 0, 1):
            raise ConfigError(f"{at}.direction={c['direction']!r}; choose 1 (a > b), -1 (a < b) or 0 (no difference)")
        claims.append(c)
    if not claims:
        raise ConfigError(f"{where}: claims is empty; a comparison decides at least one claim")
    paper = {c["claim"]: c.get("paper", "") for c in claims}
    return Comparison(name, variants, paper, lambda runs: verdicts(runs, claims))


def verdicts(runs: list[dict], claims: list[dict]) -> list[dict]:
    return [
        paired(runs, c["a"], c["b"], c["metric"], c["direction"], c["claim"], c.get("otherwise", "")) for c in claims
    ]


def _mapping(value: Any, where: str, allowed: set[str] | None, required: set[str]) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    if allowed is not None and set(value) - allowed:
        raise ConfigError(f"{where}: unknown key(s) {sorted(set(value) - allowed)}; allowed: {sorted(allowed)}")
    if required - set(value):
        raise ConfigError(f"{where}: missing {sorted(required - set(value))}")


def _items(value: Any, where: str) -> list[tuple[str, Any]]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where} must be a non-empty mapping of variant names")
    return list(value.items())
