"""The shared module: JSONL I/O and its errors, resume, settings guard, question registry, chat formatting."""
import gzip
import json

import pytest

import common as c
import grading
import models
import runs
import sources


def test_read_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(c.DataError, match=r"x\.jsonl:3: not valid JSON"):
        c.read_jsonl(p)
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(c.DataError, match=r"x\.jsonl:2: expected a JSON object"):
        c.read_jsonl(p)
    with pytest.raises(c.DataError, match="file not found"):
        c.read_jsonl(tmp_path / "missing.jsonl")


def test_read_jsonl_gz(tmp_path):
    p = tmp_path / "x.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write('{"id": "a"}\n{"id": "b"}\n')
    assert [r["id"] for r in c.read_jsonl(p)] == ["a", "b"]


def test_require_field_errors():
    with pytest.raises(c.DataError, match=r"f:3: missing field 'question'"):
        c.require({"q": 1}, "question", "f:3")
    with pytest.raises(c.DataError, match=r"f:3: field 'question' must be str, got int"):
        c.require({"question": 1}, "question", "f:3")


def test_atomic_write_and_resume_cuts_torn_line(tmp_path):
    p = tmp_path / "out.jsonl"
    c.write_jsonl(p, [{"id": "a", "x": 1}])
    c.append_jsonl(p, [{"id": "b", "x": 2}])
    with open(p, "a") as f:  # a writer killed mid-line
        f.write('{"id": "c", "x"')
    done = c.load_finished(p)
    assert list(done) == ["a", "b"]
    assert p.read_text().endswith("}\n")
    assert not list(tmp_path.glob(".*tmp*"))


def test_check_settings(tmp_path):
    meta = tmp_path / "m.json"
    assert runs.check_settings(meta, {"a": 1}, overwrite=False, what="out") is False
    c.write_json(meta, {"settings": {"a": 1}})
    assert runs.check_settings(meta, {"a": 1}, overwrite=False, what="out") is True
    with pytest.raises(c.DataError, match=r"other settings \(a: 1 -> 2\).*--overwrite"):
        runs.check_settings(meta, {"a": 2}, overwrite=False, what="out")
    assert runs.check_settings(meta, {"a": 2}, overwrite=True, what="out") is False


EXPECTED = {  # name: (count, first gold)
    "gsm8k": (1319, "18"), "math500": (500, "\\left( 3, \\frac{\\pi}{2} \\right)"), "aime24": (30, "204"),
    "aime25": (30, "70"), "amc23": (40, "27"), "minerva": (272, "1.6"), "minerva_short": (272, "1.6"),
    "mmlu_pro": (12032, "I"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_benchmarks(name):
    qs = sources.load_questions(name)
    n, gold = EXPECTED[name]
    assert len(qs) == n and qs[0]["gold"] == gold
    assert all(isinstance(q["id"], str) and q["question"].strip() and q["gold"] for q in qs)
    assert len({q["id"] for q in qs}) == n


def test_registry_details():
    math = sources.load_questions("math500")
    assert {q["level"] for q in math} == {1, 2, 3, 4, 5}
    mmlu = sources.load_questions("mmlu_pro", limit=3)
    assert mmlu[0]["answer_type"] == "mc" and "\nA. " in mmlu[0]["question"]  # QFFT's format: A. text
    assert sources.load_questions("amc23")[0]["gold"] == "27"  # 27.0 in the file
    assert len(sources.load_questions("prm12k")) == 12000 and len(sources.load_questions("gsm8k_train")) == 7473


def test_gpqa_from_path_is_shuffled_with_fixed_seed(gpqa_path):
    a = sources.load_questions("gpqa", data_path=gpqa_path)
    b = sources.load_questions("gpqa", data_path=gpqa_path)
    assert len(a) == 198 and a == b
    golds = [q["gold"] for q in a]
    assert set(golds) == set("ABCD") and max(golds.count(x) for x in "ABCD") < 80  # actually shuffled
    assert all("\nD. " in q["question"] and q["question"].endswith(grading.MC_INSTRUCTION) for q in a)


def test_local_file_sources(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"problem": "1+1?", "answer": 2.0}) + "\n" + json.dumps({"problem": "2+2?"}) + "\n")
    qs = sources.load_questions(str(p))
    assert qs[0]["gold"] == "2" and qs[1]["gold"] is None
    assert qs[0]["id"] == sources.stable_id("1+1?")
    p.write_text(json.dumps({"q": "x"}) + "\n")
    with pytest.raises(c.DataError, match=r"q\.jsonl:1: no question field"):
        sources.load_questions(str(p))
    p.write_text(json.dumps({"id": 1, "question": "a"}) + "\n" + json.dumps({"id": 1, "question": "b"}) + "\n")
    with pytest.raises(c.DataError, match=r"q\.jsonl:2: duplicate id '1' \(first at .*q\.jsonl:1\)"):
        sources.load_questions(str(p))
    p.write_text("")
    with pytest.raises(c.DataError, match="empty"):
        sources.load_questions(str(p))
    pq = tmp_path / "q.parquet"
    import pandas as pd
    pd.DataFrame({"question": ["a", "b"], "answer": ["1", "2"], "id": ["x", "y"]}).to_parquet(pq)
    assert [q["id"] for q in sources.load_questions(str(pq))] == ["x", "y"]
    with pytest.raises(c.DataError, match="no such file"):
        sources.load_questions(str(tmp_path / "nope.jsonl"))


