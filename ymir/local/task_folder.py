"""A task folder as YMIR writes it (`in/` and `out/`), made from images and boxes, or from a dataset on disk.

`python -m ymir.local.task_folder ROOT --task training --images DIR` turns a folder of images with YOLO txt labels
(or Pascal VOC XML, `--labels voc`) into ROOT/in and ROOT/out; `--task mining+infer --images DIR --model STAGE`
does the same for unlabelled images and a trained model stage. Then `python start.py --in ROOT/in --out ROOT/out`
runs the task. The folder is laid out as YMIR lays it out (images and annotations named by the image's SHA-1 under
in/assets and in/annotations; the README's "Write a task by hand" section describes each file's format);
ROOT/sources.tsv maps each image's path in the task to the file it came from.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import yaml

from ymir.local.dataset_folder import (
    IMAGE_SUFFIXES,
    LABEL_LAYOUT,
    Box,
    DatasetFolderError,
    LabelledImage,
    dataset_class_names,
    image_files,
    names_option,
    read_dataset_folder,
    split_train_val,
)

TASKS = ("training", "mining", "infer", "mining+infer")
DEFAULT_TASK_ID = "t0000001000001local0001700000000"


def ark_text(boxes: Sequence[Box]) -> str:
    """det-ark: one `class, xmin, ymin, xmax, ymax, quality, angle` line per box."""
    return "".join(f"{c}, {x1}, {y1}, {x2}, {y2}, -1.0, 0.0\n" for c, x1, y1, x2, y2 in boxes)


def voc_text(image_path: str, width: int, height: int, boxes: Sequence[Box], class_names: Sequence[str]) -> str:
    """det-voc: YMIR's single-line VOC-like XML, classes by name."""
    objects = "".join(
        f"<object><name>{class_names[c]}</name><pose>unknown</pose><truncated>unknown</truncated>"
        f"<occluded>0</occluded><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        f"<rotate_angle>0.0</rotate_angle></bndbox><difficult>0</difficult><confidence>-1.0</confidence></object>"
        for c, x1, y1, x2, y2 in boxes)
    return (f"<annotation><folder>folder</folder><filename>{image_path}</filename><source><database>unknown"
            f"</database></source><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objects}</annotation>")


