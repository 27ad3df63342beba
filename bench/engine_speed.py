"""Our engine against the original YOLOv5 v7.0 (the test oracle, PyPI yolov5==7.0.14) on this machine, in one run.

Forward + NMS for yolov5n / yolov5s at 320 and 640, batch 1 and 8, and the training step (forward, loss,
backward, SGD) at batch 8. Inference is the product's CPU path (onnxruntime, as the tasks run it), with our
torch path beside it. The sides take turns case by case, each in a fresh process with 2 threads, on the same
weights and the same images; the ratio is ours / oracle in images per second (higher is better).

    .venv/bin/python bench/engine_speed.py [--seconds 6] [--rounds 2] [--quick] [--only infer|train]
                                                 [--case yolov5s/320/8]
"""
import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.yolo import DetectionModel
from utils.data.letterbox import letterbox
from ymir.local.demo import draw_image

REPO = Path(__file__).resolve().parent.parent

PYTHONS = {"ours": REPO / ".venv" / "bin" / "python", "ours-torch": REPO / ".venv" / "bin" / "python",
           "oracle": REPO / ".venvs" / "oracle" / "bin" / "python"}
INFER_CASES = [("yolov5n", 320, 1), ("yolov5n", 320, 8), ("yolov5n", 640, 1), ("yolov5n", 640, 8),
               ("yolov5s", 320, 1), ("yolov5s", 320, 8), ("yolov5s", 640, 1), ("yolov5s", 640, 8)]
TRAIN_CASES = [("yolov5n", 320, 8), ("yolov5s", 320, 8), ("yolov5n", 640, 8)]


def prepare(data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    import cv2

    pictures = [cv2.imdecode(np.frombuffer(draw_image(rng, (480, 640), 3).jpeg, np.uint8), cv2.IMREAD_COLOR)
                for _ in range(8)]
    for size in (320, 640):
        boxed = [letterbox(p, size, auto=False)[0][..., ::-1].transpose(2, 0, 1) for p in pictures]
        torch.save(torch.from_numpy(np.ascontiguousarray(np.stack(boxed))), data_dir / f"images_{size}.pt")
    for name in ("yolov5n", "yolov5s"):
        torch.manual_seed(0)
        torch.save(DetectionModel(name, nc=80).state_dict(), data_dir / f"{name}.pt")
    for batch in (1, 8):
        g = torch.Generator().manual_seed(batch)
        n = 6 * batch
        targets = torch.cat([torch.arange(batch).repeat_interleave(6)[:, None].float(),
                             torch.randint(0, 80, (n, 1), generator=g).float(),
                             torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1)
        torch.save(targets, data_dir / f"targets_{batch}.pt")


def run(side, kind, case, seconds, data_dir):
    name, size, batch = case
    out = subprocess.run([str(PYTHONS[side]), str(REPO / "bench" / "engine_worker.py"), side, kind, name, str(size),
                          str(batch), str(seconds), str(data_dir)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="yolov5n at 320 only")
    parser.add_argument("--only", choices=("infer", "train"), help="one kind of case")
    parser.add_argument("--case", help="one model/size/batch, e.g. yolov5s/320/8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        prepare(data_dir)
        rows = [("infer", c) for c in INFER_CASES] + [("train", c) for c in TRAIN_CASES]
        if args.quick:
            rows = [(k, c) for k, c in rows if c[0] == "yolov5n" and c[1] == 320]
        if args.only:
            rows = [(k, c) for k, c in rows if k == args.only]
        if args.case:
            rows = [(k, c) for k, c in rows if "/".join(map(str, c)) == args.case]
            if not rows:
                parser.error(f"no case {args.case}: one of {sorted({'/'.join(map(str, c)) for c in INFER_CASES})}")
        print("| task | model | size | batch | ours img/s | oracle img/s | ratio | ours in torch img/s | ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
        for kind, case in rows:
            sides = ["ours", "oracle"] + (["ours-torch"] if kind == "infer" else [])
            results = {side: [] for side in sides}
            for r in range(args.rounds):  # rotate who goes first, to share the machine's drift
                for side in sides[r % len(sides):] + sides[:r % len(sides)]:
                    results[side].append(run(side, kind, case, args.seconds, data_dir))
            speed = {side: statistics.median(values) for side, values in results.items()}
            ours, oracle = speed["ours"], speed["oracle"]
            torch_path = f"{speed['ours-torch']:.2f} | {speed['ours-torch'] / oracle:.2f}x" if kind == "infer" \
                else "- | -"
            print(f"| {kind} | {case[0]} | {case[1]} | {case[2]} | {ours:.2f} | {oracle:.2f} | {ours / oracle:.2f}x | "
                  f"{torch_path} |", flush=True)


if __name__ == "__main__":
    main()
