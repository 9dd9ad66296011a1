"""Training across nodes as recipes/slurm/train.sbatch runs it: one `torchrun` per node with a rendezvous on the
first node. Two torchrun "nodes" on 127.0.0.1 (one rank each) train exactly as one node with two ranks; killing
one node stops both; the same commands with --resume finish the run, every step logged once."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, listening_sockets, non_loopback
from test_train import DS_ENV, assert_same_run, read_log, write_data

import runs

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **DS_ENV,
       "GLOO_SOCKET_IFNAME": "lo"}  # gloo's own connections on the loopback interface


def torchrun(nnodes: int, node_rank: int, nproc: int, port: int, *args) -> list[str]:
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    return [exe, "--nnodes", str(nnodes), "--node_rank", str(node_rank), "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "train.py", *map(str, args)]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, log):
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_two_torchrun_nodes_train_as_one_node_die_together_and_resume(tmp_path, tokenizer, random_qwen2):
    write_data(tmp_path / "d.jsonl", tokenizer, n=48)
    args = ["--model", random_qwen2, "--data", tmp_path / "d.jsonl", "--global_batch_size", 2, "--epochs", 1,
            "--lr", 1e-3, "--save_steps", 3, "--lr_scheduler", "constant", "--warmup_ratio", 0]
    one, two = tmp_path / "one", tmp_path / "two"
    p = subprocess.run(torchrun(1, 0, 2, free_port(), *args, "--output_dir", one), cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    # two nodes; node 1's torchrun is killed (kill -9) once a few steps are logged
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    port = free_port()
    nodes = [start(torchrun(2, i, 1, port, *args, "--output_dir", two), logs[i]) for i in range(2)]
    sockets: set = set()
    seen: dict[int, int] = {}  # every process of both nodes (torchrun starts its ranks in sessions of their own)

    def alive():
        return {p: s for p, s in seen.items() if (st := runs._proc_stat(p)) and st[2] == s}
    try:
        deadline = time.time() + 400
        while time.time() < deadline and all(n.poll() is None for n in nodes):
            for n in nodes:
                seen.update(runs._descendants(n.pid))
            sockets.update(listening_sockets(set(runs._descendants(nodes[0].pid)) | {nodes[0].pid}))
            if (two / "train_log.jsonl").exists() and len(read_log(two)) >= 4:
                break
            time.sleep(0.1)
        ranks = [p for p in seen if "train.py" in runs._cmdline(p)[:4]]  # python -u train.py ... (not torchrun)
        nodes[1].send_signal(signal.SIGKILL)
        t0 = time.time()
        rc0 = nodes[0].wait(timeout=120)  # node 0 sees its peer gone and stops
        stopped_after = time.time() - t0
        while alive() and time.time() < t0 + 15:
            time.sleep(0.2)
        left = {p: " ".join(runs._cmdline(p))[:80] for p in alive()}
    finally:
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
            n.wait()
        for p in alive():
            os.kill(p, signal.SIGKILL)
        for f in logs:
            f.close()
    out0, out1 = ((tmp_path / f"node{i}.log").read_text() for i in range(2))
    assert len(ranks) == 2, (ranks, seen, [n.returncode for n in nodes], out0[-3000:], out1[-3000:])
    assert rc0 != 0 and not left, (rc0, left, out0[-2000:])
    steps = [r["step"] for r in read_log(two)]
    assert 4 <= len(steps) < 24, f"{len(steps)} steps before the kill; node 0 stopped {stopped_after:.1f} s after it"
    time.sleep(1)
    assert [r["step"] for r in read_log(two)] == steps  # nobody writes any more
    # torch's TCPStore (the rendezvous, on --master_port) listens on every interface whatever --master_addr is
    # (torch 2.13 has no option for its bind address); everything else must be on loopback
    store = [(a, pid) for a, pid in sockets if a.endswith(f":{port}")]
    bad = [x for x in non_loopback(sockets) if x not in store]
    assert store and not bad, f"{len(bad)} of {len(sockets)} sockets of node 0 beyond loopback: {bad}"

    # the same two commands with --resume finish the run: every step once, the same losses and weights as one node
    port = free_port()
    nodes = [subprocess.Popen(torchrun(2, i, 1, port, *args, "--output_dir", two, "--resume"), cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert [r["step"] for r in read_log(two)] == list(range(1, 25))
    assert_same_run(one, two)
