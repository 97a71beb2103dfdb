"""notebooks/featurize_pca.ipynb executed headless (nbclient) in Spark local mode: every
cell runs, with the job's modules, and the plots come out inline. The cluster run of the
same notebook is tests/cluster/test_notebook_cluster.py."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from sparkfab import notebook, samples
from sparkfab.localjob import local_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
PLOTS_DIR = REPO / ".cache" / "notebook-test-local"


def test_the_shipped_notebook_runs_every_cell_in_local_mode(
    demo_weights_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    images = tmp_path / "images"
    n = samples.generate(images, per_class=2)
    for key, value in local_env().items():
        if key.startswith(("JAVA", "PYSPARK")):
            monkeypatch.setenv(key, value)
    # What the launcher gives a kernel on the cluster, for local mode here.
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS",
                       "--master local[2] --conf spark.ui.port=0 pyspark-shell")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "job"))
    raw = json.loads((REPO / "notebooks" / "featurize_pca.ipynb").read_text())
    nb = nbformat.reads(json.dumps(notebook.with_parameters(raw, {
        "INPUT": str(images), "OUTPUT": str(tmp_path / "out"),
        "WEIGHTS": str(demo_weights_file), "INPUT_SIZE": 96, "BATCH_SIZE": 4, "K": 3,
        "IMAGES_PER_PARTITION": 4})), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"featurized {n}, failed 0" in text, text
    assert "k = 3;" in text
    pngs = [o["data"]["image/png"] for c in nb.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # explained variance, PC1/PC2
    assert all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    # Kept for a look (README's notebook section shows them), as the executed notebook is.
    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    for name, png in zip(("explained_variance.png", "pca_scatter.png"), pngs, strict=True):
        (PLOTS_DIR / name).write_bytes(base64.b64decode(png))
    nbformat.write(nb, PLOTS_DIR / "featurize_pca.executed.ipynb")
    assert sorted(os.listdir(tmp_path / "out")) >= ["explained_variance.png",
                                                    "features.parquet", "pca_matrix.csv",
                                                    "pca_scatter.png"]
