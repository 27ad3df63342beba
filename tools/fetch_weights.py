"""Bake the official YOLOv5 v7.0 weights into the image, in two build steps.

    fetch_weights.py --lock docker/weights.lock --dest /app/weights [--bundle 1|context|0] [--context DIR]
        Gather the files: from the build context (DIR/<name>.pt, air-gapped sites) or else downloaded from the
        lock's URL. A digest recorded in the lock is enforced; an unpinned one is accepted. Each file's SHA-256
        goes to DEST/SHA256SUMS and to the build log. --bundle 0 bundles nothing; --bundle context takes only
        the files in DIR and downloads nothing. Needs only the standard library.
    fetch_weights.py --lock docker/weights.lock --dest /app/weights --check-models
        After the project is copied: every gathered file still has its recorded digest and reads through the
        project's restricted loader (no pickled code can run) as the named architecture, 80 classes, every
        tensor of the right shape, so the exact parameter count; a file that fails is deleted and the step fails.
    fetch_weights.py --lock docker/weights.lock --dest /tmp/w --pin
        For maintainers: download, check, and record the digests in the lock.

Any refusal exits 1 with one line saying why, so the build fails there.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

UNPINNED = "unpinned"
SUMS = "SHA256SUMS"
OFFICIAL_CLASSES = 80  # the official releases are trained on COCO
BUNDLE_CHOICES = ("1", "context", "0")
GPL_TEXT = "/usr/share/common-licenses/GPL-3"  # in every Debian and Ubuntu base image (base-files)
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


def read_sums(dest: Path) -> Dict[str, str]:
    """file name -> digest, from DEST/SHA256SUMS (sha256sum's format)."""
    path = dest / SUMS
    if not path.is_file():
        raise FetchError(f"{path} is missing: run the gathering step first")
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return sums


def download(url: str, dest: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                shutil.copyfileobj(response, tmp)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            Path(tmp.name).unlink()
            raise FetchError(f"cannot download {url}: {exc} (without access to it, place the file in "
                             "docker/weights/ or build with BUNDLE_WEIGHTS=0)") from None
    Path(tmp.name).replace(dest)


def check_model(path: Path, name: str) -> str:
    """Our restricted loader reads `path` as architecture `name` with 80 classes: every key and shape of a fresh
    model of that architecture, hence its exact parameter count. Returns a one-line description."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from models.yolo import DetectionModel
    from utils.checkpoint import CheckpointError, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:  # includes a pickle that asks for code: refused, never run
        raise FetchError(f"{name}: {exc}") from None
    if ckpt.source != "yolov5":
        raise FetchError(f"{name}: {path} is not an official YOLOv5 checkpoint (it is in the {ckpt.source} format)")
    if len(ckpt.names) != OFFICIAL_CLASSES:
        raise FetchError(f"{name}: {path} has {len(ckpt.names)} classes, an official release has 80")
    expected = {k: tuple(v.shape) for k, v in DetectionModel(name, nc=OFFICIAL_CLASSES).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    if expected != found:
        differ = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
        raise FetchError(f"{name}: {path} is not {name}: {len(differ)} tensors differ (first: {differ[0]})")
    params = sum(v.numel() for k, v in ckpt.state_dict.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked", "anchors")))
    return f"{name}: {ckpt.source} checkpoint, {len(ckpt.names)} classes, {params:,} parameters"


def gather(entries: List[LockEntry], dest: Path, bundle: str, context: Path) -> None:
    """Step 1: the files into DEST, digests enforced where pinned, all recorded in DEST/SHA256SUMS."""
    dest.mkdir(parents=True, exist_ok=True)
    if bundle == "0":
        (dest / SUMS).write_text("")
        print(f"BUNDLE_WEIGHTS=0: no weights bundled in {dest}")
        return
    names = {f"{e.name}.pt" for e in entries}
    for stray in sorted(p.name for p in context.glob("*.pt") if p.name not in names) if context.is_dir() else []:
        print(f"warning: {context / stray} is not a model of docker/weights.lock: left out")
    lines = []
    for entry in entries:
        target, local = dest / f"{entry.name}.pt", context / f"{entry.name}.pt"
        if local.is_file():
            shutil.copyfile(local, target)
            origin = f"build context {local}"
        elif bundle == "context":
            continue
        else:
            download(entry.url, target)
            origin = entry.url
        digest = sha256_of(target)
        if entry.sha256 != UNPINNED and digest != entry.sha256:
            target.unlink()
            raise FetchError(f"{entry.name}: SHA-256 of {origin} is {digest}, docker/weights.lock says "
                             f"{entry.sha256}")
        lines.append(f"{digest}  {target.name}\n")
        pinned = "pinned" if entry.sha256 != UNPINNED else "unpinned in the lock"
        print(f"{target.name}  sha256 {digest}  ({pinned}; from {origin})")
    (dest / SUMS).write_text("".join(lines))
    if lines:
        write_weights_licence(dest)
    print(f"{len(lines)} weight files in {dest}" + ("" if lines else " (none bundled)"))


def write_weights_licence(dest: Path) -> None:
    """The bundled checkpoints are Ultralytics' work under GPL-3.0, not ours: say so beside them, with the text."""
    text = Path(GPL_TEXT)
    (dest / "NOTICE").write_text(
        "The *.pt files in this folder are the official YOLOv5 v7.0 checkpoints released by Ultralytics\n"
        "(https://github.com/ultralytics/yolov5/releases/tag/v7.0) under the GNU General Public License v3.0"
        + (", whose text is in GPL-3.0.txt.\n" if text.is_file() else ": https://www.gnu.org/licenses/gpl-3.0.txt\n"))
    if text.is_file():
        shutil.copyfile(text, dest / "GPL-3.0.txt")


def check_gathered(entries: List[LockEntry], dest: Path) -> None:
    """Step 2: every gathered file is unchanged and is the model it is named after."""
    names = {f"{e.name}.pt": e.name for e in entries}
    for file_name, digest in read_sums(dest).items():
        path = dest / file_name
        try:
            if file_name not in names:
                raise FetchError(f"{path} is not in the lock")
            if sha256_of(path) != digest:
                raise FetchError(f"{path} changed since its digest was recorded")
            print(check_model(path, names[file_name]))
        except FetchError:
            path.unlink(missing_ok=True)
            raise


def pin(entries: List[LockEntry], dest: Path, lock: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = dest / f"{entry.name}.pt"
        download(entry.url, target)
        print(check_model(target, entry.name))
        entry.sha256 = sha256_of(target)
    write_lock(lock, entries)
    print(f"digests written to {lock}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--bundle", default="1", help="1: every model in the lock (build context first, else "
                        "downloaded); context: only the files in --context; 0: none")
    parser.add_argument("--context", type=Path, default=REPO / "docker" / "weights",
                        help="folder of <name>.pt files to use instead of downloading")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--pin", action="store_true", help="download, check the models and record their digests")
    mode.add_argument("--check-models", action="store_true", help="check the gathered files with our loader")
    args = parser.parse_args(argv)
    try:
        if args.bundle not in BUNDLE_CHOICES:
            raise FetchError(f"BUNDLE_WEIGHTS must be one of {', '.join(BUNDLE_CHOICES)}, got {args.bundle!r}")
        entries = read_lock(args.lock)
        if args.check_models:
            check_gathered(entries, args.dest)
        elif args.pin:
            pin(entries, args.dest, args.lock)
        else:
            gather(entries, args.dest, args.bundle, args.context)
    except FetchError as exc:
        print(f"fetch_weights: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
