"""`pip install .[query]` readers: pipelines.query and `aom query` work with torch and Prefect absent."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from pipelines.testing import build_synthetic_store, synthetic_version

REPO = Path(__file__).resolve().parents[3]

# torch and Prefect made unimportable (``None`` in sys.modules is how Python marks a module
# that must not be imported): what an environment without them does at each import
SCRIPT = """
import sys
for name in ("torch", "prefect", "safetensors"):
    sys.modules[name] = None
import numpy as np
from pipelines.query import open_embeddings, similar, tile_vectors
emb = open_embeddings(sys.argv[1])
res = similar(emb, vectors=np.ones(emb.dim, np.float32), k=3, scheduler="synchronous")
assert len(res) == 3
assert tile_vectors(emb, emb.zones[0]).consolidated
from flows.cli import main
sys.argv = ["aom", "query", "similar", "-e", sys.argv[1], "--lon", "5.99", "--lat", "45.0", "--k", "2"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "prefect") and sys.modules[m] is not None)
assert not loaded, loaded
print("QUERY-WITHOUT-TORCH-OK")
"""


def test_query_runs_without_torch_or_prefect(tmp_path: Path) -> None:
    root = tmp_path / "emb"
    build_synthetic_store(str(root), bbox=(5.985, 44.995, 6.015, 45.005), version=synthetic_version(dim=8))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "QUERY-WITHOUT-TORCH-OK" in out.stdout


def test_extras_split_the_heavy_dependencies() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(meta["dependencies"])
    extras = meta["optional-dependencies"]
    for heavy in ("torch", "prefect", "scikit-learn", "matplotlib", "dask"):
        assert heavy not in core, heavy
    assert not any(d.startswith(("torch", "prefect")) for d in extras["query"])
    torch_spec = next(d for d in extras["model"] if d.startswith("torch"))
    assert "<2.16" in torch_spec  # 2.15 (current) is allowed
    assert set(extras["all"][0].split("[")[1].rstrip("]").split(",")) == {"query", "model", "flows"}
    for pkg in ("pipelines", "aom_model", "flows"):
        assert (REPO / pkg / "py.typed").exists()
