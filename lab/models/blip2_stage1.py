"""BLIP-2 stage 1: teach the Q-Former's queries to extract text-relevant visual features.

Three losses share one Q-Former (with `text_input=True`), each with its own attention mask:
- ITC, image-text contrastive: queries and text are encoded separately; an image-text score
  is the best match over queries.
- ITM, image-text matching: queries and text attend to each other; a binary head says
  "matched". Negatives are hard ones, sampled from the ITC similarities.
- ITG, image-grounded generation: text tokens read all queries, and each other causally;
  queries never see the text, so everything the caption needs must pass through them.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lab.config import Config
from lab.models.attention import keep_bias
from lab.models.qformer import QFormer


@dataclasses.dataclass
class Stage1Config(Config):
    embed_dim: int = 64
    init_temperature: float = 0.07


class Stage1Heads(nn.Module):
    def __init__(self, cfg: Stage1Config, qformer_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.vision_proj = nn.Linear(qformer_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(qformer_dim, cfg.embed_dim)
        self.itm_head = nn.Linear(qformer_dim, 2)
        self.lm_head = nn.Linear(qformer_dim, vocab_size)
        self.temp = nn.Parameter(torch.tensor(cfg.init_temperature))

    def losses(self, qformer: QFormer, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """image features `b nk dv`, caption ids `b t` starting with bos (the [CLS] slot)."""
        if not qformer.cfg.text_input:
            raise ValueError("BLIP-2 stage 1 needs a Q-Former with qformer.text_input=True")
        b, nq = ids.shape[0], qformer.cfg.num_query_tokens
        if b < 2:
            raise ValueError("stage 1 needs at least 2 image-text pairs per batch (contrastive negatives)")
        queries = qformer.query_tokens.expand(b, -1, -1)
        text = qformer.embed_text(ids)
        temp = self.temp.clamp(0.001, 0.5)

        # ITC
        q_out = qformer.encode(queries, image, nq)
        img = F.normalize(self.vision_proj(q_out), dim=-1)  # b nq e
        t_out = qformer.encode(text, None, 0, mask.bool())
        txt = F.normalize(self.text_proj(t_out[:, 0]), dim=-1)  # b e
        sim = torch.einsum("iqe,te->itq", img, txt).amax(-1)  # image i vs text t
        target = torch.arange(b, device=ids.device)
        itc = (F.cross_entropy(sim / temp, target) + F.cross_entropy(sim.T / temp, target)) / 2

        # ITM, with one hard negative text per image and one hard negative image per text
        with torch.no_grad():
            eye = torch.eye(b, dtype=torch.bool, device=ids.device)
            w_i2t = torch.softmax(sim / temp, 1).masked_fill(eye, 0) + 1e-9 * ~eye
            w_t2i = torch.softmax(sim.T / temp, 1).masked_fill(eye, 0) + 1e-9 * ~eye
            neg_text = torch.multinomial(w_i2t, 1)[:, 0]
            neg_image = torch.multinomial(w_t2i, 1)[:, 0]
        img_all = torch.cat([image, image, image[neg_image]])
        txt_all = torch.cat([text, text[neg_text], text])
        mask_all = torch.cat([mask, mask[neg_text], mask]).bool()
        keep = torch.cat([torch.ones(3 * b, nq, dtype=torch.bool, device=ids.device), mask_all], 1)
        joint = qformer.encode(torch.cat([queries.repeat(3, 1, 1), txt_all], 1), img_all, nq, keep)
        itm_logits = self.itm_head(joint[:, :nq]).mean(1)
        itm_labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(ids.device)
        itm = F.cross_entropy(itm_logits, itm_labels)

        # ITG: the queries attend to each other only, the text to the queries and causally to itself
        t = ids.shape[1]
        allowed = torch.ones(nq + t, nq + t, dtype=torch.bool, device=ids.device).tril()
        allowed[:nq, :nq] = True
        keys = torch.cat([torch.ones(b, nq, dtype=torch.bool, device=ids.device), mask.bool()], 1)
        bias = keep_bias(allowed[None] & keys[:, None, :], text.dtype)  # b n n
        gen = qformer.encode(torch.cat([queries, text], 1), image, nq, bias[:, None])
        logits = self.lm_head(gen[:, nq:-1])
        labels = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)
        itg = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return {"itc": itc, "itm": itm, "itg": itg}
