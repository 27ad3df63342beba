"""The original YOLOv5 v7.0 (PyPI `yolov5==7.0.14`) imported where only its model, loss and NMS are needed.

Its package imports plotting and data-frame libraries at module level (pandas, matplotlib, seaborn, scipy) that
none of those code paths calls. On a machine where they are not installed (the GPU machine, whose carry limit
leaves no room for them) they are replaced by inert stand-ins, so the original's own model, loss and NMS code runs
unchanged. Where they are installed, the real ones are used.

    import original_offline
    yolov5 = original_offline.load()        # None, with original_offline.why_not, when it cannot be imported
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Optional
from unittest import mock

UNUSED_LIBRARIES = ("pandas", "matplotlib", "mpl_toolkits", "seaborn", "scipy", "charset_normalizer", "IPython")
why_not = ""


class _StandIn(types.ModuleType):
    """Any attribute is a MagicMock: module-level calls (`matplotlib.use('Agg')`) and settings
    (`pd.options.display.max_columns = 10`) succeed and do nothing."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on sys.meta_path: answers only for the unused libraries that no other finder can import."""

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in UNUSED_LIBRARIES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


def stand_ins() -> list:
    """The libraries that were replaced (empty where all are installed)."""
    return sorted(name for name, module in sys.modules.items() if isinstance(module, _StandIn) and "." not in name)


def load() -> Optional[types.ModuleType]:
    """Import yolov5 (model, loss, NMS) offline; None (and `why_not`) when it is not installed or fails."""
    global why_not
    config = os.environ.setdefault("YOLOV5_CONFIG_DIR", tempfile.mkdtemp(prefix="yolov5-config-"))
    os.environ.setdefault("YOLO_CONFIG_DIR", config)
    (Path(config) / "Arial.ttf").touch()  # the original would download a font for its plots
    if not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        sys.meta_path.append(_StandInFinder())
    try:
        import yolov5
        import yolov5.models.yolo  # noqa: F401
        import yolov5.utils.general  # noqa: F401
        import yolov5.utils.loss  # noqa: F401
        import yolov5.utils.torch_utils  # noqa: F401
    except Exception as exc:  # not installed, or a dependency missing: the comparison is skipped, and says why
        why_not = f"{type(exc).__name__}: {exc}"
        return None
    return yolov5


def build(yolov5: types.ModuleType, name: str, nc: int):
    """The original's DetectionModel for a shipped architecture (yolov5s, yolov5s6, ...)."""
    folder = Path(yolov5.__file__).parent / "models"
    path = folder / f"{name}.yaml"
    return yolov5.models.yolo.DetectionModel(str(path if path.exists() else folder / "hub" / f"{name}.yaml"),
                                             ch=3, nc=nc)
