"""The code's shape, checked: data flows one way (protocol -> task -> engine), the engine never imports the
platform's package, the data pipeline sits below the rest of the engine, and no function grows past 50 lines."""
import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

# Who may import whom: a module of the key's package may import only the listed packages' modules (and its own).
ALLOWED = {
    "models": {"models"},
    "utils.data": {"utils.data", "utils.boxes"},
    "utils": {"utils", "models"},
    "ymir.local": {"ymir", "utils", "models"},
    "ymir": {"ymir", "utils", "models"},
}
MAX_FUNCTION_LINES = 50


def product_modules():
    for package in ("models", "utils", "ymir"):
        for path in sorted((REPO / package).rglob("*.py")):
            yield ".".join(path.relative_to(REPO).with_suffix("").parts), path


def layer(module: str) -> str:
    return max((key for key in ALLOWED if module == key or module.startswith(key + ".")), key=len)


def first_party_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        for name in names:
            if name.split(".")[0] in ("models", "utils", "ymir"):
                yield node.lineno, name


def test_layers_import_only_downwards():
    wrong = []
    for module, path in product_modules():
        allowed = ALLOWED[layer(module)]
        for line, name in first_party_imports(path):
            if not any(name == a or name.startswith(a + ".") for a in allowed):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_tasks_never_import_the_local_tools():
    wrong = [f"{path.relative_to(REPO)}:{line}" for module, path in product_modules()
             if not module.startswith("ymir.local") for line, name in first_party_imports(path)
             if name.startswith("ymir.local")]
    assert not wrong, wrong


def test_no_function_is_longer_than_fifty_lines():
    long = []
    for _, path in product_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("source, expected", [
    ("from ymir.config import X\n", [(1, "ymir.config")]),
    ("import utils.boxes as b\nfrom . import sibling\nimport numpy\n", [(1, "utils.boxes")]),
])
def test_the_import_reader_sees_what_a_module_imports(tmp_path, source, expected):
    (tmp_path / "m.py").write_text(source)
    assert list(first_party_imports(tmp_path / "m.py")) == expected
