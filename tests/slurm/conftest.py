"""The real single-node Slurm (tests/slurm/slurm_up.sh) for the tests in this folder.

When it cannot be brought up (not root, no apt, no network to the Debian mirror), every test
here is skipped and the reason is printed in pytest's summary (-ra), never silently.
"""

import subprocess
from pathlib import Path

import pytest

UP = Path(__file__).with_name("slurm_up.sh")


@pytest.fixture(scope="session")
def slurm():
    r = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"no real Slurm on this machine: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
    return True