def write_asset(in_dir: Path, data: bytes, ext: str = "jpg") -> str:
    """Store bytes as YMIR does (`assets/<last 2 hex>/<sha1>.<ext>`); return the container path."""
    sha1 = hashlib.sha1(data).hexdigest()
    rel = f"assets/{sha1[-2:]}/{sha1}.{ext}"
    (in_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (in_dir / rel).write_bytes(data)
    return f"/in/{rel}"


def env_yaml(task: str, task_id: str) -> dict:
    """env.yaml as the platform writes it for `task`."""
    run_training = task == "training"
    return {
        "protocol_version": "1.1.0",
        "task_id": task_id,
        "run_training": run_training,
        "run_mining": "mining" in task,
        "run_infer": "infer" in task,
        "input": {
            "root_dir": "/in", "assets_dir": "/in/assets", "annotations_dir": "/in/annotations",
            "models_dir": "/in/models", "config_file": "/in/config.yaml",
            "training_index_file": "/in/train-index.tsv" if run_training else "",
            "val_index_file": "/in/val-index.tsv" if run_training else "",
            "candidate_index_file": "" if run_training else "/in/candidate-index.tsv",
        },
        "output": {
            "root_dir": "/out", "models_dir": "/out/models", "tensorboard_dir": "/out/tensorboard",
            "training_result_file": "/out/models/result.yaml", "mining_result_file": "/out/result.tsv",
            "infer_result_file": "/out/infer-result.json", "monitor_file": "/out/monitor.txt",
            "executor_log_file": "/out/ymir-executor-out.log",
        },
    }


def _write_labelled(in_dir: Path, split: str, images: Iterable[LabelledImage], class_names: Sequence[str],
                    annotation_format: str, sources: List[str]) -> None:
    lines = []
    for image in images:
        image_path = write_asset(in_dir, image.data, image.suffix)
        sources.append(f"{image_path}\t{image.source}\n")
        sha1 = Path(image_path).stem
        ext = "txt" if annotation_format == "ark" else "xml"
        anno_rel = f"annotations/{sha1[-2:]}/{sha1}.{ext}"
        (in_dir / anno_rel).parent.mkdir(parents=True, exist_ok=True)
        text = ark_text(image.boxes) if annotation_format == "ark" else voc_text(
            image_path, image.width, image.height, image.boxes, class_names)
        (in_dir / anno_rel).write_text(text)
        lines.append(f"{image_path}\t/in/{anno_rel}\n")
    (in_dir / f"{split}-index.tsv").write_text("".join(lines))


def hand_over_model(in_dir: Path, stage_dir: Path) -> List[str]:
    """Copy a trained stage folder to in/models/<stage>/ as YMIR does; return the container paths of its files."""
    stage = in_dir / "models" / stage_dir.name
    stage.mkdir(parents=True, exist_ok=True)
    paths = []
    for file in sorted(p for p in stage_dir.iterdir() if p.is_file()):
        shutil.copy(file, stage / file.name)
        paths.append(f"/in/models/{stage_dir.name}/{file.name}")
    return paths


def write_task_folder(root: Path, task: str, class_names: Sequence[str], *, train: Iterable[LabelledImage] = (),
                      val: Iterable[LabelledImage] = (), candidates: Iterable[LabelledImage] = (),
                      model_stage: Optional[Path] = None, config: Optional[dict] = None,
                      annotation_format: str = "ark", task_id: str = DEFAULT_TASK_ID) -> Path:
    """Write ROOT/in (env.yaml, config.yaml, assets, annotations, index files, models) and an empty ROOT/out.

    config.yaml holds the keys the platform adds (task_id, class_names, gpu_id, gpu_count, export_format or
    model_params_path) and then `config`; everything else comes from the templates' defaults."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    root = Path(root)
    in_dir, out_dir = root / "in", root / "out"
    for sub in ("models", "annotations", "assets"):
        (in_dir / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("models", "tensorboard"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    settings = {"task_id": task_id, "class_names": list(class_names), "gpu_id": "", "gpu_count": 0}
    sources: List[str] = []
    if task == "training":
        settings["export_format"] = f"{annotation_format}:raw"
        _write_labelled(in_dir, "train", train, class_names, annotation_format, sources)
        _write_labelled(in_dir, "val", val, class_names, annotation_format, sources)
    else:
        lines = []
        for image in candidates:
            lines.append(write_asset(in_dir, image.data, image.suffix))
            sources.append(f"{lines[-1]}\t{image.source}\n")
        (in_dir / "candidate-index.tsv").write_text("".join(f"{line}\n" for line in lines))
        if model_stage is not None:
            settings["model_params_path"] = hand_over_model(in_dir, Path(model_stage))
    if any(line.rstrip("\n").split("\t")[1] for line in sources):
        (root / "sources.tsv").write_text("".join(sources))
    settings.update(config or {})
    (in_dir / "config.yaml").write_text(yaml.safe_dump(settings))
    (in_dir / "env.yaml").write_text(yaml.safe_dump(env_yaml(task, task_id)))
    return root


def parse_settings(pairs: Sequence[str]) -> Dict[str, object]:
    """`--set epochs=30 --set model=yolov5s`: values parsed as YAML (numbers, booleans, lists)."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DatasetFolderError(f"--set expects key=value, got {pair!r}")
        settings[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return settings


def model_class_names(stage: Path) -> List[str]:
    from utils.checkpoint import read_checkpoint
    from ymir.weights import choose_weights

    weights = choose_weights(sorted(stage.iterdir()), None)
    if weights is None:
        raise DatasetFolderError(f"no .pt weights in {stage}: --model takes a stage folder, such as "
                                 "out/models/best")
    return list(read_checkpoint(weights).names)


def local_task_id() -> str:
    """A task id of its own per folder made (YMIR's are unique too)."""
    return f"t{time.strftime('%Y%m%d%H%M%S')}local{os.getpid()}"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ymir.local.task_folder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the task folder to write (ROOT/in, ROOT/out); must not exist")
    parser.add_argument("--task", choices=TASKS, default="training", help="default: training")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--labels", choices=("yolo", "voc"), default="yolo",
                        help="training: YOLO txt (labels/ beside images/, or beside each image) or VOC XML "
                             "(Annotations/ beside JPEGImages/, or beside each image)")
    parser.add_argument("--val-images", type=Path, help="training: a separate validation folder")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="training without --val-images: the share of images held out for validation")
    parser.add_argument("--names", help="class names: a file (one per line) or 'cat,dog'; default: classes.txt "
                                        "or data.yaml beside the images (YOLO), the XMLs' names (VOC), or the "
                                        "model's names (mining, inference)")
    parser.add_argument("--model", type=Path, help="mining / inference: a trained stage folder (out/models/<stage>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config.yaml value (repeatable), e.g. --set epochs=30 --set model=yolov5s")
    return parser.parse_args(argv)


