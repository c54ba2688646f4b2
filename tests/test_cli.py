"""The job entry point's process set-up: glibc's malloc keeps freed memory for the next step."""

import os
import statistics
import subprocess
import sys

import pytest

from tokendrift.core.utils import user_malloc_settings

# TokenDrift steps of the tiny DiT at length 64 and batch 16 (the bench's CPU setting, whose
# activations are far above glibc's initial 128 KiB mmap threshold); prints whether the
# allocator was tuned, then the minor page faults of each step.
STEPS = """
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
for k in range(12):
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    T.micro_step(s, s.model, s.source.batch("train", k, 16), noise, {}).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
"""


def run_steps(mode: str, **env) -> tuple[bool, list[int]]:
    user = user_malloc_settings()
    clean = {k: v for k, v in os.environ.items() if k not in user}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={**clean, "OMP_NUM_THREADS": "1", **env})
    applied, *faults = out.stdout.split()
    return applied == "True", [int(f) for f in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_malloc_stops_faulting_the_step_activations_back_in():
    applied, tuned = run_steps("tuned")
    assert applied
    _, default = run_steps("default")
    steady_default, steady_tuned = statistics.median(default[4:]), statistics.median(tuned[4:])
    if steady_default < 500:
        pytest.skip(f"this glibc does not fault the step's buffers back in ({default})")
    # measured here: 2,000-18,000 faults a step with glibc as it starts, 0-500 tuned
    assert steady_tuned < 0.1 * steady_default, (tuned, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_tuned_by_the_user_is_left_alone():
    applied, _ = run_steps("tuned", MALLOC_ARENA_MAX="2")
    assert not applied
