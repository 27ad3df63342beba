"""The YOLOv5 architecture: building blocks, the yaml parser and the ten shipped architectures."""
