#!/usr/bin/env bash
# The main job on the built-in demo dataset, on CPU: train, then mine + infer with the trained model.
# Everything is written under demo-run/ (override with DEMO_DIR).
set -uo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo-run}
PY=.venv/bin/python
rm -rf "$DEMO_DIR"

echo "== training on the demo dataset ($DEMO_DIR/train)"
$PY -m ymir.demo "$DEMO_DIR/train" --task training
if ! $PY start.py --in "$DEMO_DIR/train/in" --out "$DEMO_DIR/train/out"; then
  echo "demo: training stopped; see the message above and $DEMO_DIR/train/out/monitor.txt" >&2
  exit 1
fi
echo "demo: model stages in $DEMO_DIR/train/out/models/result.yaml:"
cat "$DEMO_DIR/train/out/models/result.yaml"
