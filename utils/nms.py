"""Non-maximum suppression on YOLOv5 outputs, with YOLOv5's scoring rules (no time limit)."""
from __future__ import annotations

from typing import List

import torch
import torchvision

from utils.boxes import xywh_to_xyxy

MAX_BOX_SIZE = 7680  # class offset for class-aware NMS in one call: larger than any box
MAX_NMS_INPUT = 30000  # at most this many candidates (best first) enter NMS per image


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
        kept = torchvision.ops.nms(x[:, :4] + offset, x[:, 4], iou_thres)[:max_det]
        out[b], out_idx[b] = x[kept], index[kept]
    return (out, out_idx) if return_indices else out

