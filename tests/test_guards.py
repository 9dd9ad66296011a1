"""One run per output (locks), one rule for earlier output (resume, refuse or start afresh) and no silently stale
results (input fingerprints); docs/runs.md. Fast: no engine, no model load (the stages refuse before either)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script

import common
import runs

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
import runs
runs.lock_output({out!r})
print("LOCKED", flush=True)
time.sleep(120)
"""


def hold_lock(out):
    """A process that holds the lock of `out` (as a running stage does) until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), out=str(out))], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "LOCKED"
    return p


# ------------------------------------------------------------------------------------------------------ locks
def test_lock_refuses_a_second_holder_and_is_never_stale(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    p = hold_lock(out)
    try:
        with pytest.raises(common.DataError, match=rf"out.jsonl is in use by another run \(pid {p.pid} "):
            runs.lock_output(out)
    finally:
        p.send_signal(signal.SIGKILL)  # a killed holder leaves the lock file, but not the lock
        p.wait()
    assert (tmp_path / "sub" / ".out.jsonl.lock").exists()
    lock = runs.lock_output(out)
    assert lock == tmp_path / "sub" / ".out.jsonl.lock" and f"pid {os.getpid()}" in lock.read_text()
    assert runs.lock_output(out) == lock  # idempotent in the holder


@pytest.mark.parametrize("stage", ["sample", "sample_merge", "prepare", "evaluate", "evaluate_grade_only", "train"])
def test_stages_refuse_an_output_in_use_at_once(tmp_path, tiny_model, stage):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "1+1?", "prompt": "p", "completion": "c",
                                "responses": ["x"]}) + "\n")
    out, argv = {
        "sample": (tmp_path / "s.jsonl", ["sample.py", "--model", tiny_model, "--data", data, "--output",
                                          tmp_path / "s.jsonl"]),
        "sample_merge": (tmp_path / "s.jsonl", ["sample.py", "--merge_shards", "--num_shards", "2", "--output",
                                                tmp_path / "s.jsonl"]),
        "prepare": (tmp_path / "p.jsonl", ["prepare.py", "--mode", "sft", "--model", tiny_model, "--input", data,
                                           "--output", tmp_path / "p.jsonl"]),
        "evaluate": (tmp_path / "ev", ["evaluate.py", "--model", tiny_model, "--output_dir", tmp_path / "ev"]),
        "evaluate_grade_only": (tmp_path / "ev", ["evaluate.py", "--grade_only", "--output_dir", tmp_path / "ev"]),
        "train": (tmp_path / "tr", ["train.py", "--model", tiny_model, "--data", data, "--output_dir",
                                    tmp_path / "tr"]),
    }[stage]
    holder = hold_lock(out)
    try:
        p = run_script(*argv, check=False, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and err[-1].startswith("error: ") and f"in use by another run (pid {holder.pid} " \
        in err[-1], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not (out / "meta.json").exists() and not out.is_file()


# ------------------------------------------------------------------------------------------------ fingerprints
def test_file_fingerprint_sees_a_rewrite_at_the_same_path(tmp_path, monkeypatch):
    f = tmp_path / "d.jsonl"
    f.write_text('{"q": "a"}\n')
    a = runs.file_fingerprint(f)
    os.utime(f, ns=(1, 1))  # touched or copied: same bytes, same input
    assert runs.file_fingerprint(f) == a and "mtime_ns" not in a
    f.write_text('{"q": "b"}\n')  # same size, other content
    b = runs.file_fingerprint(f)
    assert b != a and runs.describe_change(a, b).endswith("changed since this output was made (same size, "
                                                            "other content)")
    # a large file: head + tail hashed, the mtime decides for the middle
    monkeypatch.setattr(runs, "FULL_HASH_BYTES", 10)
    monkeypatch.setattr(runs, "PART_HASH_BYTES", 4)
    f.write_text("0123456789abcdef")
    c = runs.file_fingerprint(f)
    assert "sha256_head_tail" in c and "mtime_ns" in c
    os.utime(f, ns=(2, 2))
    assert runs.file_fingerprint(f) != c
    assert runs.file_fingerprint(f, full=True)["sha256"] == runs.sha256_file(f)


def test_model_fingerprint_sees_a_retrained_model(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"x" * 100)
    (m / "README.md").write_text("not part of the model")
    a = runs.model_fingerprint(str(m))
    assert set(a["weights"]) == {"model.safetensors"} and set(a["files"]) == {"config.json"}
    (m / "README.md").write_text("edited")
    assert runs.model_fingerprint(str(m)) == a
    time.sleep(0.01)
    (m / "model.safetensors").write_bytes(b"y" * 100)  # re-trained: same size, new mtime
    b = runs.model_fingerprint(str(m))
    assert b != a
    assert runs.describe_change(a, b) == (f"the model at {m.resolve()} changed since this output was made "
                                            f"(weights model.safetensors)")
    (m / "config.json").write_text('{"x": 1}')
    assert "config.json" in runs.describe_change(b, runs.model_fingerprint(str(m)))
    assert runs.model_fingerprint("Qwen/Qwen2.5-7B") is None


def test_check_settings_names_the_changed_input(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("a\n")
    meta = tmp_path / "o.meta.json"
    settings = {"n": 1, "data_fingerprint": runs.file_fingerprint(f)}
    common.write_json(meta, {"settings": settings})
    assert runs.check_settings(meta, settings, False, "o")
    f.write_text("bb\n")
    new = {"n": 2, "data_fingerprint": runs.file_fingerprint(f)}
    with pytest.raises(common.DataError) as e:
        runs.check_settings(meta, new, False, "o")
    msg = str(e.value)
    assert msg.startswith(f"o: the data file {f.resolve()} changed since this output was made (size 2 -> 3 bytes)")
    assert "n: 1 -> 2" in msg and "--overwrite" in msg
    assert not runs.check_settings(meta, new, True, "o")
    # output made before fingerprints were recorded: resumed (nothing to compare with)
    common.write_json(meta, {"settings": {"n": 2}})
    assert runs.check_settings(meta, new, False, "o")


def test_claim_output_resumes_refuses_or_starts_afresh(tmp_path):
    """runs.claim_output, the one decision every stage makes about earlier output: the same settings resume (the
    old metadata comes back), other settings are refused, --overwrite and a failed start begin afresh, output
    without metadata is refused only where the stage says so. Nothing on disk changes."""
    meta = tmp_path / "o.meta.json"
    claim = runs.claim_output
    assert claim(meta, {"n": 1}, False, "o") is None  # nothing there
    with pytest.raises(common.DataError, match=r"^o exists without o.meta.json; pass --overwrite"):
        claim(meta, {"n": 1}, False, "o", unowned="o exists without o.meta.json; pass --overwrite to replace it")
    assert claim(meta, {"n": 1}, True, "o", unowned="never raised with --overwrite") is None
    common.write_json(meta, {"settings": {"n": 1}, "finished": ["gsm8k"]})
    before = meta.read_bytes()
    assert claim(meta, {"n": 1}, False, "o") == {"settings": {"n": 1}, "finished": ["gsm8k"]}
    with pytest.raises(common.DataError, match=r"^o was made with other settings \(n: 1 -> 2\); pass --overwrite"):
        claim(meta, {"n": 2}, False, "o")
    assert claim(meta, {"n": 2}, True, "o") is None
    assert claim(meta, {"n": 2}, False, "o", made=False) is None  # a failed start's metadata blocks nothing
    meta.write_text("{torn")
    with pytest.raises(common.DataError, match=r"unreadable metadata; pass --overwrite to start o afresh"):
        claim(meta, {"n": 1}, False, "o")
    assert claim(meta, {"n": 1}, False, "o", made=False) is None
    common.write_json(meta, {"settings": {"n": 1}, "finished": ["gsm8k"]})
    assert meta.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["o.meta.json"]


def test_sample_refuses_an_edited_data_file(tmp_path, tiny_model):
    """sample.py --data edited at the same path: refused, naming the file (no engine: an empty shard)."""
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "q0", "question": "What is 1+1?"}) + "\n")
    args = ["sample.py", "--model", tiny_model, "--data", data, "--output", tmp_path / "s.jsonl", "--num_shards", "2",
            "--shard_index", "1"]
    run_script(*args, timeout=120)
    assert "all already sampled" in run_script(*args, timeout=120).stdout
    data.write_text(json.dumps({"id": "q0", "question": "What is 2+2?"}) + "\n")
    p = run_script(*args, check=False, timeout=120)
    assert p.returncode == 2 and f"the data file {data.resolve()} changed since this output was made" in p.stderr


def test_evaluate_refuses_a_retrained_model(tmp_path, monkeypatch, capsys):
    """A model re-trained at the same path is not 'already done' (generation faked: no engine)."""
    import evaluate
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x" * 64)
    out = tmp_path / "ev"

    def fake_generate(args, tok, pending, system_prompt):
        for bench, qs in pending.items():
            for q in qs:
                yield bench, {"id": q["id"], "question": q["question"], "gold": q["gold"],
                              "answer_type": q["answer_type"], "responses": ["\\boxed{1}"], "num_tokens": [3],
                              "finish_reasons": ["stop"]}

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    monkeypatch.setattr(evaluate, "check_model", lambda args: None)  # a fake model: no tokenizer to load
    argv = ["evaluate.py", "--model", str(model), "--benchmarks", "gsm8k", "--limit", "2", "--output_dir", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    evaluate.main()
    evaluate.main()
    assert "gsm8k: already done" in capsys.readouterr().out
    time.sleep(0.01)
    (model / "model.safetensors").write_bytes(b"y" * 64)  # re-trained at the same path
    with pytest.raises(common.DataError, match=r"the model at .*model changed since this output was made "
                                               r"\(weights model.safetensors\); pass --overwrite"):
        evaluate.main()
