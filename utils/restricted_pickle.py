"""A pickle module for `torch.load` that executes nothing from the file.

Only tensor and storage rebuilding and plain containers may be called. Classes of the original YOLOv5 code
(`models.*`, `utils.*`) and of `torch.nn` are replaced by inert `PickledObject` stand-ins that only record
their state, so a checkpoint's module tree can be read without importing any of that code. Any other global
(`os.system`, `builtins.eval`, ...) raises UnsafePickleError before anything runs.
"""
from __future__ import annotations

import io
import pickle
import pickletools
from typing import Dict, List, Tuple

_CALLABLE = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("torch", "Size"),
}
# Storage classes name a tensor's element type in the persistent ids of torch's zip format; torch >= 1.11
# resolves them before our find_class is asked, torch 1.10 asks us. They only allocate typed memory.
_STORAGE_TYPES = {("torch", f"{kind}Storage") for kind in (
    "Half", "Float", "Double", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")}
# Module trees whose classes become inert stand-ins.
_STAND_IN_PREFIXES = ("models.", "utils.", "yolov5.models.", "yolov5.utils.", "torch.nn.modules.")
# Pure-data globals found in training checkpoints (numpy scalars for best_fitness, argparse options):
# replaced by an opaque placeholder; their values are never needed.
_OPAQUE_DATA = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("argparse", "Namespace"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks to call something other than tensor rebuilding."""


class PickledObject:
    """Inert stand-in for a pickled class instance: holds the pickled state and nothing else."""

    qualified_name = "object"

    def __init__(self, *args, **kwargs):
        self.__dict__["_pickled_args"] = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_pickled_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualified_name}>"


class OpaqueData(PickledObject):
    qualified_name = "opaque data"


def _opaque(*_args, **_kwargs) -> OpaqueData:
    return OpaqueData()


_STAND_INS: Dict[Tuple[str, str], type] = {}


def stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (PickledObject,), {"qualified_name": f"{module}.{name}"})
    return _STAND_INS[key]


MAX_NESTING = 1000  # containers inside containers; a YOLOv5 checkpoint's module tree nests a few dozen deep
MAX_OPCODES = 50_000_000
_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "BUILD", "ADDITEMS"}  # add to the object below their items


def check_structure(file) -> None:
    """Walk the pickle's opcodes (nothing is built, nothing called) and refuse one that nests containers more than
    MAX_NESTING deep: Python's C code hashes such tuples recursively, and a tuple nested a million deep overflows
    the C stack (a segmentation fault, not an exception) while unpickling. Each object is tracked by a cell holding
    its nesting depth, shared by its stack and memo entries, so that a container changed after it was memoised is
    counted as changed. Follows the unpickler's own rules for marks (a POP right after MARK removes the mark); a
    stack that runs short is a malformed pickle. Reads from `file`'s position to the pickle's STOP."""
    stack: List[List[int]] = []
    marks: List[int] = []
    memo: Dict[object, List[int]] = {}
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(file)):
            name = op.name
            if count > MAX_OPCODES:
                raise UnsafePickleError(f"more than {MAX_OPCODES:,} pickle operations; refused")
            if name == "MARK":
                marks.append(len(stack))
            elif name == "POP":
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    stack.pop()
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "STOP":
                return
            else:
                _apply(op, stack, marks)
            if stack and stack[-1][0] > MAX_NESTING:
                raise UnsafePickleError(f"containers nested more than {MAX_NESTING} deep; refused")
    except (IndexError, KeyError, ValueError) as exc:  # a short stack, an unknown memo key or opcode, a cut file
        raise pickle.UnpicklingError(f"malformed pickle ({type(exc).__name__}: {exc})") from None


def _apply(op, stack: List[List[int]], marks: List[int]) -> None:
    """Pop what `op` consumes and push what it leaves, as depth cells."""
    before = op.stack_before
    if pickletools.markobject in before:
        top = marks.pop()
        if top > len(stack):
            raise IndexError("a mark above the stack")
        items = stack[top:]
        del stack[top:]
        below = before.index(pickletools.markobject)
    else:
        items, below = [], len(before)
    if below:
        if len(stack) < below or (marks and len(stack) - below < marks[-1]):
            raise IndexError(f"{op.name} needs {below} object(s) below it")
        items = stack[-below:] + items
        del stack[-below:]
    if op.name in _MUTATORS:  # the first consumed entry is the container that stays, changed in place
        target = items[0]
        target[0] = max([target[0]] + [cell[0] + 1 for cell in items[1:]])
        stack.append(target)
        return
    depth = max(cell[0] for cell in items) + 1 if items else 1
    stack.extend([[depth] for _ in op.stack_after])


class Unpickler(pickle.Unpickler):
    def __init__(self, file, **kwargs):
        """Refuses a pickle nested too deep (check_structure) before unpickling anything."""
        if not (hasattr(file, "seekable") and file.seekable()):
            file = io.BytesIO(file.read())
        start = file.tell()
        check_structure(file)
        file.seek(start)
        super().__init__(file, **kwargs)

    def find_class(self, module: str, name: str):
        if (module, name) in _CALLABLE:
            import collections

            import torch

            return {
                "OrderedDict": collections.OrderedDict, "set": set, "frozenset": frozenset, "Size": torch.Size,
            }.get(name) or getattr(__import__(module, fromlist=[name]), name)
        if (module, name) in _STORAGE_TYPES:
            import torch

            return getattr(torch, name)
        if (module, name) in _OPAQUE_DATA:
            return _opaque
        if module.startswith(_STAND_IN_PREFIXES) and name.isidentifier() and name[:1].isupper():
            return stand_in(module, name)
        raise UnsafePickleError(f"the file asks for {module}.{name}, which a checkpoint never needs; refused")


def load(file, **kwargs):
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs):
    return Unpickler(io.BytesIO(data), **kwargs).load()


# torch.load reads these module-level names of a pickle module.
Pickler = pickle.Pickler
dump = pickle.dump
dumps = pickle.dumps
HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
UnpicklingError = pickle.UnpicklingError
