"""Tools for people running the executor on their own machine, without the platform: a task folder written as
YMIR writes it, from a dataset or images (`python -m ymir.local.task_folder`), and the built-in demo
(`python -m ymir.local.demo`, `tools/demo.sh`). The tasks never import them."""
