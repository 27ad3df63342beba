"""The YMIR side of the executor: protocol files in, tasks, protocol files out."""
