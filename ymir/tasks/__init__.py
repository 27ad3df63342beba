"""The three YMIR tasks: training, mining and inference."""
