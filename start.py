"""ymir-yolov5 executor entry point: `python start.py [--in DIR --out DIR]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ymir.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
