"""All the GPU work for the fused kernels, in one run of a few minutes (`python -m benchmarks.kernels --gpu-check`).

1. correctness against float64 references, fp16 and bf16: the projected cross-attention (with a key
   mask) and the projector, forward and every gradient;
2. the autotuned timings at the papers' shapes, fp16 and bf16 (`benchmarks.kernels.run`: cuBLAS +
   SDPA, eager and torch.compile beside the fused kernels, peak memory, % of peak FLOPs and bandwidth);
3. end to end: a BLIP-2-shaped model (ViT-g features 1408 wide, a Q-Former 768 wide with 32 queries)
   and a LLaVA-shaped one (MLP projector 1024 -> 4096), 20 bf16-autocast training steps each with the
   fused path and with the default one, from the same weights and data: losses side by side and the
   median step time;
4. the results files, benchmarks/results/kernels_<gpu>.json and .png (with the roofline).

Every part checks the time left (`BUDGET_S`) and records what it skipped, rather than running over.
`e2e` runs on the CPU too (tiny shapes, Triton under the interpreter), which is how CI keeps it working.
"""

from __future__ import annotations

import copy
import time

import torch

BUDGET_S = 7 * 60  # the whole check, leaving a minute of a lent GPU's 8 for start-up and copying back


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def correctness(dtype: torch.dtype, device: str = "cuda", small: bool = False) -> dict:
    """Relative errors (output and every gradient) against float64, of the fused kernel and of the
    unfused path (the reference run in the same dtype): the kernel passes where it is within 2e-2 or
    within twice the unfused path's own error."""
    import lab_kernels
    from lab_kernels import reference as R

    g = torch.Generator().manual_seed(0)
    b, nq, nk, dx, dq, h = (2, 8, 9, 24, 32, 4) if small else (8, 32, 257, 1408, 768, 12)
    n, din, dh, dout = (16, 24, 32, 32) if small else (512, 1024, 4096, 4096)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    mask = torch.ones(b, nk, dtype=torch.bool, device=device)
    mask[1, nk // 2 :] = False
    attn = [rand(b, nq, dq), rand(b, nk, dx), rand(dq, dx, scale=dx**-0.5), rand(dq, scale=0.02)]
    attn += [rand(dq, dx, scale=dx**-0.5), rand(dq, scale=0.02)]
    mlp = [rand(n, din), rand(dh, din, scale=din**-0.5), rand(dh, scale=0.02), rand(dout, dh, scale=dh**-0.5)]
    mlp += [rand(dout, scale=0.02)]
    cases = {
        "projected_cross_attention": (
            attn,
            lambda *a: lab_kernels.projected_cross_attention(*a, h, key_padding_mask=mask),
            lambda *a: R.projected_cross_attention(*a, h, key_padding_mask=mask),
        ),
        "mlp_projector": (mlp, lab_kernels.mlp_projector, R.mlp_projector),
    }
    out = {}
    for name, (args, fused, ref) in cases.items():
        ref_in = [a.to(device).requires_grad_() for a in args]
        want = ref(*ref_in)
        dy = torch.randn(want.shape, generator=g, dtype=torch.float64).to(device)
        want_grads = torch.autograd.grad(want, ref_in, dy)
        row = {}
        for impl, fn in (("fused", fused), ("unfused", ref)):
            ins = [a.to(device, dtype).requires_grad_() for a in args]
            y = fn(*ins)
            grads = torch.autograd.grad(y, ins, dy.to(dtype))
            pairs = zip(grads, want_grads, strict=True)
            row[impl] = {"out": _rel(y, want)} | {f"grad{i}": _rel(gr, w) for i, (gr, w) in enumerate(pairs)}
        # within 2 %, or no worse than twice the unfused path's own error (the key bias's gradient is
        # zero in exact arithmetic, so every dtype's relative error there is large)
        row["ok"] = all(v <= max(2 * row["unfused"][k], 2e-2) for k, v in row["fused"].items())
        out[name] = row
    return out


def _models(device: str, tiny: bool) -> dict:
    """(config, the fused overrides) of the BLIP-2-shaped and the LLaVA-shaped model."""
    from lab.models import VLMConfig

    w = 64 if tiny else None
    vision = dict(hidden_size=w or 1408, num_layers=1 if tiny else 2, num_heads=4 if tiny else 16,
                  intermediate_size=2 * (w or 1408), image_size=28 if tiny else 224, patch_size=14)  # fmt: skip
    llm = dict(hidden_size=w or 2048, num_layers=1 if tiny else 2, num_heads=4 if tiny else 16,
               num_kv_heads=4 if tiny else 16, intermediate_size=2 * (w or 2048), vocab_size=512 if tiny else 32000,
               max_position_embeddings=512)  # fmt: skip
    qformer = dict(hidden_size=w or 768, num_layers=1 if tiny else 2, num_heads=4 if tiny else 12,
                   intermediate_size=2 * (w or 768), encoder_hidden_size=vision["hidden_size"],
                   num_query_tokens=8 if tiny else 32)  # fmt: skip
    blip2 = VLMConfig.from_dict(dict(vision=vision, llm=llm, connector=dict(kind="qformer", qformer=qformer)))
    llava_vision = {**vision, "hidden_size": w or 1024, "intermediate_size": 2 * (w or 1024)}
    llava = VLMConfig.from_dict(dict(vision=llava_vision, llm=llm, connector=dict(kind="mlp")))
    return {  # each model's fused path: the one setting that switches it on
        "blip2_qformer": (blip2, ("connector", "qformer", "attn_impl")),
        "llava_mlp": (llava, ("connector", "mlp_impl")),
    }


def e2e(device: str = "cuda", steps: int = 20, batch: int = 8, tiny: bool = False) -> dict:
    """Each model trained `steps` steps (AdamW, bf16 autocast on CUDA) from the same weights and the
    same batches, with the default path and the fused one: losses and median step times."""
    from lab.models import VisionLanguageModel, VLMConfig

    out = {}
    for name, (cfg, fused) in _models(device, tiny).items():
        torch.manual_seed(0)
        base = VisionLanguageModel(cfg).to(device)
        n_img = cfg.image_tokens
        g = torch.Generator(device="cpu").manual_seed(1)
        size = cfg.vision.image_size
        data = []
        for _ in range(steps):
            ids = torch.randint(10, cfg.llm.vocab_size, (batch, n_img + 16), generator=g)
            ids[:, :n_img] = cfg.image_token_id
            labels = ids.clone()
            labels[:, :n_img] = -100
            data.append((torch.randn(batch, 3, size, size, generator=g), ids, labels))
        row = {}
        for impl in ("default", "fused"):
            d = cfg.to_dict()
            if impl == "fused":
                *parents, key = fused
                inner = d
                for name in parents:
                    inner = inner[name]
                inner[key] = "triton"
            model = VisionLanguageModel(VLMConfig.from_dict(d)).to(device)
            model.load_state_dict(copy.deepcopy(base.state_dict()))
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            losses, times = [], []
            for px, ids, labels in data:
                t = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                    loss = model(
                        px.to(device), ids.to(device), torch.ones_like(ids).to(device), labels=labels.to(device)
                    ).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
                losses.append(loss.item())
            row[impl] = {
                "losses": losses,
                "median_step_ms": 1e3 * sorted(times[2:] or times)[len(times[2:] or times) // 2],
            }
        d, f = row["default"]["losses"], row["fused"]["losses"]
        row["max_loss_diff"] = max(abs(a - b) for a, b in zip(d, f, strict=True))
        row["speed_ratio"] = row["default"]["median_step_ms"] / row["fused"]["median_step_ms"]
        out[name] = row
    return out


def gpu_check() -> dict:
    """Everything, within BUDGET_S; returns what the results file records."""
    from benchmarks.kernels import run

    t0 = time.perf_counter()
    left = lambda: BUDGET_S - (time.perf_counter() - t0)  # noqa: E731
    result = {"budget_s": BUDGET_S, "skipped": []}
    result["correctness"] = {str(dt).split(".")[-1]: correctness(dt) for dt in (torch.float16, torch.bfloat16)}
    for dt in (torch.float16, torch.bfloat16):
        key = f"timings_{str(dt).split('.')[-1]}"
        if left() > 150:
            result[key] = run("cuda", dt)
        else:
            result["skipped"].append(key)
    if left() > 60:
        result["e2e"] = e2e("cuda")
    else:
        result["skipped"].append("e2e")
    result["wall_s"] = time.perf_counter() - t0
    return result
