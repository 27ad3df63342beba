#!/usr/bin/env bash
# The main job on the built-in demo dataset, on CPU: train, then mine + infer with the trained model, as YMIR
# would run them. Everything is written under demo-run/ (override with DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo-run}
PY=.venv/bin/python
rm -rf "$DEMO_DIR"

echo "== 1/2 training yolov5n from scratch on the demo dataset ($DEMO_DIR/train; official weights are bundled in the image only)"
$PY -m ymir.demo "$DEMO_DIR/train" --task training
$PY start.py --in "$DEMO_DIR/train/in" --out "$DEMO_DIR/train/out"

echo "== 2/2 mining (aldd) + inference with the trained model ($DEMO_DIR/mine)"
$PY -m ymir.demo "$DEMO_DIR/mine" --task mining+infer --model "$DEMO_DIR/train/out/models/best"
$PY start.py --in "$DEMO_DIR/mine/in" --out "$DEMO_DIR/mine/out"

$PY - "$DEMO_DIR" <<'PY'
import json, sys, yaml
root = sys.argv[1]
result = yaml.safe_load(open(f"{root}/train/out/models/result.yaml"))
best = result["model_stages"][result["best_stage_name"]]
print(f"\nmodel: {root}/train/out/models/{result['best_stage_name']}/ {best['files']}")
print(f"  mAP@0.5 {best['mAP']:.3f}   mAP@0.5:0.95 {best['mAP50_95']:.3f}   (TensorBoard: {root}/train/out/tensorboard)")
lines = open(f"{root}/mine/out/result.tsv").read().splitlines()
boxes = sum(len(v["boxes"]) for v in json.load(open(f"{root}/mine/out/infer-result.json"))["detection"].values())
print(f"mining: {len(lines)} candidates ranked in {root}/mine/out/result.tsv; most valuable: {lines[0]}")
print(f"inference: {boxes} boxes in {root}/mine/out/infer-result.json")
PY
