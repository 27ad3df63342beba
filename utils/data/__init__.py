"""The data pipeline: reading images, letterboxing, YOLOv5's augmentations, the training and validation
datasets, and the image-weighted sampler."""
