"""openmmtorch's kernels are there whatever the user imported first."""
import json
import subprocess
import sys

import pytest

# A user script that starts the usual way, with openmm, and only then imports this package.
OPENMM_FIRST = """
import json
import openmm as mm
names = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
before = {name: mm.Platform.getPlatformByName(name).supportsKernels(["CalcTorchForce"]) for name in names}
import openmm_actionml
after = {name: mm.Platform.getPlatformByName(name).supportsKernels(["CalcTorchForce"]) for name in names}
print(json.dumps({"before": before, "after": after}))
"""


def test_learned_force_kernels_load_when_openmm_was_imported_first():
    done = subprocess.run([sys.executable, "-c", OPENMM_FIRST], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    kernels = json.loads(done.stdout.strip().splitlines()[-1])
    if kernels["before"]["Reference"]:
        pytest.skip("openmm loaded openmmtorch's plugins without torch here; there is nothing to reload")
    for name in ("Reference", "CPU", "OpenCL"):
        if name in kernels["after"]:
            assert kernels["after"][name], f"{name}: openmmtorch's kernels missing after importing openmm_actionml"
