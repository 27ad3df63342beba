"""Non-maximum suppression on YOLOv5 outputs, with YOLOv5's scoring rules (no time limit).

The greedy suppression itself is torchvision's compiled `nms` operator where torchvision is installed and its
kernels load (every GPU image, the test environments), loaded from its library alone: importing the torchvision
package costs about 2 s at every start (it imports torch._dynamo), loading its operators a few milliseconds. The CPU
image may ship without torchvision (the only CPU build of it lives on PyTorch's own index), and then `greedy_nms`
below does the same job in plain torch.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from utils.boxes import box_iou, xywh_to_xyxy

MAX_BOX_SIZE = 7680  # class offset for class-aware NMS in one call: larger than any box
MAX_NMS_INPUT = 30000  # at most this many candidates (best first) enter NMS per image
GREEDY_BLOCK = 512  # candidates resolved together by greedy_nms (a BLOCK x BLOCK IoU matrix at a time)
PREFIX_START = 2  # first_kept first suppresses the best PREFIX_START x max_det candidates ...
PREFIX_GROWTH = 4  # ... and PREFIX_GROWTH times more each time that keeps too few


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Indices of the boxes that greedy NMS keeps, best score first (ties in their given order, as torchvision's
    kernel since 0.12): a box survives unless a kept box with a higher score overlaps it by IoU > iou_thres
    (box_iou without its epsilon has the arithmetic of torchvision's kernel, so both suppress exactly the same
    pairs). Block by block: a block is first cut down by every box kept
    before it (one IoU matrix), then walked in score order, each survivor striking out the block's boxes it
    overlaps (one boolean row each)."""
    order = scores.sort(descending=True, stable=True)[1]  # ties keep their order, as torchvision's kernel
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


def _load_torchvision_operators() -> None:
    """Registers torchvision's compiled operators (torch.ops.torchvision.*) from its library, without running the
    torchvision package's __init__; raises where there is no such library or it does not load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    for name in ("_C_stable", "_C"):  # the library's name in torchvision >= 0.2x, and before
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if (folder / (name + suffix)).is_file():
                torch.ops.load_library(str(folder / (name + suffix)))
                return
    raise ImportError(f"no compiled operators in {folder}")


def _compiled_nms() -> Optional[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]]:
    """torchvision's compiled nms operator where it loads and was built for this torch's CUDA major version (as
    torchvision's own import checks), else None."""
    try:
        _load_torchvision_operators()
        kernel = torch.ops.torchvision.nms
        kernel(torch.zeros((1, 4)), torch.zeros(1), 0.5)
        built_for = int(torch.ops.torchvision._cuda_version())
        if built_for != -1 and torch.version.cuda and built_for // 1000 != int(torch.version.cuda.split(".")[0]):
            return None
    except Exception:  # not installed, or a build whose kernels do not match this torch
        return None
    return kernel


NMS_KERNEL = _compiled_nms() or greedy_nms


def first_kept(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_det: int) -> torch.Tensor:
    """The first `max_det` of NMS_KERNEL's kept indices for candidates sorted by descending score. Greedy NMS
    decides each box by the better-scored boxes alone, so over a prefix of the candidates it keeps exactly what the
    whole run keeps within that prefix: once a prefix keeps max_det boxes, the rest cannot change the answer. The
    kernel's work grows with candidates x kept, so where the candidates are many (validation's 0.001 threshold on
    a young model) the prefix saves most of it; the growing prefixes cost at most 1/(PREFIX_GROWTH - 1) more than
    one whole run where they do not."""
    ranks = torch.arange(len(scores), 0, -1, dtype=torch.float32, device=scores.device)  # strictly decreasing:
    size = PREFIX_START * max_det  # no kernel's own sort can reorder tied candidates between a prefix and the rest
    while True:
        kept = NMS_KERNEL(boxes[:size].float(), ranks[:size], iou_thres)
        if len(kept) >= max_det or size >= len(scores):
            return kept[:max_det]
        size *= PREFIX_GROWTH


@dataclass
class Suppressed:
    """What non-maximum suppression keeps of a batch, per image."""

    detections: List[torch.Tensor]  # (n, 6): x1, y1, x2, y2, score, class; best score first
    indices: List[torch.Tensor]  # (n,): the row of the raw prediction behind each detection
    highest_tie: Optional[List[float]]  # asked for: the highest score two of the image's candidates share (-inf
    # where no two tie); else None


def suppress(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45, multi_label: bool = False,
             agnostic: bool = False, max_det: int = 300, report_ties: bool = False) -> Suppressed:
    """`prediction` is (B, N, 5 + nc): centre-x, centre-y, w, h, objectness, class scores.

    A candidate needs objectness > conf_thres; its score is objectness x class score, which must also exceed
    conf_thres. Single-label keeps the best class; multi-label keeps every class over the threshold. NMS is
    per class unless `agnostic`. Candidates are ordered as the original orders them (its argsort, which puts tied
    scores in no promised order), so with `report_ties`, `highest_tie` tells a caller at or above which threshold
    the order is unambiguous (a scan of the sorted scores that validation and plain inference need not pay for).
    """
    assert 0 <= conf_thres <= 1 and 0 <= iou_thres <= 1
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label &= nc > 1
    candidates = prediction[..., 4] > conf_thres
    out = Suppressed([torch.zeros((0, 6), device=prediction.device)] * bs,
                     [torch.zeros(0, dtype=torch.long, device=prediction.device)] * bs,
                     [-float("inf")] * bs if report_ties else None)
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
        order = x[:, 4].argsort(descending=True)  # as the original orders them, ties included
        if out.highest_tie is not None:
            ranked = x[order, 4]
            tied = ranked[:-1][ranked[1:] == ranked[:-1]]
            if len(tied):
                out.highest_tie[b] = float(tied[0])
        x, index = x[order[:MAX_NMS_INPUT]], index[order[:MAX_NMS_INPUT]]
        offset = x[:, 5:6] * (0 if agnostic else MAX_BOX_SIZE)
        kept = first_kept(x[:, :4] + offset, x[:, 4], iou_thres, max_det)
        out.detections[b], out.indices[b] = x[kept], index[kept]
    return out


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        multi_label: bool = False, agnostic: bool = False, max_det: int = 300,
                        return_indices: bool = False):
    """`suppress`'s detections per image, as the original's function returns them; with `return_indices`, also
    the index in N of the raw prediction behind each detection."""
    kept = suppress(prediction, conf_thres, iou_thres, multi_label, agnostic, max_det)
    return (kept.detections, kept.indices) if return_indices else kept.detections
