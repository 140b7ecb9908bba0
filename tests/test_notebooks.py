"""Execute every walkthrough in notebooks/, in order, without Jupyter.

Each notebook is read as nbformat v4 JSON and its code cells are run with `exec` in one fresh
namespace per notebook (matplotlib's Agg backend, cwd and `tempfile` pointed at a tmp dir so nothing
is written into the repository). A failure names the notebook and the code cell. The notebooks
assert what they show against closed forms (e.g. PF-ODE log-likelihood of the exact denoiser vs the
exact log-density, bitwise batch-size invariance of `sample`), so a run that reaches the end is a
real check; `test_notebook_is_clean` makes sure they keep those asserts and are committed without
outputs. Set DIFFUSION_JAX_NOTEBOOK_SMALL=1 to run them on smaller sizes.
"""

import json
import linecache
import os
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import jax
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ("01_formulations_and_samplers.ipynb", "02_train_toy.ipynb")
MIN_ASSERTS = 5  # per notebook: the walkthroughs check what they show


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _code_cells(nb: dict) -> list[str]:
    return [_source(c) for c in nb["cells"] if c["cell_type"] == "code"]


def test_expected_notebooks_present():
    names = [p.name for p in NOTEBOOKS]
    for name in EXPECTED:
        assert name in names, f"notebooks/{name} is missing; found {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    nb = _load(path)
    assert nb["nbformat"] == 4, f"{path.name}: nbformat {nb['nbformat']}, expected 4"
    assert isinstance(nb.get("metadata"), dict)
    for i, cell in enumerate(nb["cells"]):
        assert cell["cell_type"] in ("code", "markdown", "raw"), f"{path.name} cell {i}: {cell['cell_type']}"
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i}: commit notebooks without outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i}: has an execution count"
    code = "\n".join(_code_cells(nb))
    n_asserts = code.count("assert")
    assert n_asserts >= MIN_ASSERTS, (
        f"{path.name}: only {n_asserts} asserts; notebooks must check their claims"
    )
    assert any(c["cell_type"] == "markdown" for c in nb["cells"]), f"{path.name}: no explanation cells"


@pytest.fixture
def notebook_env(tmp_path, monkeypatch):
    """Agg backend, cwd and tempfile in tmp_path; restores jax_enable_x64 (a notebook may set it)."""
    import matplotlib

    monkeypatch.setenv("MPLBACKEND", "Agg")
    matplotlib.use("Agg", force=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x64 = bool(jax.config.jax_enable_x64)
    yield tmp_path
    import matplotlib.pyplot as plt

    plt.close("all")
    jax.config.update("jax_enable_x64", x64)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, notebook_env):
    import matplotlib.pyplot as plt

    cells = _code_cells(_load(path))
    namespace = {"__name__": "__main__", "__file__": str(path)}
    start = time.perf_counter()
    for i, src in enumerate(cells):
        filename = f"<{path.name} code cell {i}>"
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)  # readable tracebacks
        try:
            code = compile(src, filename, "exec")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() under Agg
                exec(code, namespace)
        except Exception as e:
            tb = traceback.format_exc()
            raise AssertionError(f"{path.name}: code cell {i} failed: {type(e).__name__}: {e}\n{tb}") from e
        finally:
            plt.close("all")
            linecache.cache.pop(filename, None)
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {len(cells)} code cells in {elapsed:.1f} s")
    assert os.getcwd() == str(notebook_env)
