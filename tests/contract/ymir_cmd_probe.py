"""Runs YMIR's own parsers and writers (PyPI `ymir-cmd`) on our files; prints one JSON object.

Executed by the contract tests inside an isolated Python 3.8 venv that has ymir-cmd 2.0.0 or 2.3.0:
    probe.py pack OUT_ROOT WORK          result.yaml -> packed model -> unpacked best stage
    probe.py topk RESULT_TSV K           the asset ids mining would select
    probe.py infer OUT_DIR SPEC_JSON     predictions as the platform stores them
    probe.py monitor MONITOR_TXT         the monitor line as the platform parses it (2.3.0 code)
    probe.py make-in SPEC_JSON           /in written by the platform's exporter and config writers
"""
import json
import os
import shutil
import sys
import tempfile
import traceback

from mir.version import YMIR_VERSION

V2_0 = YMIR_VERSION.startswith("2.0")


def labels(work, class_names):
    from mir.tools import class_ids

    where = {"mir_root": work} if V2_0 else {"label_storage_file": os.path.join(work, "labels.yaml")}
    class_ids.load_or_create_userlabels(create_ok=True, **where)  # creates the file; load it to get a bound table
    mgr = class_ids.load_or_create_userlabels(**where)
    mgr.add_main_names(list(class_names))
    return mgr


def pack(out_root, work):
    from mir.tools import models

    location = os.path.join(work, "model-store")
    executor_config = {"class_names": ["box", "disc", "triangle"], "task_id": "t1"}
    if V2_0:
        from mir.commands.training import _find_and_save_model

        storage = _find_and_save_model(out_root, location, executor_config, {"ctx": 1})
    else:
        from mir.commands.training import _get_model_storage

        storage = _get_model_storage(os.path.join(out_root, "models"), executor_config, {"ctx": 1})
        models.pack_and_copy_models(storage, os.path.join(out_root, "models"), location)
    storage.get_model_meta()
    (model_hash,) = os.listdir(location)
    unpacked = {}
    for stage in storage.stages:
        dst = os.path.join(work, "unpacked", stage)
        models.prepare_model(location, model_hash, stage, dst)
        unpacked[stage] = sorted(
            os.path.relpath(os.path.join(d, f), dst) for d, _, files in os.walk(dst) for f in files)
    return {
        "best_stage_name": storage.best_stage_name,
        "stages": {name: {"files": list(s.files), "mAP": s.mAP, "timestamp": s.timestamp,
                          "mAR": getattr(s, "mAR", None), "tp": getattr(s, "tp", None)}
                   for name, s in storage.stages.items()},
        "evaluate_config": dict(getattr(storage, "evaluate_config", {}) or {}),
        "unpacked": unpacked,
    }


def topk(result_tsv, k):
    from mir.commands.mining import _get_topk_asset_ids

    return {"ids": sorted(_get_topk_asset_ids(result_tsv, int(k)))}


def infer(out_dir, spec_file):
    with open(spec_file) as f:
        spec = json.load(f)
    work = tempfile.mkdtemp()
    mgr = labels(work, spec["class_names"])
    if V2_0:
        from mir.commands.infer import _process_infer_results
        from mir.commands.mining import _get_infer_annotations

        copy = os.path.join(work, "infer-result.json")
        shutil.copyfile(os.path.join(out_dir, "infer-result.json"), copy)
        _process_infer_results(copy, 50, work)
        annotations = _get_infer_annotations(copy, set(spec["asset_ids"]), mgr)
    else:
        from mir.commands.infer import _process_infer_detbox_result
        from mir.protos import mir_command_pb2 as mirpb

        task = mirpb.SingleTaskAnnotations()
        _process_infer_detbox_result(task, out_dir, mgr)
        annotations = {os.path.splitext(k)[0]: v for k, v in task.image_annotations.items()}
    result = {}
    for asset_id, image in annotations.items():
        result[asset_id] = [{"x": b.box.x, "y": b.box.y, "w": b.box.w, "h": b.box.h, "class_id": b.class_id,
                             "class_name": mgr.main_name_for_id(b.class_id), "score": b.score} for b in image.boxes]
    return {"images": result}


def monitor(path):
    from mir.tools.percent_log_util import PercentLogHandler

    r = PercentLogHandler.parse_percent_log(path)
    return {"task_id": r.task_id, "timestamp": float(r.timestamp), "percent": r.percent, "state": int(r.state),
            "state_code": r.state_code, "state_message": r.state_message}


