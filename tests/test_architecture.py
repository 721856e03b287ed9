"""Dependency rules between the project's packages, checked on the source (``docs/architecture.md``)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT


def _pipelines_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``pipelines`` module a file imports, module level and inside functions
    alike; ``from pipelines import x`` counts as importing ``pipelines.x``."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pipelines"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pipelines":
                out += [(node.lineno, f"pipelines.{a.name}") for a in node.names]
            elif node.module.split(".")[0] == "pipelines":
                out.append((node.lineno, node.module))
    return out


def test_aom_model_imports_only_storage_and_errors_from_pipelines() -> None:
    """``aom_model`` (the model and its training) may import from ``pipelines`` only ``pipelines.storage``
    and ``pipelines.errors``: cube stores reach training through the protocols of
    ``aom_model.train.cube_reader``, composed with ``pipelines.cubes.CubeStore`` in ``pipelines.pretrain``."""
    allowed = ("pipelines.storage", "pipelines.errors")
    files = sorted((REPO_ROOT / "aom_model").rglob("*.py"))
    assert len(files) > 10
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{line}: imports {module}"
        for path in files
        for line, module in _pipelines_imports(path)
        if not any(module == a or module.startswith(a + ".") for a in allowed)
    ]
    assert not bad, "aom_model may import only pipelines.storage and pipelines.errors:\n" + "\n".join(bad)
    # the scan sees imports: the allowed ones are found where they are used
    assert "pipelines.errors" in {
        m for _, m in _pipelines_imports(REPO_ROOT / "aom_model/train/cube_reader.py")
    }
