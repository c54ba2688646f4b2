"""The real single-node Slurm (tests/slurm/slurm_up.sh) for the tests in this folder.

Every test here is marked ``slurm``. When Slurm cannot be brought up (not root, no apt, no
network to the Debian mirror), each test is skipped with the reason in pytest's summary
(-ra, in pyproject's addopts), never silently.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

UP = Path(__file__).with_name("slurm_up.sh")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slurm)


def _answers() -> bool:
    """sinfo and sacct already work (a cluster is up)."""
    if not (shutil.which("sinfo") and shutil.which("sacct")):
        return False
    try:
        for cmd in (["sinfo", "-h", "-o", "%T"], ["sacct", "-n", "-X", "-S", "now-1minutes"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@pytest.fixture(scope="session")
def slurm():
    if _answers():
        return True
    try:
        r = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=900)
        ok, said = r.returncode == 0, (r.stderr or r.stdout).strip()
    except (OSError, subprocess.SubprocessError) as e:
        ok, said = False, str(e)
    if not ok:
        reason = f"no real Slurm on this machine: {said.splitlines()[-1] if said else 'slurm_up.sh failed'}"
        pytest.skip(reason)
    return True
