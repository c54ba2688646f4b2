"""The data stage's memory and speed at several corpus sizes: peak memory must not grow with
the corpus (the paper's OpenWebText is 8M documents, ~9B tokens).

For each size, an OpenWebText-like corpus of parquet shards and a GPT-2-format tokenizer
(tests/paper_files.py) are written, then ``tokendrift prepare`` runs in a subprocess, exactly
as the Snakemake rule runs it, while this script samples the memory of its process tree every
20 ms:

* anonymous memory (RssAnon, summed over the tree): what the stage itself holds; this is
  the figure that must stay flat;
* resident set (RSS): also counts the pages of the memory-mapped Arrow files that the kernel
  keeps cached, which it can drop at any time.

    python bench/prepare_data.py                      # 4,000 and 16,000 documents (4x)
    python bench/prepare_data.py --docs 2000 8000 32000 --num-proc 2

Prints a table and writes bench/results/prepare_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.paper_files import write_corpus, write_gpt2_tokenizer  # noqa: E402
from tokendrift.core import config as configlib  # noqa: E402


def anon_kib(p: psutil.Process) -> int:
    try:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(anonymous KiB, RSS KiB) summed over a process and its children."""
    anon = rss = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            rss += p.memory_info().rss // 1024
            anon += anon_kib(p)
        except psutil.NoSuchProcess:
            pass
    return anon, rss


def measure(n_docs: int, num_proc: int, work: Path, tokenizer_dir: Path) -> dict:
    corpus = work / f"owt{n_docs}"
    write_corpus(corpus, n_docs, shards=max(1, n_docs // 4000))
    cfg = {
        "kind": "openwebtext",
        "path": str(corpus),
        "data_files": "data/train-*.parquet",
        "tokenizer": str(tokenizer_dir),
        "n_valid_docs": max(1, n_docs // 100),
        "num_proc": num_proc,
        "cache_dir": str(work / f"cache{n_docs}"),
    }
    env = {
        **os.environ,
        "HF_HOME": str(work / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    t0 = time.perf_counter()
    proc = psutil.Popen(
        [sys.executable, "-m", "tokendrift.cli", "prepare", *configlib.option_args("source", cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_anon = peak_rss = 0
    while proc.poll() is None:
        anon, rss = tree_memory(proc)
        peak_anon, peak_rss = max(peak_anon, anon), max(peak_rss, rss)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed for {n_docs} documents:\n{err[-3000:]}")
    stats = json.loads(out.strip().splitlines()[-1])
    tokens = stats["tokens"]["train"] + stats["tokens"]["valid"]
    return {
        "docs": n_docs,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "stage_s": stats["seconds"],
        "tokens_per_s": round(tokens / stats["seconds"]),
        "peak_anon_mib": round(peak_anon / 1024, 1),
        "peak_rss_mib": round(peak_rss / 1024, 1),
        "num_proc": num_proc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[4000, 16000])
    ap.add_argument("--num-proc", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "prepare_data.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok_dir = work / "gpt2"
        write_gpt2_tokenizer(tok_dir, write_corpus(work / "tok_corpus", 500), 512)
        rows = [measure(n, args.num_proc, work, tok_dir) for n in args.docs]
    print(f"{'docs':>8} {'tokens':>11} {'stage s':>8} {'tokens/s':>10} {'peak anon MiB':>14} {'peak RSS MiB':>13}")
    for r in rows:
        print(
            f"{r['docs']:>8} {r['tokens']:>11} {r['stage_s']:>8.2f} {r['tokens_per_s']:>10} "
            f"{r['peak_anon_mib']:>14} {r['peak_rss_mib']:>13}"
        )
    growth = rows[-1]["peak_anon_mib"] / rows[0]["peak_anon_mib"]
    print(f"corpus x{rows[-1]['tokens'] / rows[0]['tokens']:.1f}: peak anonymous memory x{growth:.2f}")
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "anon_growth": round(growth, 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
