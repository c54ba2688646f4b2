"""The minor page faults of a training step with glibc's malloc as it starts and as every pipeline
job tunes it (tokendrift.core.utils.tune_allocator: mmap threshold 32 MiB, trim threshold 2 GiB).

    python bench/page_faults.py            # 12 TokenDrift steps of the tiny DiT, length 64, batch 16

Each setting runs in a fresh process (mallopt acts once per process) with one thread and no
MALLOC_*/GLIBC_TUNABLES/LD_PRELOAD of the user; the faults of each step are read from
getrusage. Prints both series and their steady-state medians (steps 5-12), and writes
bench/results/page_faults.json. Target: tuned steady faults under a tenth of the default's
(measured on the 2-core CI machine: 2,000-18,000 a step as glibc starts, 0-500 tuned). A glibc
that does not fault the step's buffers back in (steady default under 500) has nothing to cut:
the script says so and the target does not apply. Linux with glibc only.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokendrift.core.utils import user_malloc_settings  # noqa: E402

STEPS = 12
STEADY = slice(4, None)  # after the first steps' one-time allocations
# The bench's CPU setting of bench/step_overhead.py (activations far above glibc's initial 128 KiB
# mmap threshold); prints whether the allocator was tuned, then the minor page faults of each step.
SCRIPT = """
import resource, sys, tempfile, torch
from pathlib import Path
from tokendrift.jobs import train as T
from tests.paper_files import random_model_dir
from tokendrift.core.utils import tune_allocator
from tokendrift.core.data import make_source
print(tune_allocator() if sys.argv[1] == "tuned" else False)
torch.manual_seed(0)
src = make_source({"kind": "synthetic", "length": 64})
init = random_model_dir(Path(tempfile.mkdtemp()) / "mdlm", "mdlm", src.config, src.vocab_size + 1, 64, "tiny")
s = T.build(T.resolve_config({"variant": "tokendrift", "init": str(init), "global_batch": 16, "micro_batch": 16,
                              "device": "cpu", "optim": {"warmup_steps": 0}}))
opt, noise = torch.optim.AdamW(s.model.parameters(), lr=1e-5), torch.Generator().manual_seed(0)
for k in range(int(sys.argv[2])):
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    T.micro_step(s, s.model, s.source.batch("train", k, 16), noise, {}).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
"""


def run_steps(mode: str) -> tuple[bool, list[int]]:
    """(whether the allocator was tuned, the minor faults of each step) in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if k not in user_malloc_settings()}
    env = {**clean, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), clean.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(STEPS)], capture_output=True, text=True, check=True, env=env, cwd=REPO
    )
    applied, *faults = out.stdout.split()
    return applied == "True", [int(f) for f in faults]


def main() -> int:
    if not sys.platform.startswith("linux"):
        print("glibc's mallopt: Linux only")
        return 2
    applied, tuned = run_steps("tuned")
    _, default = run_steps("default")
    steady_default, steady_tuned = statistics.median(default[STEADY]), statistics.median(tuned[STEADY])
    applies = steady_default >= 500
    met = applied and steady_tuned < 0.1 * steady_default
    print(f"minor page faults per step (tiny DiT, length 64, batch 16, {STEPS} steps, 1 thread)")
    print(f"  glibc default: {default}  steady median {steady_default:.0f}")
    print(f"  tuned ({'applied' if applied else 'NOT applied'}): {tuned}  steady median {steady_tuned:.0f}")
    if not applies:
        print("  this glibc does not fault the step's buffers back in: nothing to cut, target does not apply")
    else:
        print(f"  target tuned < 0.1 x default: {'met' if met else 'NOT met'} ({steady_tuned / steady_default:.3f})")
    out = REPO / "bench" / "results" / "page_faults.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load_avg_1m": os.getloadavg()[0],
                    "libc": " ".join(platform.libc_ver()),
                },
                "steps": STEPS,
                "tuned_applied": applied,
                "faults_default": default,
                "faults_tuned": tuned,
                "steady_median_default": steady_default,
                "steady_median_tuned": steady_tuned,
                "target": "steady tuned < 0.1 x steady default (when the default faults >= 500 a step)",
                "target_applies": applies,
                "target_met": met if applies else None,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0 if (met or not applies) else 1


if __name__ == "__main__":
    sys.exit(main())
