#!/usr/bin/env bash
# The main job on the built-in demo dataset, on CPU: train, then mine + infer with the trained model, as YMIR
# would run them. Everything is written under demo-run/ (override with DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo-run}
PY=.venv/bin/python
rm -rf "$DEMO_DIR"
started=$SECONDS

echo "== 1/2 training yolov5n from scratch on the demo dataset ($DEMO_DIR/train; official weights are bundled in the image only)"
$PY -m ymir.local.demo "$DEMO_DIR/train" --task training
$PY start.py --in "$DEMO_DIR/train/in" --out "$DEMO_DIR/train/out"

echo "== 2/2 mining (aldd) + inference with the trained model ($DEMO_DIR/mine)"
$PY -m ymir.local.demo "$DEMO_DIR/mine" --task mining+infer --model "$DEMO_DIR/train/out/models/best"
$PY start.py --in "$DEMO_DIR/mine/in" --out "$DEMO_DIR/mine/out"

echo
$PY -m ymir.local.demo "$DEMO_DIR" --summary --seconds $((SECONDS - started))
