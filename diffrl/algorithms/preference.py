"""Contrastive training of a dual-encoder preference model with hard negatives (pure tensor math).

CLIP's symmetric InfoNCE (Radford et al., arXiv 2103.00020) over a batch of (image, caption) pairs, extended as
PickScore's preference objective (Kirstain et al., arXiv 2305.01569) and NegCLIP's hard negatives (Yuksekgonul et
al., arXiv 2210.01936) are: each row also carries the image of a one-attribute-changed caption and that caption.

- caption -> image: the row's caption must pick its own image among every image of the batch and every
  hard-negative image (the preference a reward needs: the true image above the changed one, for this caption);
- image -> caption: the row's image must pick its own caption among every caption and every hard-negative caption.

Rows whose captions are equal are not each other's negatives (`same` masks them out of both softmaxes).
`blank` images (empty canvases, as sampled early in training or by a collapsed policy) match no caption: they join
every caption's image softmax as negatives, so a reward built on the model never prefers an empty image to a scene.

`pair_weight` adds PickScore's own preference term (Kirstain et al., section 3): for each row, a softmax over just
its two images (the true one and the changed one) given its caption, i.e. -log sigmoid(scale * (s+ - s-)). The
batch softmaxes are dominated by the easy in-batch negatives (another color or shape); this term puts the whole row's
gradient on the one attribute its hard negative changes (a count, a relation, a binding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive_preference_loss(image: Tensor, text: Tensor, neg_image: Tensor, neg_text: Tensor, scale: Tensor,
                                same: Tensor, blank: Tensor | None = None,
                                pair_weight: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """image, text, neg_image, neg_text: unit embeddings [N, D]; scale: the logit scale; same [N, N] bool: rows i, j
    share a caption; blank: unit embeddings [M, D] of images that match no caption (or None). Returns the mean of
    both directions' cross-entropies and, detached, the share of rows whose caption scores its image above its
    hard-negative image (`pair_accuracy`), above every blank image (`blank_accuracy`, with blanks) and the mean
    caption-image cosine. pair_weight: the weight of the two-image preference term (0: CLIP/NegCLIP alone)."""
    n = len(image)
    target = torch.arange(n, device=image.device)
    off_diagonal_same = same & ~torch.eye(n, dtype=torch.bool, device=image.device)
    blocked = torch.cat([off_diagonal_same, torch.zeros_like(off_diagonal_same)], dim=1)
    blanks = blank if blank is not None else image[:0]
    to_image = scale * text @ torch.cat([image, neg_image, blanks]).T  # [N, 2N + M]
    to_text = scale * image @ torch.cat([text, neg_text]).T
    to_image = to_image.masked_fill(torch.cat([blocked, blocked.new_zeros(n, len(blanks))], dim=1), float("-inf"))
    to_text = to_text.masked_fill(blocked, float("-inf"))
    loss = 0.5 * (F.cross_entropy(to_image, target) + F.cross_entropy(to_text, target))
    positive = (text * image).sum(-1)
    negative = (text * neg_image).sum(-1)
    if pair_weight:
        loss = loss + pair_weight * F.softplus(-scale * (positive - negative)).mean()
    with torch.no_grad():
        positive, negative = positive.detach(), negative.detach()
        stats = {"pair_accuracy": (positive > negative).float().mean(), "cosine": positive.mean()}
        if len(blanks):
            stats["blank_accuracy"] = (positive > (text @ blanks.T).max(-1).values).float().mean()
    return loss, stats
