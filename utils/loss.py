"""YOLOv5's training loss: CIoU box loss, BCE objectness (IoU targets, per-level balance), BCE classes."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from models.yolo import Detect
from utils.boxes import ciou

LEVEL_BALANCE = {3: [4.0, 1.0, 0.4]}  # objectness weight per level; P6 models use the longer default
LEVEL_BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]
NEIGHBOUR_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]]).float() * 0.5


class FocalLoss(nn.Module):
    """Focal modulation of a BCE-with-logits loss (used when fl_gamma > 0)."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.reduction = bce.reduction
        self.bce.reduction = "none"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.bce(pred, target)
        p = torch.sigmoid(pred)
        p_t = target * p + (1 - target) * (1 - p)
        loss = loss * (target * self.alpha + (1 - target) * (1 - self.alpha)) * (1.0 - p_t) ** self.gamma
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


class YoloLoss:
    """Call with the raw level maps and targets (n, 6): image index, class, x, y, w, h (normalised 0-1).

    Returns (total loss x batch size, detached (box, obj, cls) components).
    """

    def __init__(self, head: Detect, hyp: Dict[str, float]):
        device = head.anchors.device
        self.hyp = hyp
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["cls_pw"]], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["obj_pw"]], device=device))
        if hyp.get("fl_gamma", 0) > 0:
            self.bce_cls, self.bce_obj = FocalLoss(self.bce_cls, hyp["fl_gamma"]), FocalLoss(self.bce_obj,
                                                                                          hyp["fl_gamma"])
        eps = hyp.get("label_smoothing", 0.0)
        self.positive, self.negative = 1.0 - 0.5 * eps, 0.5 * eps
        self.balance = LEVEL_BALANCE.get(head.nl, LEVEL_BALANCE_DEFAULT)
        self.na, self.nc, self.nl = head.na, head.nc, head.nl
        self.anchors = head.anchors  # grid units, (nl, na, 2)

    def __call__(self, preds: List[torch.Tensor], targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        device = targets.device
        lcls, lbox, lobj = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                iou = ciou(torch.cat((pxy, pwh), 1), tbox[i]).squeeze()
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = iou.detach().clamp(0).type(tobj.dtype)
                if self.nc > 1:
                    t = torch.full_like(pcls, self.negative)
                    t[range(n), tcls[i]] = self.positive
                    lcls += self.bce_cls(pcls, t)
            lobj += self.bce_obj(pi[..., 4], tobj) * self.balance[i]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        batch = preds[0].shape[0]
        return (lbox + lobj + lcls) * batch, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds: List[torch.Tensor], targets: torch.Tensor):
        """Match each target to anchors whose size ratio is within anchor_t, in its own cell and the two
        nearest neighbouring cells; return per level the classes, boxes (cell-relative), indices, anchors."""
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=device)
        anchor_index = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), anchor_index[..., None]), 2)  # (na, nt, 7)
        g = 0.5
        offsets_table = NEIGHBOUR_OFFSETS.to(device)
        for i in range(self.nl):
            anchors, shape = self.anchors[i], preds[i].shape
            gain[2:6] = torch.tensor(shape, device=device)[[3, 2, 3, 2]].float()
            t = targets * gain
            if nt:
                ratio = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(ratio, 1 / ratio).max(2)[0] < self.hyp["anchor_t"]]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                j, k = ((gxy % 1 < g) & (gxy > 1)).T
                left, m = ((gxi % 1 < g) & (gxi > 1)).T
                mask = torch.stack((torch.ones_like(j), j, k, left, m))
                t = t.repeat((5, 1, 1))[mask]
                offsets = (torch.zeros_like(gxy)[None] + offsets_table[:, None])[mask]
            else:
                t = targets[0]
                offsets = 0
            bc, gxy, gwh, a = t.chunk(4, 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            indices.append((b, a, gj.clamp_(0, shape[2] - 1), gi.clamp_(0, shape[3] - 1)))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