def make_in(spec_file):
    """Write a task's /in exactly as mir train / mir mining do, from assets described in SPEC_JSON."""
    from mir.commands import infer as infer_cmd
    from mir.commands.training import _generate_config
    from mir.protos import mir_command_pb2 as mirpb
    from mir.tools import env_config, exporter

    with open(spec_file) as f:
        spec = json.load(f)
    work_in, media = spec["in_dir"], spec["media_dir"]
    mgr = labels(tempfile.mkdtemp(), spec["class_names"])
    type_ids, _ = mgr.id_for_names(spec["class_names"])
    ext_types = {"jpg": mirpb.AssetType.AssetTypeImageJpeg, "png": mirpb.AssetType.AssetTypeImagePng}
    tvt = {"train": mirpb.TvtType.TvtTypeTraining, "val": mirpb.TvtType.TvtTypeValidation}
    if spec["task"] == "training":
        metadatas, annotations = mirpb.MirMetadatas(), mirpb.MirAnnotations()
        for asset in spec["assets"]:
            attrs = metadatas.attributes[asset["sha1"]]
            attrs.asset_type = ext_types[asset["ext"]]
            attrs.width, attrs.height, attrs.image_channels = asset["width"], asset["height"], 3
            attrs.tvt_type = tvt[asset["split"]]
            image = annotations.ground_truth.image_annotations[asset["sha1"]]
            for index, (cls, x, y, w, h) in enumerate(asset["boxes"]):
                box = image.boxes.add()
                box.index, box.class_id, box.score = index, type_ids[cls], -1.0
                box.box.x, box.box.y, box.box.w, box.box.h = x, y, w, h
        anno_format, asset_format = exporter.parse_export_type(spec["export_format"])
        ec = mirpb.ExportConfig(
            asset_format=asset_format, asset_dir=os.path.join(work_in, "assets"),
            asset_index_file=os.path.join(work_in, "idx-assets.tsv"), asset_index_prefix="/in/assets",
            media_location=media, need_sub_folder=True, anno_format=anno_format,
            gt_dir=os.path.join(work_in, "annotations"), gt_index_file=os.path.join(work_in, "idx-gt.tsv"),
            gt_index_prefix="/in/annotations", pred_dir=os.path.join(work_in, "predictions"),
            pred_index_file=os.path.join(work_in, "idx-pred.tsv"), pred_index_prefix="/in/predictions",
            tvt_index_dir=work_in)
        exporter.export_mirdatas_to_dir(mir_metadatas=metadatas, ec=ec, mir_annotations=annotations,
                                        class_ids_mapping={t: i for i, t in enumerate(type_ids)}, cls_id_mgr=mgr)
        executor_config = dict(spec["executor_config"], class_names=spec["class_names"],
                               export_format=spec["export_format"])
        _generate_config(executor_config, os.path.join(work_in, "config.yaml"), spec["task_id"],
                         spec.get("pretrained_model_params", []))
        env_config.generate_training_env_config_file(spec["task_id"], os.path.join(work_in, "env.yaml"))
    else:
        src_index = os.path.join(tempfile.mkdtemp(), "src-index.tsv")
        with open(src_index, "w") as f:
            f.writelines(os.path.join(media, a["sha1"][-2:], a["sha1"]) + "\n" for a in spec["assets"])
        os.makedirs(os.path.join(work_in, "assets"), exist_ok=True)
        infer_cmd._prepare_assets(src_index, os.path.join(work_in, "candidate-index.tsv"),
                                  os.path.join(work_in, "assets"))
        run_mining, run_infer = spec["task"] in ("mining", "mining+infer"), spec["task"] in ("infer", "mining+infer")
        infer_cmd.prepare_config_file({"executor_config": dict(spec["executor_config"])},
                                      os.path.join(work_in, "config.yaml"), class_names=spec["class_names"],
                                      task_id=spec["task_id"], model_params_path=spec.get("model_params_path", []),
                                      run_infer=run_infer, run_mining=run_mining)
        env_config.generate_mining_infer_env_config_file(spec["task_id"], run_mining, run_infer,
                                                         os.path.join(work_in, "env.yaml"))
    return {"files": sorted(os.path.relpath(os.path.join(d, f), work_in)
                            for d, _, files in os.walk(work_in) for f in files)}


COMMANDS = {"pack": pack, "topk": topk, "infer": infer, "monitor": monitor, "make-in": make_in}

if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    try:
        result = {"ok": True, "version": YMIR_VERSION, **COMMANDS[command](*args)}
    except Exception as exc:  # report the platform's verdict, not a crash of the probe
        result = {"ok": False, "version": YMIR_VERSION, "error": f"{type(exc).__name__}: {exc}",
                  "trace": traceback.format_exc()}
    print(json.dumps(result))
