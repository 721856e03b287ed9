"""One retry layer: Prefect never retries a task that reaches a catalog (pipelines.retry does)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _decorator_kwargs(fn: ast.FunctionDef, name: str) -> dict[str, ast.expr] | None:
    for d in fn.decorator_list:
        if isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == name:
            return {k.arg: k.value for k in d.keywords if k.arg}
        if isinstance(d, ast.Name) and d.id == name:
            return {}
    return None


def test_catalog_tasks_have_no_prefect_retries() -> None:
    catalog_tasks = []
    for path in sorted((REPO / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            kw = _decorator_kwargs(node, "task")
            if kw is None:
                continue
            tags = ast.literal_eval(kw["tags"]) if "tags" in kw else []
            if "catalog-api" in tags or (path.name == "embed.py" and node.name == "embed_task"):
                catalog_tasks.append(f"{path.name}:{node.name}")
                assert "retries" not in kw, (
                    f"{path.name}:{node.name} stacks Prefect retries on pipelines.retry"
                )
    assert len(catalog_tasks) >= 4, catalog_tasks
