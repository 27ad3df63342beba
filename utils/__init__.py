"""Engine utilities: data pipeline, boxes and NMS, loss, metrics, checkpoints, export."""
