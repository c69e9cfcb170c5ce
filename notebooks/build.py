"""Writes the notebooks from these cell lists (outputs are not committed; the tests execute them).

Run `python notebooks/build.py` after editing a cell here."""

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

FAST = "import os\nFAST = os.environ.get('LAB_NB_FAST') == '1'  # the test suite sets this: same code, fewer steps\n"

NOTEBOOKS = {
    "01_quickstart.ipynb": [
        new_markdown_cell(
            "# Quickstart: a tiny InstructBLIP on generated scenes\n\n"
            "Build a small InstructBLIP-style model (ViT → instruction-aware Q-Former → Llama), pretrain its "
            "parts, instruction-tune it on procedural scenes, and ask it questions. About two minutes on a laptop "
            "CPU (`LAB_NB_FAST=1` shortens it for the tests)."
        ),
        new_code_cell(
            FAST + "import tempfile, pathlib\nfrom lab.train import build_config, train\n"
            "work = pathlib.Path(tempfile.mkdtemp())\n"
            "steps = dict(vision=20, lm=20, instruct=20) if FAST else dict(vision=300, lm=300, instruct=600)"
        ),
        new_markdown_cell("Stage 0: a CLIP-style vision encoder and a Llama LM that reads scene descriptions."),
        new_code_cell(
            "for stage in ('vision', 'lm'):\n"
            "    train(build_config(stage, quick=True, overrides={'max_steps': steps[stage]}), work / stage, progress=False)"
        ),
        new_markdown_cell("Instruction tuning: only the Q-Former learns; the ViT and the LLM stay frozen."),
        new_code_cell(
            "cfg = build_config('instruct', quick=True, overrides={'max_steps': steps['instruct'], 'optim.lr': 0.002,\n"
            "                   'model.freeze_llm': False})\n"
            "summary = train(cfg, work / 'instruct', init=[work / 'vision', work / 'lm'], progress=False)\n"
            "summary"
        ),
        new_code_cell(
            "import json, matplotlib.pyplot as plt\n"
            "curve = [json.loads(l)['loss'] for l in (work / 'instruct' / 'metrics.jsonl').read_text().splitlines()]\n"
            "plt.plot(curve); plt.xlabel('step'); plt.ylabel('loss'); plt.title('instruction tuning');"
        ),
        new_code_cell(
            "import lab\nfrom lab.data import SceneDataConfig, SceneTasks, load_tokenizer\nfrom lab.eval import answer\n"
            "model = lab.load_pretrained(work / 'instruct'); tok = load_tokenizer(work / 'instruct')\n"
            "samples = [SceneTasks(SceneDataConfig(), 'test')[i] for i in range(6)]\n"
            "replies = answer(model, tok, samples)\n"
            "fig, axes = plt.subplots(1, 6, figsize=(15, 3))\n"
            "for ax, s, r in zip(axes, samples, replies):\n"
            "    ax.imshow(s.image); ax.axis('off')\n"
            "    ax.set_title(f\"{s.turns[0][1].replace('<image> ', '')}\\nref: {s.turns[1][1][:20]}\\nlab: {r[:20]}\", fontsize=7)"
        ),
        new_code_cell(
            "from lab.eval import evaluate_scenes\n"
            "res = evaluate_scenes(model, tok, SceneDataConfig(), per_family=8 if FAST else 64)\n"
            "{k: round(v, 2) for k, v in res['acc'].items()}"
        ),
    ],
    "02_qformer_attention.ipynb": [
        new_markdown_cell(
            "# Where do the queries look?\n\n"
            "InstructBLIP feeds the instruction into the Q-Former, so the same image can be read differently for "
            "different questions. Here we train an instruction-aware and a plain Q-Former briefly and plot each "
            "query's cross-attention over the image patches for one image under two instructions. The plain "
            "Q-Former's maps cannot change with the instruction; the instruction-aware one's can."
        ),
        new_code_cell(
            FAST + "import tempfile, pathlib, torch\nfrom lab.train import build_config, train\n"
            "work = pathlib.Path(tempfile.mkdtemp())\nsteps = 10 if FAST else 200  # ViT, Q-Former and LLM all train from scratch\n"
            "models = {}\n"
            "for aware in (True, False):\n"
            "    cfg = build_config('instruct', quick=True, overrides={'max_steps': steps, "
            "'model.connector.qformer.instruction_aware': aware, 'model.connector.qformer.num_query_tokens': 4})\n"
            "    train(cfg, work / str(aware), progress=False)\n"
            "    models[aware] = work / str(aware)"
        ),
        new_code_cell(
            "import lab, matplotlib.pyplot as plt\n"
            "from einops import rearrange\n"
            "from lab.data import Collator, SceneDataConfig, SceneTasks, load_tokenizer, pixels\n"
            "from lab.models.qformer import cross_attention_maps\n"
            "sample = SceneTasks(SceneDataConfig(scene={'min_objects': 3, 'max_objects': 3}), 'test')[0]\n"
            "shapes = [o.shape for o in sample.scene.objects]\n"
            "instructions = [f'what color is the {shapes[0]} ?', f'what color is the {shapes[-1]} ?']\n"
            "fig, axes = plt.subplots(2, 3, figsize=(9, 6))\n"
            "for row, aware in enumerate((True, False)):\n"
            "    model = lab.load_pretrained(models[aware]); tok = load_tokenizer(models[aware])\n"
            "    axes[row, 0].imshow(sample.image); axes[row, 0].set_title(['instruction-aware', 'plain'][row]); axes[row, 0].axis('off')\n"
            "    for col, text in enumerate(instructions):\n"
            "        ids = torch.tensor([tok.encode(text)]) if aware else None\n"
            "        feats = model.vision(pixels([sample.image]))\n"
            "        attn = cross_attention_maps(model.connector.qformer, feats, ids)[-1][0]  # h nq nk\n"
            "        grid = model.cfg.vision.image_size // model.cfg.vision.patch_size\n"
            "        m = rearrange(attn.mean(0)[:, 1:].mean(0), '(h w) -> h w', h=grid)  # drop CLS\n"
            "        axes[row, col + 1].imshow(m, cmap='magma'); axes[row, col + 1].set_title(text, fontsize=8); axes[row, col + 1].axis('off')\n"
            "fig.tight_layout()"
        ),
    ],
    "03_kernels.ipynb": [
        new_markdown_cell(
            "# The Triton kernels, step by step\n\n"
            "**Q-Former cross-attention with the K/V projection fused in.** For queries $Q$ (`b h nq d`) and image "
            "features $X$ (`b nk dx`), $K = XW_k^T + b_k$, $V = XW_v^T + b_v$ and "
            "$O = \\mathrm{softmax}(QK^T/\\sqrt d)V$. The kernel computes each K/V tile from $X$ on the fly, so the "
            "projected K and V never go to memory; the softmax is online (running max and sum), as in "
            "FlashAttention. The backward recomputes the tiles and accumulates $dW_k, dW_v$ in the same pass.\n\n"
            "**Projector MLP.** $\\mathrm{GELU}(xW_1^T+b_1)W_2^T+b_2$ with bias and exact GELU fused into the "
            "GEMM epilogue.\n\nOn this CPU they run under Triton's interpreter (`TRITON_INTERPRET=1`, set before "
            "Triton is imported); on a GPU the same code compiles."
        ),
        new_code_cell(
            "import os\nos.environ['TRITON_INTERPRET'] = '1'\nimport torch, lab_kernels\nfrom lab_kernels import reference\n"
            "print('backend:', lab_kernels.backend(torch.zeros(1)))"
        ),
        new_code_cell(
            "# the kernels run in fp32 (and bf16/fp16 on GPUs); the reference runs in float64 as ground truth\n"
            "torch.manual_seed(0)\nb, h, nq, nk, dx, dq = 2, 4, 8, 17, 32, 64\n"
            "hq = torch.randn(b, nq, dq, requires_grad=True)\n"
            "x = torch.randn(b, nk, dx, requires_grad=True)\n"
            "wk, wv = (torch.randn(dq, dx, requires_grad=True) for _ in range(2))\n"
            "bk, bv = (torch.randn(dq, requires_grad=True) for _ in range(2))\n"
            "mask = torch.ones(b, nk, dtype=torch.bool); mask[1, -5:] = False\n"
            "before = lab_kernels.launches.copy()\n"
            "out = lab_kernels.projected_cross_attention(hq, x, wk, bk, wv, bv, h, key_padding_mask=mask)\n"
            "print('kernel launches:', lab_kernels.launches - before)\n"
            "inputs64 = [t.detach().double().requires_grad_() for t in (hq, x, wk, bk, wv, bv)]\n"
            "ref = reference.projected_cross_attention(*inputs64, h, key_padding_mask=mask)\n"
            "print('max |triton - reference| (forward):', (out.double() - ref).abs().max().item())\n"
            "g = torch.randn_like(out)\n"
            "grads = torch.autograd.grad(out, (hq, x, wk, bk), g)\n"
            "grads_ref = torch.autograd.grad(ref, inputs64[:4], g.double())\n"
            "for name, a, r in zip(('dq', 'dx', 'dWk', 'dbk'), grads, grads_ref, strict=True):\n"
            "    print(f'max |d| {name}:', (a.double() - r).abs().max().item())\n"
            "assert (out.double() - ref).abs().max() < 1e-3"
        ),
        new_code_cell(
            "w1, b1, w2, b2 = torch.randn(64, 32), torch.randn(64), torch.randn(48, 64), torch.randn(48)\n"
            "feats = torch.randn(2, 17, 32)\n"
            "ref = reference.mlp_projector(*(t.double() for t in (feats, w1, b1, w2, b2)))\n"
            "err = (lab_kernels.mlp_projector(feats, w1, b1, w2, b2).double() - ref).abs().max()\n"
            "print('MLP projector max error vs float64:', err.item()); assert err < 1e-3"
        ),
        new_markdown_cell(
            "## Benchmark results\n\nFrom `benchmarks/results/` (CPU interpreter timings measure "
            "correctness plumbing, not speed; GPU files appear there when a GPU run was made)."
        ),
        new_code_cell(
            "import json, pathlib, matplotlib.pyplot as plt\n"
            "files = sorted(pathlib.Path('../benchmarks/results').glob('kernels_*.json'))\n"
            "for f in files:\n"
            "    data = json.loads(f.read_text())\n"
            "    data = {**data, **(data.get('timings_bfloat16') or data.get('timings_float16') or {})}  # --gpu-check files\n"
            "    if 'attention' not in data:\n"
            "        continue\n"
            "    rows = [(r['impl'], r['fwd']['ms'], r['fwd+bwd']['ms']) for r in data['attention']]\n"
            "    fig, ax = plt.subplots(figsize=(6, 2.5))\n"
            "    ax.barh([r[0] for r in rows], [r[2] for r in rows], label='fwd+bwd')\n"
            "    ax.barh([r[0] for r in rows], [r[1] for r in rows], label='fwd')\n"
            "    ax.set_xlabel('ms'); ax.set_title(f\"{f.name}: {data['device']}\"); ax.legend()\n"
            "files"
        ),
    ],
    "04_ablation_results.ipynb": [
        new_markdown_cell(
            "# Ablation results beside the papers\n\nLoads `ablations/results/*/results.json` (full mode, written by "
            "`python -m ablations`; the quick-mode ones under `quick/` when full mode has not run) and plots each comparison's variants with the paper's reported "
            "direction and our verdict."
        ),
        new_code_cell(
            "import json, pathlib, matplotlib.pyplot as plt\n"
            "root = pathlib.Path('../ablations/results')\n"
            "files = sorted(root.glob('*/results.json')) or sorted(root.glob('quick/*/results.json'))  # full mode, else quick\n"
            "results = {p.parent.name: json.loads(p.read_text()) for p in files}\n"
            "results = {k: r for k, r in results.items() if 'sweep' not in r}  # the suite (held_out/: below)\n"
            "list(results)"
        ),
        new_code_cell(
            "for name, r in results.items():\n"
            "    names = list(r['summary'])\n"
            "    fig, ax = plt.subplots(figsize=(7, 2.8))\n"
            "    for j, metric in enumerate(('held_in_acc', 'held_out_acc')):\n"
            "        ax.bar([i + (j - 0.5) * 0.4 for i in range(len(names))], [r['summary'][n][metric]['mean'] for n in names],\n"
            "               0.4, yerr=[r['summary'][n][metric]['std'] for n in names], capsize=3, label=metric)\n"
            "    ax.set_xticks(range(len(names)), names, rotation=25, ha='right', fontsize=7); ax.set_ylim(0, 1)\n"
            "    ax.set_title(name); ax.legend(fontsize=7)\n"
            "    for v in r['verdicts']:\n"
            "        print(f\"{name}: {v['claim']}\\n   paper: {r['paper'].get(v['claim'], '')}\\n   ours: {v['diff_mean']:+.3f} ± {v['diff_se']:.3f} -> {v['verdict']}\")"
        ),
        new_markdown_cell(
            "## Held-out over stage-0 LMs\n\n"
            "`python -m ablations held_out`: one frozen-LLM recipe on an axis over stage-0 LMs, each model's held-out answers "
            "read from the image's soft tokens, through its own caption, and from the true caption; and the same with "
            "hand-off distillation (`handoff_weight`). Where *through words* is far above *from the image*, the content "
            "crossed the connector and the hand-off to the LLM lost it.\n"
        ),
        new_code_cell(
            "f = root / 'held_out' / 'results.json'\n"
            "if f.exists():\n"
            "    sweep = json.loads(f.read_text())['sweep']\n"
            "    held_out = lambda rec, way: sum(rec[way].values()) / len(rec[way])\n"
            "    arms = {'plain': sweep['records'], f\"hand-off {sweep['handoff']['weight']:g}\": sweep['handoff']['records']}\n"
            "    fig, ax = plt.subplots(figsize=(7, 2.8))\n"
            "    bars = [(arm, way) for arm in arms for way in ('direct', 'words')] + [('plain', 'caption')]\n"
            "    for j, (arm, way) in enumerate(bars):\n"
            "        xs = [i + (j - 2) * 0.16 for i in range(sweep['lms'])]\n"
            "        ax.bar(xs, [held_out(r, way) for r in arms[arm]], 0.16, label=f'{arm}: {way}')\n"
            "    ax.axhline(0.70, color='k', lw=0.8, ls='--'); ax.set_ylim(0.4, 0.8)\n"
            "    ax.set_xticks(range(sweep['lms']), [f'LM seed {r[\"lm_seed\"]}' for r in sweep['records']])\n"
            "    ax.set_ylabel('held-out (ranked)'); ax.legend(fontsize=6, ncol=2)\n"
            "    print('paired, hand-off minus plain (mean, s.e.):', sweep['handoff']['paired'])\n"
        ),
    ],
}

if __name__ == "__main__":
    import pathlib

    here = pathlib.Path(__file__).parent
    for name, cells in NOTEBOOKS.items():
        for i, cell in enumerate(cells):  # stable ids: a rebuild changes only the cells that changed
            cell["id"] = f"{name.split('_')[0]}-{i}"
        nb = new_notebook(
            cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
        )
        nbformat.write(nb, here / name)
