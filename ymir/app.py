"""The executor's entry: read /in, dispatch to the task, and turn any failure into a clean YMIR error."""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import yaml

from utils.malloc import keep_freed_memory
from utils.ranks import is_main_process
from ymir.config import load_config
from ymir.console_log import ConsoleCopy
from ymir.context import TaskContext
from ymir.env import load_env
from ymir.errors import ExecutorError, classify
from ymir.monitor import Monitor
from ymir.nodes import ONE_NODE, NodeGroup, leave_rank_variables, read_node_group
from ymir.out_folder import OutFolderBusy, OutFolderLock, remove_stale_results
from ymir.paths import PathMapper
from ymir.processes import SUPERVISOR_ENV, stop_when_orphaned, terminate_descendants

LOG = logging.getLogger("ymir-yolov5")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="start.py", description="ymir-yolov5 executor: runs the task that /in/env.yaml asks for.")
    parser.add_argument("--in", dest="in_dir", default=None,
                        help="folder standing in for /in (paths starting with /in are mapped onto it)")
    parser.add_argument("--out", dest="out_dir", default=None,
                        help="folder standing in for /out (paths starting with /out are mapped onto it)")
    return parser.parse_args(argv)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class StoppedBySignal(SystemExit):
    """SIGTERM (a supervisor's stop) arrived: the run ends through the usual failure path, without a trace."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


def _raise_system_exit(signum, _frame):
    raise StoppedBySignal(signum)


def kept_stages(output_root: Path) -> str:
    """What a stopped training left for the platform: its best stage, from models/result.yaml."""
    try:
        result = yaml.safe_load((output_root / "models" / "result.yaml").read_text()) or {}
        best = result["best_stage_name"]
        stage = result["model_stages"][best]
        return f"; kept: stage '{best}' ({', '.join(map(str, stage['files']))}, mAP@0.5 {float(stage['mAP']):.4f})"
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return ""


def run(ctx: TaskContext) -> None:
    env = ctx.env
    if env.run_training:
        from ymir.tasks.train import run_training

        run_training(ctx)
    else:
        from ymir.tasks.predict import run_mining_and_inference

        run_mining_and_inference(ctx)
    ctx.monitor.progress(1.0, force=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging()
    keep_freed_memory()  # CPU tensors reuse freed memory instead of page-faulting fresh memory in every batch
    signal.signal(signal.SIGTERM, _raise_system_exit)
    rank = os.environ.get(SUPERVISOR_ENV)
    if rank:  # a rank under torchrun
        stop_when_orphaned()
        nodes = ONE_NODE
    else:  # the executor's own process: which node of how many (one, unless a cluster scheduler says otherwise)
        nodes = read_node_group(os.environ)
        leave_rank_variables(os.environ)
    writes_out = not rank and nodes.is_first  # every other process leaves /out to global rank 0 and this one
    mapper = PathMapper(args.in_dir, args.out_dir)
    if not mapper.env_file.exists() and not mapper.out_root.is_dir():  # not in YMIR's container: write nothing
        print(f"ymir-yolov5: no task here ({mapper.env_file} does not exist and {mapper.out_root} is not a folder): "
              "run it inside the image as YMIR does, or give a task folder with --in IN --out OUT", flush=True)
        return 2
    try:
        lock = lock_out_folder(mapper) if writes_out else None
    except OutFolderBusy as exc:  # monitor.txt and the log are the other run's: not a word written to them
        print(f"ymir-yolov5 did not start: {exc}", flush=True)
        return 1
    try:
        with contextlib.ExitStack() as stack:
            if args.out_dir and writes_out:
                copy_console(mapper, stack)
            return run_task(mapper, owner=writes_out, nodes=nodes)
    finally:
        if lock is not None:
            lock.close()


def copy_console(mapper: PathMapper, stack: contextlib.ExitStack) -> None:
    """By hand (--out given), the console is also appended to the executor log, as YMIR writes it; when that
    cannot be set up, the task runs without the copy."""
    path = mapper.output.executor_log_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(ConsoleCopy(path))
    except OSError as exc:
        LOG.warning("no copy of this log in %s: %s", path, exc)


def lock_out_folder(mapper: PathMapper) -> Optional[OutFolderLock]:
    """The executor's own process owns /out for the run (the ranks it starts work under that ownership). Where
    the file system cannot lock (some network mounts), the run goes on without the lock, and says so."""
    try:
        mapper.out_root.mkdir(parents=True, exist_ok=True)
        return OutFolderLock(mapper.out_root)
    except OSError as exc:  # OutFolderBusy is not one: it reaches the caller
        LOG.warning("%s cannot be locked for this run (%s): a second run on it would not be stopped",
                    mapper.out_root, exc.strerror or exc)
        return None


def run_task(mapper: PathMapper, owner: bool = True, nodes: NodeGroup = ONE_NODE) -> int:
    """`owner`: this process started the run on the first node (not a rank under torchrun): it clears an earlier
    run's results. `nodes`: the machines the task spans (ymir.nodes)."""
    # under torchrun only rank 0 reports progress; on the other nodes nothing does
    monitor = Monitor(mapper.output.monitor_file, task_id="unknown-task",
                      enabled=is_main_process() and nodes.is_first)
    try:
        env = load_env(mapper)
        monitor.task_id = env.task_id
        monitor.progress(0.0, force=True)
        nodes.check()
        if owner:
            remove_stale_results(mapper.output)
        config = load_config(env, mapper)
        run(TaskContext(env=env, config=config, mapper=mapper, monitor=monitor, nodes=nodes))
        LOG.info("task %s finished", env.task_id)
        return 0
    except BaseException as exc:  # the one place where every failure ends
        return fail(monitor, exc)
    finally:
        terminate_descendants()


def out_of_space(exc: BaseException, folder: Path) -> bool:
    """The failure came from a full disk: ENOSPC, or torch's serializer's words for it, on a folder with little
    room left."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    try:
        nearly_full = shutil.disk_usage(folder).free < 64 * 2 ** 20
    except OSError:
        return False
    return nearly_full and any(words in str(exc) for words in ("unexpected pos", "file write failed",
                                                               "No space left"))


def fail(monitor: Monitor, exc: BaseException) -> int:
    code, message = classify(exc)
    if out_of_space(exc, monitor.path.parent):
        message = f"no space left on {monitor.path.parent}: {message}"
    if isinstance(exc, KeyboardInterrupt):
        message = "interrupted (SIGINT)" + kept_stages(monitor.path.parent)
    elif isinstance(exc, StoppedBySignal):
        message = f"stopped by signal {exc.signal_name}" + kept_stages(monitor.path.parent)
    elif isinstance(exc, SystemExit):
        message = f"stopped by exit ({exc.code})"
    trace = traceback.format_exception(type(exc), exc, exc.__traceback__)
    if isinstance(exc, (ExecutorError, StoppedBySignal, KeyboardInterrupt)):  # its message says it all; the
        # trace is for debugging
        LOG.debug("task failed:\n%s", "".join(trace).rstrip())
        trace = []
    else:
        LOG.error("task failed:\n%s", "".join(trace).rstrip())
    try:
        monitor.error(code, message, "".join(trace).splitlines())
    except OSError as write_error:
        LOG.error("cannot write %s: %s", monitor.path, write_error)
    sys.stderr.flush()
    # The platform shows the last lines of the log as the task's error message.
    print(f"ymir-yolov5 failed with error code {code}:", flush=True)
    print(message, flush=True)
    return 1
