"""Bake the official YOLOv5 weights into the image: download each file named in the lock, check its SHA-256,
and (with --check-models) that our loader reads it as the named architecture, key for key and shape for shape.

    fetch_weights.py --lock docker/weights.lock --dest /app/weights            download + digest check (build)
    fetch_weights.py --lock docker/weights.lock --dest /app/weights --check-models   the files already there
    fetch_weights.py --lock docker/weights.lock --dest /tmp/w --pin            record the digests in the lock

Any mismatch, an unpinned digest (outside --pin) or a failed download exits non-zero, so the build fails.
Downloading needs only the standard library; --check-models and --pin import the project's loader.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import List

UNPINNED = "unpinned"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class LockEntry:
    name: str
    url: str
    sha256: str


class FetchError(Exception):
    pass


def read_lock(path: Path) -> List[LockEntry]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            raise FetchError(f"{path}:{number}: expected 'name url sha256', got {line!r}")
        entries.append(LockEntry(*fields))
    return entries


def write_lock(path: Path, entries: List[LockEntry]) -> None:
    lines, by_name = [], {e.name: e for e in entries}
    for line in path.read_text().splitlines(keepends=True):
        fields = line.split("#", 1)[0].split()
        if len(fields) == 3 and fields[0] in by_name:
            line = line.replace(fields[2], by_name[fields[0]].sha256)
        lines.append(line)
    path.write_text("".join(lines))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                shutil.copyfileobj(response, tmp)
        except OSError as exc:
            Path(tmp.name).unlink()
            raise FetchError(f"cannot download {url}: {exc}") from exc
    Path(tmp.name).replace(dest)


def check_model(path: Path, name: str) -> str:
    """Our loader reads `path` as architecture `name`: every key and shape of a fresh model, nc = 80."""
    sys.path.insert(0, str(REPO))
    from models.yolo import DetectionModel
    from utils.checkpoint import read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except Exception as exc:  # the loader refuses what it cannot read safely
        raise FetchError(f"{path}: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in DetectionModel(name, nc=len(ckpt.names)).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    if expected != found:
        raise FetchError(f"{path} is not {name}: {len(set(expected) ^ set(found))} keys differ")
    params = sum(v.numel() for k, v in ckpt.state_dict.items() if not k.endswith(("running_mean", "running_var",
                                                                               "num_batches_tracked", "anchors")))
    return f"{name}: {len(ckpt.names)} classes, {params:,} parameters"


def fetch(entries: List[LockEntry], dest: Path, pin: bool) -> List[LockEntry]:
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry.sha256 == UNPINNED and not pin:
            raise FetchError(f"{entry.name}: no SHA-256 recorded in the lock; record it with --pin first")
        target = dest / f"{entry.name}.pt"
        download(entry.url, target)
        digest = sha256_of(target)
        if pin:
            print(check_model(target, entry.name))
            entry.sha256 = digest
        elif digest != entry.sha256:
            target.unlink()
            raise FetchError(f"{entry.name}: SHA-256 of {entry.url} is {digest}, the lock says {entry.sha256}")
        print(f"{entry.name}.pt  sha256 {digest}  ok")
    return entries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--dest", type=Path, required=True)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--pin", action="store_true", help="download, check the models and record their digests")
    mode.add_argument("--check-models", action="store_true", help="check the files in --dest with our loader")
    args = parser.parse_args(argv)
    try:
        entries = read_lock(args.lock)
        if args.check_models:
            for entry in entries:
                print(check_model(args.dest / f"{entry.name}.pt", entry.name))
            return 0
        entries = fetch(entries, args.dest, args.pin)
        if args.pin:
            write_lock(args.lock, entries)
            print(f"digests written to {args.lock}")
    except FetchError as exc:
        print(f"fetch_weights: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
