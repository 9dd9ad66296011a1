"""kill -9 leaves nothing running: DeepSpeed ranks stop with their launcher, and the resume loses and
duplicates nothing. (sample.py's vLLM processes: tests/test_sample.py, in the run it already kills.)"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script, session_processes, wait_until_gone
from test_train import DS_ENV, read_log, write_data

import runs


def test_launcher_ancestors_without_a_launcher_is_empty():
    assert runs.launcher_ancestors() == [] and runs.exit_with_launcher() == []  # pytest is no launcher


STAGE = """
import subprocess, sys, time
sys.path.insert(0, {root!r})
import runs
runs.reap_children_on_death()
kid = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"])
time.sleep(1.5)  # the reaper has seen the tree
print("READY", flush=True)
time.sleep(60)
"""


def test_children_and_grandchildren_die_with_a_killed_parent():
    """The watchdog of runs.reap_children_on_death (what make_llm starts before vLLM's engine processes)."""
    p = subprocess.Popen([sys.executable, "-c", STAGE.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        assert len(session_processes(p.pid)) == 4  # the "stage", its reaper, a child and a grandchild
        p.send_signal(signal.SIGKILL)
        p.wait()
        left = wait_until_gone(p.pid, 5.0)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, left


@pytest.mark.slow
def test_kill_deepspeed_launcher_stops_its_ranks_then_resume(tmp_path, tokenizer, random_qwen2):
    write_data(tmp_path / "d.jsonl", tokenizer, n=48)
    out = tmp_path / "o"
    args = ["--model", random_qwen2, "--data", tmp_path / "d.jsonl", "--output_dir", out, "--global_batch_size", 2,
            "--epochs", 1, "--lr", 1e-3, "--save_steps", 3, "--lr_scheduler", "constant", "--warmup_ratio", 0]
    ds = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or "deepspeed"
    cmd = [ds, "--num_gpus", "2", "--master_port", "29651", "train.py", *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **DS_ENV}
    log_path = out / "train_log.jsonl"
    with open(tmp_path / "run1.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 400
        try:
            while time.time() < deadline and proc.poll() is None:
                if log_path.exists() and log_path.read_text().count("\n") >= 4:
                    break
                time.sleep(0.05)
        finally:
            ranks = [c for c in session_processes(proc.pid).values() if "train.py" in c]
            proc.send_signal(signal.SIGKILL)  # the `deepspeed` launcher alone
            proc.wait()
            left = wait_until_gone(proc.pid, 5.0)
            if left:
                os.killpg(proc.pid, signal.SIGKILL)
    run1 = (tmp_path / "run1.log").read_text()
    assert len(ranks) >= 3, (ranks, run1[-3000:])  # the launcher's launch.py and the two ranks were running
    assert not left, left  # ... and nothing of the run outlived the launcher by 5 s
    steps = [r["step"] for r in read_log(out)]
    assert 4 <= len(steps) < 24 and not json.loads((out / "meta.json").read_text())["finished"], run1[-3000:]
    time.sleep(1)
    assert [r["step"] for r in read_log(out)] == steps  # nobody writes any more

    # the same command with --resume finishes: every step logged once, in order
    p = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [r["step"] for r in read_log(out)] == list(range(1, 25))
    assert json.loads((out / "meta.json").read_text())["finished"]

    # the train data rewritten at the same path is not "already trained" (refused before the model loads)
    same = run_script("train.py", *args, env=DS_ENV, timeout=120)
    assert "already trained" in same.stdout
    write_data(tmp_path / "d.jsonl", tokenizer, n=48, seed=1)
    p = run_script("train.py", *args, env=DS_ENV, check=False, timeout=120)
    assert p.returncode == 2 and f"the data file {(tmp_path / 'd.jsonl').resolve()} changed" in p.stderr, p.stderr
