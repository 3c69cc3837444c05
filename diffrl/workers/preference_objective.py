"""The learner objective of the learned preference reward (`diffrl.algorithms.preference`): the whole dual encoder
trains (both towers and the temperature) on rows of (image, caption, hard-negative image, hard-negative caption);
the "eval" EMA shadow is evaluated and saved, as in pretraining."""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.algorithms.preference import contrastive_preference_loss
from diffrl.workers.objective_base import Models, Objective


class PreferenceContrastiveObjective(Objective):
    needs_reference = False
    advantages = None
    trains = "model"
    conditioning = False

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        start, decay = cfg["ema_start"], cfg["ema_decay"]
        self.shadows = {"eval": lambda step: decay if step > start else 0.0}
        self.pair_weight = float(cfg.get("pair_weight", 0.0))

    def rows(self, batch, step: int) -> dict[str, Tensor]:
        return {"index": torch.arange(len(batch)), "image": batch.image, "ids": batch.ids,
                "neg_image": batch.neg_image, "neg_ids": batch.neg_ids, "blank": batch.blank}

    def loss(self, models: Models, rows: dict[str, Tensor], cond=None) -> tuple[Tensor, dict[str, Tensor]]:
        model = models.trained()
        ids, neg_ids = rows["ids"], rows["neg_ids"]
        vocab = model.token.num_embeddings
        if int(max(ids.max(), neg_ids.max())) >= vocab:
            raise ValueError(f"token ids reach {int(max(ids.max(), neg_ids.max()))} but the model has {vocab} words: "
                             "model.path was trained on another vocabulary")
        same = (ids[:, None, :] == ids[None, :, :]).all(-1)
        return contrastive_preference_loss(model.embed_images(rows["image"]), model.embed_texts(ids),
                                           model.embed_images(rows["neg_image"]), model.embed_texts(neg_ids),
                                           model.scale(), same, model.embed_images(rows["blank"]),
                                           pair_weight=self.pair_weight)
