"""Non-maximum suppression on YOLOv5 outputs, with YOLOv5's scoring rules (no time limit).

The greedy suppression itself is torchvision's compiled `nms` where torchvision is installed and its kernels
load (every GPU image, the test environments); the CPU image may ship without torchvision (the only CPU build
of it lives on PyTorch's own index), and then `greedy_nms` below does the same job in plain torch.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import torch

from utils.boxes import box_iou, xywh_to_xyxy

MAX_BOX_SIZE = 7680  # class offset for class-aware NMS in one call: larger than any box
MAX_NMS_INPUT = 30000  # at most this many candidates (best first) enter NMS per image
GREEDY_BLOCK = 512  # candidates resolved together by greedy_nms (a BLOCK x BLOCK IoU matrix at a time)


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Indices of the boxes that greedy NMS keeps, best score first: a box survives unless a kept box with a
    higher score overlaps it by IoU > iou_thres (box_iou without its epsilon has the arithmetic of torchvision's
    kernel, so both suppress exactly the same pairs). Block by block: a block is first cut down by every box kept
    before it (one IoU matrix), then walked in score order, each survivor striking out the block's boxes it
    overlaps (one boolean row each)."""
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    kept_parts: List[torch.Tensor] = []
    kept_boxes = boxes[:0]
    for start in range(0, boxes.shape[0], GREEDY_BLOCK):
        block = boxes[start:start + GREEDY_BLOCK]
        removed = (box_iou(kept_boxes, block, eps=0.0) > iou_thres).any(0).cpu().numpy()
        overlaps = (box_iou(block, block, eps=0.0) > iou_thres).triu(diagonal=1).cpu().numpy()
        for i in range(block.shape[0]):
            if not removed[i]:
                removed |= overlaps[i]
        index = torch.from_numpy(np.flatnonzero(~removed)).to(boxes.device)
        kept_parts.append(index + start)
        kept_boxes = torch.cat((kept_boxes, block[index]))
    return order[torch.cat(kept_parts)] if kept_parts else order[:0]


def _compiled_nms() -> Optional[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]]:
    """torchvision's nms when torchvision is installed and its compiled operators load, else None."""
    try:
        import torchvision

        torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
    except Exception:  # not installed, or a build whose kernels do not match this torch
        return None
    return torchvision.ops.nms


NMS_KERNEL = _compiled_nms() or greedy_nms


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        multi_label: bool = False, agnostic: bool = False, max_det: int = 300,
                        return_indices: bool = False):
    """`prediction` is (B, N, 5 + nc): centre-x, centre-y, w, h, objectness, class scores.

    A candidate needs objectness > conf_thres; its score is objectness x class score, which must also exceed
    conf_thres. Single-label keeps the best class; multi-label keeps every class over the threshold. NMS is
    per class unless `agnostic`. Returns per image an (n, 6) tensor: x1, y1, x2, y2, score, class; with
    `return_indices`, also the index in N of the raw prediction behind each detection.
    """
    assert 0 <= conf_thres <= 1 and 0 <= iou_thres <= 1
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label &= nc > 1
    candidates = prediction[..., 4] > conf_thres
    out: List[torch.Tensor] = [torch.zeros((0, 6), device=prediction.device)] * bs
    out_idx: List[torch.Tensor] = [torch.zeros(0, dtype=torch.long, device=prediction.device)] * bs
    for b in range(bs):
        index = candidates[b].nonzero(as_tuple=False).view(-1)
        x = prediction[b, index]
        if not x.shape[0]:
            continue
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh_to_xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
            index = index[i]
        else:
            conf, j = scores.max(1, keepdim=True)
            keep = conf.view(-1) > conf_thres
            x = torch.cat((box, conf, j.float()), 1)[keep]
            index = index[keep]
        if not x.shape[0]:
            continue
        order = x[:, 4].argsort(descending=True)[:MAX_NMS_INPUT]
        x, index = x[order], index[order]
        offset = x[:, 5:6] * (0 if agnostic else MAX_BOX_SIZE)
        kept = NMS_KERNEL(x[:, :4] + offset, x[:, 4], iou_thres)[:max_det]
        out[b], out_idx[b] = x[kept], index[kept]
    return (out, out_idx) if return_indices else out