def build_from_dataset(args: argparse.Namespace) -> str:
    """Write the task folder the arguments describe; return a summary for the user."""
    if args.root.exists() and any(args.root.iterdir()):
        raise DatasetFolderError(f"{args.root} exists and is not empty: give a new folder")
    if not args.images.is_dir():
        raise DatasetFolderError(f"--images {args.images} is not a folder")
    config = parse_settings(args.set)
    if args.task == "training":
        return _build_training(args, config)
    if args.model is None or not args.model.is_dir():
        raise DatasetFolderError("mining and inference need --model: a trained stage folder (out/models/<stage>)")
    names = names_option(args.names) if args.names else model_class_names(args.model)
    candidates = []
    for path in image_files(args.images):
        candidates.append(LabelledImage(path.read_bytes(), suffix=path.suffix.lower().lstrip("."), source=str(path)))
    if not candidates:
        raise DatasetFolderError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {args.images}")
    write_task_folder(args.root, args.task, names, candidates=candidates, model_stage=args.model, config=config,
                      task_id=local_task_id())
    return f"{len(candidates)} candidate images, model {args.model}, classes {names}"


def _build_training(args: argparse.Namespace, config: dict) -> str:
    names = dataset_class_names(args.images, args.labels, args.names)
    suffix, (image_folder, label_folder) = LABEL_LAYOUT[args.labels]
    layout = f"{args.labels} labels: {label_folder}/*{suffix} beside {image_folder}/, or beside each image"
    if not names:
        raise DatasetFolderError(f"no class names: give --names (a file with one per line, or 'cat,dog'), or put "
                                 f"classes.txt beside the images (looked for {layout}; another format: --labels)")
    seen: Dict[str, Path] = {}
    images, report = read_dataset_folder(args.images, args.labels, names, seen)
    if images and report.without_labels == len(images):
        raise DatasetFolderError(f"no label file for any of the {len(images)} images (looked for {layout}; "
                                 f"another format: --labels)")
    if args.val_images:
        val, val_report = read_dataset_folder(args.val_images, args.labels, names, seen)
        train = images
        report.boxes += val_report.boxes
        report.without_labels += val_report.without_labels
        report.skipped += val_report.skipped
    else:
        if len(images) < 2:
            raise DatasetFolderError(f"{len(images)} usable images under {args.images}: training needs at least 2")
        train, val = split_train_val(images, args.val_fraction)
    if not train or not val:
        raise DatasetFolderError(f"no usable training or validation images under {args.images}")
    write_task_folder(args.root, "training", names, train=train, val=val, config=config, task_id=local_task_id())
    for line in report.skipped:
        print(f"left out: {line}", file=sys.stderr)
    return (f"{len(train)} training + {len(val)} validation images, {report.boxes} boxes, classes {names}"
            f"{f'; {report.without_labels} without a label file (no objects)' if report.without_labels else ''}"
            f"{f'; {len(report.skipped)} problems left out (listed above)' if report.skipped else ''}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        summary = build_from_dataset(args)
    except (DatasetFolderError, OSError, yaml.YAMLError) as exc:
        print(f"task folder not written: {exc}", file=sys.stderr)
        return 2
    print(f"{args.task} task written to {args.root}/in: {summary}\n"
          f"run it:  python start.py --in {args.root}/in --out {args.root}/out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