def test_chat_formatting_goes_through_the_template(tokenizer):
    p = models.render_prompt(tokenizer, "What is 1+1?", models.EVAL_SYSTEM_PROMPT)
    assert p == ("<|im_start|>system\n" + models.EVAL_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\nWhat is 1+1?"
                 "<|im_end|>\n<|im_start|>assistant\n")
    # no system message: the template's own default appears (SmolLM2 has one, as Qwen2.5 does)
    assert "You are a helpful AI assistant named SmolLM" in models.render_prompt(tokenizer, "q", None)
    assert models.end_of_turn(tokenizer) == "<|im_end|>\n"
    assert models.resolve_system_prompt("eval") == models.EVAL_SYSTEM_PROMPT
    assert models.resolve_system_prompt("none") is None
    assert models.resolve_system_prompt("x", no_system_prompt=True) is None


def test_last_boxed():
    assert grading.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert grading.last_boxed("\\boxed 5") == "5"
    assert grading.last_boxed("no box") is None
    assert grading.last_boxed("\\boxed{cut") is None
    # one parser for every stage: spaces before the brace, brace-less boxes, a cut-off last box skipped
    assert grading.last_boxed("\\boxed {12}") == "12"
    assert grading.last_boxed("so \\boxed 5.") == "5."
    assert grading.last_boxed("\\fbox{7} then \\boxed{cut") == "7"
    assert grading.last_boxed("\\boxedx{3}") is None
    text = "a \\boxed{1} b \\boxed{\\frac{1}{2}}"
    assert [text[s:e] for s, e in grading.boxed_spans(text)] == ["1", "\\frac{1}{2}"]
    s, e = grading.last_boxed_span(text)
    assert text[s:e] == "\\frac{1}{2}"


def test_reflection_detector():
    pat = grading.reflect_pattern("wait")
    assert grading.first_reflection("ok. Wait, no", pat) == 4
    assert grading.first_reflection("awaiting the bus", pat) is None
    assert grading.first_reflection("x", grading.reflect_pattern("hmm, alternatively")) is None


def test_chat_template_file_in_every_stage(tiny_model, tmp_path):
    """models.set_chat_template: sample.py, prepare.py and evaluate.py take --chat_template FILE; a missing or broken
    file stops each of them with one line (exit 2) before any engine starts."""
    from transformers import AutoTokenizer
    from conftest import run_script
    tok = AutoTokenizer.from_pretrained(tiny_model)
    digest = models.set_chat_template(tok, str(c.ROOT / "configs" / "upft_llama31.jinja"))
    assert len(digest) == 16 and models.render_prompt(tok, "Q", None).endswith(
        "<|start_header_id|>system<|end_header_id|>\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert models.end_of_turn(tok) == "<|eot_id|>" and models.set_chat_template(tok, None) is None
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ messages[0]['content'] ")
    with pytest.raises(c.DataError, match=r"bad\.jinja:1: not a valid Jinja chat template"):
        models.set_chat_template(None, str(bad))
    # (prepare.py's CLI: tests/test_prepare.py::test_chat_template_file)
    for script, args, path, msg in (
            ("sample.py", ["--data", "math500", "--limit", "1", "--output", tmp_path / "s.jsonl"], bad,
             "not a valid Jinja chat template"),
            ("evaluate.py", ["--benchmarks", "math500", "--limit", "1", "--output_dir", tmp_path / "e"],
             tmp_path / "no.jinja", "cannot read the chat template")):
        p = run_script(script, "--model", tiny_model, "--chat_template", path, *args, check=False, timeout=300)
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 2 and last.startswith("error: ") and msg in last, (script, p.stderr[-500:])
    assert not (tmp_path / "e").exists() and not (tmp_path / "s.jsonl").exists()

def test_one_set_of_default_field_names_for_every_stage(tmp_path):
    """sample.py/evaluate.py (sources.load_questions) and prepare.py try the same question and answer fields."""
    import prepare
    p = tmp_path / "q.jsonl"
    p.write_text('{"instruction": "What is 2+2?", "final_answer": "4"}\n')
    (q,) = sources.load_questions(str(p))
    assert (q["question"], q["gold"], q["answer_type"]) == ("What is 2+2?", "4", "math")
    assert prepare.QUESTION_FIELDS == sources.QUESTION_FIELDS and prepare.ANSWER_FIELDS == sources.ANSWER_FIELDS


def test_one_reader_of_an_evaluate_output_directory(tmp_path):
    import rak
    for name in ("math500", "gsm8k", "custom", ".math500.jsonl.tmp1", "aime24.partial"):
        (tmp_path / f"{name}.jsonl").write_text("")
    (tmp_path / "metrics.json").write_text("{}")
    files = sources.eval_output_files(tmp_path)
    assert list(files) == ["gsm8k", "math500", "custom"]
    assert rak.list_benchmarks("r", str(tmp_path)) == files
