"""The MLflow comparison as a user sees it: `tokendrift track` imports a CI-size study, `mlflow
server` serves its store on 127.0.0.1, and headless Chromium renders the page of Table 1's
parent run (MLflow's UI is a React app: the page is read after its JavaScript ran). The page
must list the child runs, one per row and seed, and the rows' mean Gen.-PPL per NFE.

The study's score files are written here at the CI grid's paths (tokendrift.grid.layout.Layout) rather
than by a second run of the DAG; the import, the server and the browser are the real ones.

    python tests/test_mlflow_ui.py DIR [CONFIG] [OUT.png]
screenshots the same page for the study under DIR (docs/running.md: docs/img/mlflow_table1.png).
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM_FLAGS, CI, REPO, SCHEMA

BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = [*CHROMIUM_FLAGS, "--hide-scrollbars"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(db: Path, timeout=180):
    """`mlflow server` over a SQLite store on 127.0.0.1; stopped (its whole process group) on exit."""
    port = free_port()
    log = open(db.parent / "mlflow_server.log", "w")
    p = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert p.poll() is None and time.time() < deadline, (db.parent / "mlflow_server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url, port
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()


def chromium(url: str, *args, budget_ms=20000, timeout=180) -> str:
    """Headless Chromium on one page, its JavaScript run for `budget_ms` of virtual time."""
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def page_text(dom: str) -> str:
    """The rendered page's visible text, one element's text a line."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
    return "\n".join(t.strip() for t in html.unescape(re.sub(r"<[^>]+>", "\n", dom)).splitlines() if t.strip())


def parent_page(db: Path, experiment: str, table: str) -> str:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    exp = c.get_experiment_by_name(experiment)
    parent = c.search_runs([exp.experiment_id], filter_string=f"tags.table = '{table}' and tags.kind = 'table'")
    assert len(parent) == 1
    return f"/#/experiments/{exp.experiment_id}/runs/{parent[0].info.run_id}"


def write_scores(g, wd: Path) -> None:
    """Score and NELBO files of every checkpoint of the grid, with distinct values per cell."""
    from tokendrift.core.records import write_record

    for i, u in enumerate(g.units):
        for t, n in g.cells(u):
            f = wd / g.score_file(u, t, n)
            f.parent.mkdir(parents=True, exist_ok=True)
            write_record(
                f,
                {
                    "gen_ppl": 300.0 / n * t + 1.37 * i + 0.011 * u.seed,
                    "entropy": 3.0 + 0.2 * t,
                    "oracle_gen_ppl": 600.0 / n + i,
                },
            )
        write_record(wd / g.nelbo_file(u), {"nelbo": 2.4 + 0.001 * i})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from tokendrift.core.config import load_file
    from tokendrift.grid.layout import Layout

    wd = tmp_path_factory.mktemp("mlflow_ui")
    g = Layout(load_file(CI), SCHEMA)
    write_scores(g, wd)
    r = subprocess.run(
        [str(BIN / "tokendrift"), "track", str(CI), "--schema", str(SCHEMA)],
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return g, wd, wd / g.root / "mlflow.db"


def test_the_parent_run_page_lists_every_row_and_seed_with_gen_ppl(study):
    g, wd, db = study
    with mlflow_server(db) as (url, port):
        text = page_text(chromium(url + parent_page(db, "tokendrift-ci", "table1"), "--dump-dom"))
    assert "table1" in text and "Child runs" in text, text[:2000]
    rows = [r["model"] for r in g.tables["table1"]["rows"] if "model" in r]
    children = {f"{m} seed{s}" for m in rows for s in g.seeds}
    assert set(re.findall(r"^(\w+ seed\d+)$", text, re.M)) == children, text[:3000]
    # the rows' mean Gen.-PPL per NFE, as MLflow prints it, equal to the mean of the seeds' score files
    from tokendrift.grid.sheet import Unit

    for m in rows:
        n = g.nfes[0]
        mean = statistics.mean(
            json.loads((wd / g.score_file(Unit("mdlm", m, s, g.row_step("table1", m)), 1.0, n)).read_text())["gen_ppl"]
            for s in g.seeds
        )
        i = text.index(f"gen_ppl/nfe{n}/{m}")
        value = float(text[i:].splitlines()[1])
        assert value == pytest.approx(mean, rel=1e-9)
    # the server is gone once the test is done with it
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def screenshot(wd: Path, config: Path, out: Path, table: str = "table1") -> None:
    """The page of `table`'s parent run for the study under wd, as PNG."""
    from tokendrift.core.config import load_file
    from tokendrift.grid.layout import Layout

    g = Layout(load_file(config), SCHEMA)
    db = (wd / g.root / "mlflow.db").resolve()
    experiment = g.config["mlflow"]["experiment"] or f"tokendrift-{g.config['name']}"
    with mlflow_server(db) as (url, _):
        chromium(url + parent_page(db, experiment, table), "--window-size=1400,1500", f"--screenshot={out.resolve()}")


if __name__ == "__main__":
    wd = Path(sys.argv[1])
    config = Path(sys.argv[2]) if len(sys.argv) > 2 else CI
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else REPO / "docs" / "img" / "mlflow_table1.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    screenshot(wd, config, out)
    print(out)
