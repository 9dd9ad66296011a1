"""The grader (grading.grade / grade_math / extract_choice / grade_many): hard cases from the papers' harnesses, and
gold-vs-gold on every benchmark (each benchmark's own gold answers, and MATH500's / Minerva's reference solutions,
graded as model responses, must score 100%). No vLLM here."""
import pytest

import grading
import sources
from common import DATA_DIR, read_jsonl
from grading import extract_choice, grade, grade_many, last_boxed
from sources import load_questions

MATH_CASES = [
    # (response, gold, expected)
    (r"so \boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\frac{1}{3}}", "0.5", False),
    (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", True),
    (r"\boxed{\tfrac34}", r"\frac34", True),
    (r"\boxed{\dfrac{3}{5}}", r"\frac{3}{4}", False),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{(3, \pi)}", r"\left( 3, \frac{\pi}{2} \right)", False),
    (r"\boxed{1,000}", "1000", True),          # thousands separators, both ways
    (r"\boxed{1000}", "1,000", True),
    (r"\boxed{1{,}000}", "1000", True),
    (r"\boxed{10,080}", "10080", True),
    (r"\boxed{1,001}", "1000", False),
    (r"\boxed{90^\circ}", "90", True),         # units and degrees
    (r"\boxed{90}", r"90^\circ", True),
    (r"\boxed{5\text{ cm}}", "5", True),
    (r"\boxed{18 \text{ dollars}}", "18", True),
    (r"\boxed{\$18}", "18", True),
    (r"\boxed{30\%}", "30", True),
    (r"\boxed{5 \mathrm{~m}}", "5", True),
    (r"\boxed{6^\circ}", "5", False),
    (r"first \boxed{3} then \boxed{4}", "4", True),  # multiple boxes: the last counts
    (r"first \boxed{4} then \boxed{3}", "4", False),
    (r"The answer is 42.", "42", True),        # no box: math-verify's own extraction
    (r"The final answer is $7$.", "7", True),
    (r"The final answer is $8$.", "7", False),
    ("no number here", "3", False),
    (r"\boxed{\text{Monday}}", r"\text{Monday}", True),  # text answers
    (r"\boxed{Monday}", r"\text{Monday}", True),
    (r"\boxed{\text{Tuesday}}", r"\text{Monday}", False),
    (r"\boxed{\text{(C)}}", r"\text{(C)}", True),
    (r"\boxed{(-\infty, 2]}", r"(-\infty,2]", True),   # intervals: endpoints and brackets matter
    (r"\boxed{(-\infty, 2)}", r"(-\infty,2]", False),
    (r"\boxed{[1,3) \cup (4, \infty)}", r"[1,3)\cup(4,\infty)", True),
    (r"\boxed{x \in [-2, 7]}", r"[-2,7]", True),
    (r"\boxed{3\sqrt{2}}", r"\sqrt{18}", True),
    (r"\boxed{x=5}", "5", True),
    (r"\boxed{x_{0} \cos (\omega t)+$ $\dot{x}_{0} \sin (\omega t) / \omega}",  # Minerva #72's stray `$ $`
     r"x_{0} \cos (\omega t)+$ $\dot{x}_{0} \sin (\omega t) / \omega", True),
    (r"\boxed{5", "5", False),                 # a box cut off by max_tokens is no final answer
]


@pytest.mark.parametrize("response,gold,expected", MATH_CASES)
def test_math_hard_cases(response, gold, expected):
    r = grade(response, gold, "math")
    assert r["correct"] is expected, r
    assert r["timeout"] is False


def test_pred_is_the_last_box_and_none_without_answer():
    assert grade(r"\boxed{1} and \boxed{\dfrac{1}{2}}", "0.5")["pred"] == r"\dfrac{1}{2}"
    assert grade("no number here", "3")["pred"] is None
    assert grade(r"\boxed{7}", None) == {"pred": "7", "correct": False, "timeout": False}  # no gold: never correct


MC_FORMS = [r"\boxed{C}", r"\boxed{\text{C}}", r"\boxed{(C)}", r"\boxed{\textbf{(C)}}", r"\boxed{C: 10^-4 eV}",
            r"The answer is $\boxed{C}$", "The answer is (C)", "the answer is C.", r"answer is: $\text{(C)}$",
            "Answer: C", "Answer: (C)", "**Answer:** C", "Answer: **C**", "The correct answer is **C**",
            "I think B. Answer: C", r"\boxed{B} no, wait: \boxed{C}"]


@pytest.mark.parametrize("text", MC_FORMS)
def test_mc_letter_forms(text):
    assert extract_choice(text) == "C"
    assert grade(text, "C", "mc")["correct"] and not grade(text, "B", "mc")["correct"]


@pytest.mark.parametrize("text", ["I am not sure.", r"\boxed{Cat}", r"\boxed{42}", "Answer: K", ""])
def test_mc_no_letter(text):
    assert extract_choice(text) is None
    assert grade(text, "C", "mc") == {"pred": None, "correct": False, "timeout": False}


def test_mc_letters_up_to_j():  # MMLU-Pro has up to 10 options
    assert extract_choice("Answer: J") == "J"
    assert grade(r"\boxed{j}", "J", "mc")["correct"] is False  # a lower-case letter is not an option label


SLOW = r"\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate it: math-verify's signal timeout fires


def test_timeout_in_process_is_wrong_and_flagged():
    r = grade(SLOW, "1", "math", timeout=1)
    assert r == {"pred": "9^{9^{9^{9}}}", "correct": False, "timeout": True}


def test_timeout_inside_worker_processes_is_counted():
    items = [(rf"\boxed{{{i}}}", str(i), "math") for i in range(70)]  # >= 64 items: the spawned-worker path
    items[5] = (SLOW, "1", "math")
    items[40] = (r"\boxed{B}", "B", "mc")
    res = grade_many(items, workers=2, timeout=1)
    assert [r["timeout"] for r in res].count(True) == 1 and res[5]["timeout"] and not res[5]["correct"]
    assert all(r["correct"] for i, r in enumerate(res) if i != 5)  # order preserved, others unaffected


# ------------------------------------------------------------------------------------------------------------
# Gold-vs-gold: no exceptions needed (Minerva #72's stray `$ $` inside its box is handled by the grader).
def _gold_items(name, **kw):
    qs = load_questions(name, **kw)
    if qs[0]["answer_type"] == "mc":
        forms = ["The answer is ({}).", r"\boxed{{{}}}", "Answer: {}"]
        return qs, [(forms[i % 3].format(q["gold"]), q["gold"], "mc") for i, q in enumerate(qs)]
    return qs, [(f"So the final answer is $\\boxed{{{q['gold']}}}$.", q["gold"], "math") for q in qs]


def _assert_all_correct(name, qs, items):
    res = grade_many(items, workers=0)
    bad = [(q["id"], q["gold"], r) for q, r in zip(qs, res) if not r["correct"]]
    assert not bad, f"{name}: {len(bad)} gold answers graded wrong: {bad[:5]}"


@pytest.mark.parametrize("name", ["gsm8k", "math500", "aime24", "aime25", "amc23", "minerva", "minerva_short",
                                  "mmlu_pro"])
def test_gold_vs_gold(name):
    qs, items = _gold_items(name)
    _assert_all_correct(name, qs, items)


def test_gold_vs_gold_gpqa(gpqa_path):
    qs, items = _gold_items("gpqa", data_path=gpqa_path)
    _assert_all_correct("gpqa", qs, items)


@pytest.mark.parametrize("name,file", [("math500", "math500/test.jsonl"), ("minerva", "minerva_math/test.jsonl")])
def test_gold_vs_reference_solutions(name, file):
    """The full reference solutions, graded as responses (their last box is the answer)."""
    qs = load_questions(name)
    sols = read_jsonl(DATA_DIR / "benchmarks" / file)
    assert len(sols) == len(qs)
    _assert_all_correct(name, qs, [(s["solution"], q["gold"], "math") for q, s in zip(qs, sols)])


def test_grader_is_not_trivially_true():
    """Each MATH500 question's gold against the NEXT question's gold: almost all wrong (a few coincide)."""
    qs = load_questions("math500")
    items = [(f"\\boxed{{{qs[(i + 1) % len(qs)]['gold']}}}", q["gold"], "math") for i, q in enumerate(qs)]
    res = grade_many(items, workers=0)
    assert sum(r["correct"] for r in res) < 0.03 * len(qs)


def test_last_boxed_used_by_minerva_gold():
    assert last_boxed(r"x \boxed{1} y \boxed{\frac{a}{b}}") == r"\frac{a}{b}"
    assert sources.REGISTRY["minerva"].gold({"solution": r"so $\boxed{4.5}$ km"}) == "4.5"


def test_grade_many_matches_grade_one_by_one():
    """Dedup of identical (answer, gold) pairs, the box-only input and in-process MC change no result."""
    resp = [r"long text \boxed{5}", r"other text \boxed{5}", r"\boxed{6}", "The answer is 5.", r"\boxed{\frac12}",
            "Answer: B", r"\boxed{C}", "nothing"]
    items = [(r, g, t) for r in resp for g, t in (("5", "math"), ("0.5", "math"), ("B", "mc"), (None, "math"))]
    assert grade_many(items, workers=1) == [grade(r, g, t) for r, g, t in items]
    big = items * 3 + [(rf"\boxed{{{i}}}", "7", "math") for i in range(80)]  # >= 64 distinct: worker processes
    assert grade_many(big, workers=2) == [grade(r, g, t) for r, g, t in big]


def test_grade_many_off_the_main_thread_keeps_timeouts():
    """math-verify's timeouts are SIGALRM, which only the main thread can set: elsewhere grade_many must use a
    worker process rather than grade in-thread (where every item would silently come out wrong)."""
    import threading
    out = {}
    th = threading.Thread(target=lambda: out.update(
        res=grade_many([(SLOW, "1", "math"), (r"\boxed{2}", "2", "math")], workers=1, timeout=1)))
    th.start()
    th.join(60)
    assert out["res"][0]["timeout"] and out["res"][1]["correct"]


# ------------------------------------------------------------------------------------------------------------
# Each paper's extraction rule, golds math-verify misreads, multiple choice, gpqa_open (docs/grading.md)
EXTRACTION_CASES = [
    # (response, gold, {extraction: expected correct})
    ("The answer is 42.", "42", {"box": False, "box_or_answer_is": False, "any": True}),
    ("Some work.\nThe answer is: 42", "42", {"box": False, "box_or_answer_is": True, "any": True}),
    ("The answer is: 42\nbut then more text", "42", {"box": False, "box_or_answer_is": False, "any": True}),
    (r"The answer is: 41 \boxed{42}", "42", {"box": True, "box_or_answer_is": True, "any": True}),
    (r"so it is 5 ... \boxed{5", "5", {"box": False, "box_or_answer_is": False, "any": True}),  # cut off box
]


@pytest.mark.parametrize("response,gold,expected", EXTRACTION_CASES)
def test_extraction_rules(response, gold, expected):
    for extraction, ok in expected.items():
        r = grade(response, gold, "math", extraction=extraction)
        assert r["correct"] is ok, (extraction, r)
        assert not r["correct"] or r["pred"] is not None  # correct implies an extracted answer


def test_box_extraction_gives_no_answer_without_a_box():
    assert grade("The answer is 42.", "42", extraction="box") == {"pred": None, "correct": False, "timeout": False}
    assert grading.extract_answer("x\nThe answer is: 7.", "box_or_answer_is") == "7"
    assert grading.extract_answer("x\nThe answer is: 7.", "box") is None
    items = [("The answer is 42.", "42", "math"), (r"\boxed{42}", "42", "math")]
    assert [r["correct"] for r in grade_many(items, workers=1, extraction="box")] == [False, True]
    assert [r["correct"] for r in grade_many(items, workers=1, extraction="any")] == [True, True]


NORMALISED_CASES = [  # golds and answers math-verify misreads (Minerva's e-notation, np. names), QFFT's leniencies
    (r"\boxed{4.5 \times 10^{33}}", "4.5e33", True),
    (r"\boxed{4.5 \times 10^{34}}", "4.5e33", False),
    (r"\boxed{4.5e33}", r"4.5 \times 10^{33}", True),
    (r"\boxed{2.88 \times 10^{-19}}", "2.88e-19", True),
    (r"\boxed{2.88 \times 10^{-18}}", "2.88e-19", False),   # math-verify's fixed decimals alone say equal
    (r"\boxed{0}", "1e-9", False),
    (r"\boxed{\arcsin\left(\frac{10}{13}\right)}", "np.arcsin(10/13)", True),
    (r"\boxed{\arccos\left(\frac{10}{13}\right)}", "np.arcsin(10/13)", False),
    (r"\boxed{1\,000}", "1000", True),
    (r"\boxed{1\,001}", "1000", False),
    (r"\boxed{45°}", "45", True),
    (r"\boxed{45}", r"45^\circ", True),
    (r"\boxed{46°}", "45", False),
    (r"\boxed{25\%}", r"\frac{1}{4}", True),
    (r"\boxed{25\%}", "0.25", True),
    (r"\boxed{26\%}", r"\frac{1}{4}", False),
    (r"\boxed{10^{-4} \text{ eV}}", "10^-4 eV", True),       # gpqa_open-style text golds: exact text also counts
]


@pytest.mark.parametrize("response,gold,expected", NORMALISED_CASES)
def test_golds_math_verify_misreads(response, gold, expected):
    assert grade(response, gold, "math", extraction="box")["correct"] is expected


MC_LAST_HIT = [
    ("The answer is A at first sight. Checking again... Answer: B", "B"),
    ("Answer: I believe it is (C)", "C"),
    ("So the correct option is B.", "B"),
    ("Hence the choice is (B).", "B"),
    ("ANSWER: B", "B"),
    (r"\boxed{\mathrm{B}}", "B"),
    ("Comparing all four, the best one is\n\n**B**", "B"),
    (r"\boxed{A} is tempting, but the answer is (D)", "D"),
    ("Answer: A good guess would be (C)", "C"),
]


@pytest.mark.parametrize("text,letter", MC_LAST_HIT)
def test_mc_last_hit_by_position(text, letter):
    assert extract_choice(text) == letter


def test_mc_prompt_is_qffts_format():
    q = sources._mc_question("Which?", ["x", "y", "z", "w"])
    assert q == "Which?\n\nA. x\nB. y\nC. z\nD. w\n\n" + grading.MC_INSTRUCTION
    mm = load_questions("mmlu_pro", limit=1)[0]["question"]
    assert "\nA. " in mm and mm.endswith(grading.MC_INSTRUCTION)


def test_gpqa_open_from_the_same_source(gpqa_path):
    mc = load_questions("gpqa", data_path=gpqa_path)
    op = load_questions("gpqa_open", data_path=gpqa_path)
    raw = {r["id"]: r for r in read_jsonl(gpqa_path)}
    assert len(op) == len(mc) == 198 and [q["id"] for q in op] == [q["id"] for q in mc]
    # the question without its options; gold = the correct answer's text. Only ids in messages: GPQA is never printed
    bad = [q["id"] for q in op
           if not (q["answer_type"] == "math" and q["gold"] == raw[q["id"]]["correct_answer"].strip()
                   and q["question"] == raw[q["id"]]["question"].strip()
                   and grading.MC_INSTRUCTION not in q["question"])]
    assert not bad, f"gpqa_open records that differ from the source: ids {bad[:5]}"


# Gold-vs-LaTeX: every gold as a model writes it (bench/grading_agreement.py renders it) is graded correct, and a
# perturbed one (another number / exponent / letter, or the next question's gold) wrong, under --extraction box.
def _agreement(name, data_path=None):
    from bench.grading_agreement import responses
    qs = [q for q in load_questions(name, data_path=data_path) if q["gold"] is not None]
    # a generous timeout where a timeout would fail the check (a loaded CI machine must not turn a slow parse into
    # a wrong grade); the default one for perturbed answers, where it only saves time (Minerva #131's takes ~30 s)
    ok = grade_many(responses(qs, False), workers=0, extraction="box", timeout=30)
    bad = grade_many(responses(qs, True), workers=0, extraction="box")
    wrong_ok = [q["id"] for q, r in zip(qs, ok) if not r["correct"]]
    right_bad = [q["id"] for q, r in zip(qs, bad) if r["correct"]]
    assert not wrong_ok, f"{name}: {len(wrong_ok)} rendered golds graded wrong, e.g. ids {wrong_ok[:5]}"
    assert not right_bad, f"{name}: {len(right_bad)} perturbed golds graded correct, e.g. ids {right_bad[:5]}"


@pytest.mark.parametrize("name", ["gsm8k", "math500", "aime24", "aime25", "amc23", "minerva", "minerva_short",
                                  "mmlu_pro"])
def test_gold_rendered_in_latex(name):
    _agreement(name)


@pytest.mark.parametrize("name", ["gpqa", "gpqa_open"])
def test_gold_rendered_in_latex_gpqa(name, gpqa_path):
    _agreement(name, gpqa_path)


# ------------------------------------------------------------------------------------------------------------
# multiple choice follows --extraction; which box each paper's harness reads; QFFT's long-CoT rule
MC_BY_EXTRACTION = [
    # (response, {extraction: letter})
    (r"\boxed{B}. Note that option C is incorrect.", {"box": "B", "box_or_answer_is": "B", "any": "C"}),
    ("The answer is (C)", {"box": None, "box_or_answer_is": None, "any": "C"}),
    ("Work.\nThe answer is: C", {"box": None, "box_or_answer_is": "C", "any": "C"}),
    (r"\boxed{b}", {"box": "B", "box_or_answer_is": "B", "any": None}),           # QFFT: case-insensitive match
    (r"\boxed{\text{(A)} or maybe \text{(D)}}", {"box": "D", "box_or_answer_is": "D", "any": "A"}),  # last in box
    (r"\boxed{C: 10^-4 eV}", {"box": "C", "box_or_answer_is": "C", "any": "C"}),
    (r"\boxed{A} at first; finally \boxed{C", {"box": None, "box_or_answer_is": None, "any": "C"}),  # cut off
    (r"\boxed{J}", {"box": "J", "box_or_answer_is": "J", "any": "J"}),             # MMLU-Pro: up to J
    (r"\boxed{42}", {"box": None, "box_or_answer_is": None, "any": None}),
]


@pytest.mark.parametrize("response,expected", MC_BY_EXTRACTION)
def test_mc_follows_the_extraction(response, expected):
    for extraction, letter in expected.items():
        assert extract_choice(response, extraction=extraction) == letter, extraction
        r = grade(response, "B", "mc", extraction=extraction)
        assert r["pred"] == letter and r["correct"] is (letter == "B"), (extraction, r)
    items = [(response, "B", "mc")]
    assert [r["pred"] for r in grade_many(items, workers=1, extraction="box")] == [expected["box"]]


PAPER_BOXES = [
    # (response, {extraction: the answer extracted}): the LAST box command decides, a cut-off one gives nothing
    (r"\boxed{3} and then \boxed{4", {"box": None, "box_or_answer_is": None, "any": "3"}),
    (r"\fbox{7}", {"box": None, "box_or_answer_is": None, "any": "7"}),           # neither paper reads \fbox
    (r"so boxed{7}", {"box": "7", "box_or_answer_is": None, "any": None}),        # QFFT: split("boxed")
    (r"\boxed{1} and \boxed{2}", {"box": "2", "box_or_answer_is": "2", "any": "2"}),
    (r"\boxed {12}", {"box": "12", "box_or_answer_is": None, "any": "12"}),       # UPFT: `\boxed{` exactly
]


@pytest.mark.parametrize("response,expected", PAPER_BOXES)
def test_the_box_each_paper_reads(response, expected):
    for extraction, ans in expected.items():
        got = grading.extract_answer(response, extraction) if extraction != "any" else \
            grade(response, "0", "math", extraction="any")["pred"]
        assert got == ans, (extraction, got)
    assert grade(r"\boxed{3} and then \boxed{4", "3", extraction="box")["correct"] is False
    assert grade(r"\fbox{7}", "7", extraction="box")["correct"] is False
    assert grade(r"\fbox{7}", "7", extraction="any")["correct"] is True


LONG_COT = [
    # (response, paper rule, QFFT's analysis_cli.py rule)
    ("Wait, that is wrong.", True, False),                                   # one "wait": paper yes, code no
    ("wait wait wait wait", True, True),                                    # > 3
    ("Wait. Alternatively, try x.", True, True),                             # >= 1 with "alternatively"
    ("I awaited the result, waiting, awaits, await.", False, True),         # substring count: 4
    ("Alternatively, no reflection here.", False, False),
    ("", False, False),
]


@pytest.mark.parametrize("text,paper,code", LONG_COT)
def test_long_cot_rules(text, paper, code):
    pat = grading.reflect_pattern("wait")
    assert (grading.long_cot_offset(text, "paper", pat) is not None) is paper
    assert (grading.long_cot_offset(text, "qfft_code", pat) is not None) is code
    assert grading.LONG_COT_RULES == ("paper", "qfft_code")


def test_mc_lenient_forms_under_any():  # 'any' keeps reading 'ANSWER: C', 'the choice is (C)', ... anywhere
    from bench.grading_agreement import MC_FORMS, responses
    qs = load_questions("mmlu_pro", limit=600)
    ok = grade_many(responses(qs, False, MC_FORMS), workers=1, extraction="any")
    bad = grade_many(responses(qs, True, MC_FORMS), workers=1, extraction="any")
    assert sum(r["correct"] for r in ok) == len(qs) and not any(r["correct"] for r in bad)
    box = grade_many(responses(qs, False, MC_FORMS), workers=1, extraction="box")
    assert sum(r["correct"] for r in box) == 300, sum(r["correct"] for r in box)  # 3 of the 6 forms have a box


def test_gpqa_open_reads_upfts_own_file(tmp_path):
    # UPFT's data/math_test/gpqa/test.jsonl: question, solution, answer (no options); made-up records, never GPQA's
    f = tmp_path / "upft_gpqa.jsonl"
    f.write_text('{"question": "Which energy?\\n", "solution": "Because.", "answer": "10^-4 eV", "subject": "P"}\n'
                 '{"question": "How many carbons?", "solution": "C11.", "answer": "11"}\n')
    qs = load_questions("gpqa_open", data_path=str(f))
    assert [(q["question"], q["gold"], q["answer_type"]) for q in qs] == \
        [("Which energy?\n", "10^-4 eV", "math"), ("How many carbons?", "11", "math")]  # UPFT's text, unstripped
    assert qs[0]["id"] == sources.stable_id("Which energy?\n")
    with pytest.raises(sources.DataError, match="upft_gpqa.jsonl:1: .*no answer options.*gpqa_open"):
        load_questions("gpqa", data_path=str(f))
