"""Grading: answer extraction, math-verify, multiple choice, long/short CoT, parallel grading. Manual:
docs/grading.md. Imports no torch, transformers or vllm: grader worker processes import only this.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from common import DataError

# ----------------------------------------------------------------------------------------------------------------
# Boxes: where both papers' harnesses read the final answer (and, in sources.py, Minerva's golds).
# the command name must end there: \boxedtext or \fboxsep are no boxes
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _box_content(text: str, i: int) -> Optional[tuple[int, int]]:
    """(start, end) of the content of a box whose command ends at i: braces balanced, spaces allowed before the
    brace (`\\boxed {12}`), or brace-less (`\\boxed 5`, up to the next space or `$`); None when the brace never
    closes (a box cut off by max_tokens) or nothing follows."""
    start = i
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return i + 1, j
        # the brace never closes (cut off by max_tokens): no answer, never the tail QFFT's split would take
        return None
    if i > start:  # \boxed 5
        k = i
        while k < len(text) and not text[k].isspace() and text[k] != "$":
            k += 1
        if k > i:
            return i, k
    return None


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the content of every complete \\boxed{...} / \\fbox{...} in text, in order: braces
    balanced, spaces allowed before the brace (`\\boxed {12}`), and the brace-less `\\boxed 5` (up to the next
    space or `$`). A box cut off before its closing brace is not complete and is not listed."""
    spans = []
    for m in _BOX_CMD.finditer(text or ""):
        span = _box_content(text, m.end())
        if span:
            spans.append(span)
    return spans


def last_boxed_span(text: str) -> Optional[tuple[int, int]]:
    """(start, end) of the content of the last complete box; None if there is none."""
    spans = boxed_spans(text)
    return spans[-1] if spans else None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete \\boxed{...} (or \\fbox{...}, or `\\boxed x`), stripped; None if none."""
    span = last_boxed_span(text)
    return text[span[0]:span[1]].strip() if span else None


# QFFT splits on the bare word `boxed`: with or without its backslash, never inside another word
_QFFT_BOX = re.compile(r"(?<![A-Za-z])boxed(?![A-Za-z])")


def paper_box(text: str, extraction: str) -> Optional[str]:
    """The final box as a paper's harness reads it, stripped; None when there is none. In both papers the LAST box
    command decides: when it is cut off (max_tokens) the response has no answer, never an earlier box.
      box               QFFT (eval/utils/parser.py extract_answer: `pred_str.split("boxed")[-1]`): the last `boxed`,
                        with or without its backslash; `\\fbox` is no box. (QFFT takes the tail of a cut-off box as
                        the answer, which then fails to match: no answer here.)
      box_or_answer_is, upft_box
                        UPFT (utils/openmathinst_utils.py extract_answer): the last `\\boxed`, whose `{` must follow
                        at once (`\\boxed {x}`, `\\boxed x` and `\\fbox` are no box).
    ('any' is the lenient last_boxed: any complete box, an earlier one when the last is cut off.)"""
    text = text or ""
    if extraction in ("box_or_answer_is", "upft_box"):
        i = text.rfind("\\boxed")
        # UPFT's extract_answer wants the brace at once after the 6 characters of `\boxed`
        if i < 0 or text[i + 6:i + 7] != "{":
            return None
        span = _box_content(text, i + 6)
    elif extraction == "box":
        hits = list(_QFFT_BOX.finditer(text))
        # the last `boxed` even when it is cut off (QFFT's split(...)[-1]); an earlier complete box is not looked at
        span = _box_content(text, hits[-1].end()) if hits else None
    else:
        return last_boxed(text)
    return text[span[0]:span[1]].strip() if span else None


# ----------------------------------------------------------------------------------------------------------------
# Long vs short CoT (QFFT §2, §5.1)
DEFAULT_REFLECT_WORDS = "wait"  # QFFT §2: a response is long-CoT when it contains a reflective keyword


def reflect_pattern(words: str = DEFAULT_REFLECT_WORDS) -> re.Pattern:
    """Whole-word, case-insensitive pattern for a comma-separated list of reflective keywords."""
    ws = [w.strip() for w in words.split(",") if w.strip()]
    if not ws:
        raise DataError("--reflect_words: give at least one word")
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in ws) + r")\b", re.IGNORECASE)


def first_reflection(text: str, pattern: re.Pattern) -> Optional[int]:
    """Character offset of the first reflective keyword, None for a short-CoT response."""
    m = pattern.search(text or "")
    return m.start() if m else None


# Which responses count as long-CoT (evaluate.py / rak.py --long_cot_rule):
#   paper      QFFT §2: a reflective keyword (--reflect_words, whole word, any case) appears at least once
#   qfft_code  QFFT's released analysis (eval/analysis/analysis_cli.py): the lower-case substring "wait" counted,
#              long when that count is > 3, or >= 1 with "alternatively" in the response (--reflect_words unused)
LONG_COT_RULES = ("paper", "qfft_code")


def long_cot_offset(text: str, rule: str = "paper", pattern: Optional[re.Pattern] = None) -> Optional[int]:
    """Character offset of the first reflective keyword of a long-CoT response under `rule`; None for a short-CoT
    one. `pattern` (reflect_pattern) is the paper rule's keywords."""
    if rule == "qfft_code":
        low = (text or "").lower()
        waits = low.count("wait")
        return low.find("wait") if waits > 3 or (waits > 0 and "alternatively" in low) else None
    if rule != "paper":
        raise ValueError(f"long_cot_rule must be one of {LONG_COT_RULES}, got {rule!r}")
    return first_reflection(text, pattern or reflect_pattern())


# ----------------------------------------------------------------------------------------------------------------
# Grading: math-verify for math, letter extraction for multiple choice. Shared by evaluate.py and prepare.py (rft).
# How answers are extracted and compared, per benchmark and per extraction rule: docs/grading.md.
GRADE_TIMEOUT = 5  # seconds per math-verify call
# Where the final answer of a math response is taken from (evaluate.py --extraction):
#   box              the last complete \boxed{}/\fbox{}, else no answer (QFFT's harness, eval/utils/parser.py)
#   box_or_answer_is the box, else the text after "The answer is: " on the last line (UPFT's rule grader without
#                    its judge, inference/eval.py + utils/openmathinst_utils.py)
#   upft_box         the box alone: UPFT's rule check beside its LLM judge (inference/eval.py _judge, llm_judge
#                    branch: math_equal(extract_answer(response), ...)), i.e. behind every published UPFT number
#   any              the box, else math-verify's own extraction over the whole response (the lenient fallback)
# The box each rule reads (QFFT's, UPFT's, or any complete box): paper_box.
EXTRACTIONS = ("box", "box_or_answer_is", "upft_box", "any")
_ANSWER_IS = re.compile(r"The answer is: (.+)$")  # UPFT: re.search without flags, so only on the last line


def extract_answer(response: str, extraction: str = "box") -> Optional[str]:
    """The final answer text of a math response under a rule-based extraction ('box', 'box_or_answer_is',
    'upft_box'); None when there is none. ('any' adds math-verify's scan of the whole text: see grade_math.)"""
    boxed = paper_box(response, extraction)
    if boxed is not None or extraction != "box_or_answer_is":
        return boxed
    m = _ANSWER_IS.search(response or "")
    # a sentence's full stop is not part of the answer
    return m.group(1).strip().rstrip(".").strip() or None if m else None


_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?|\.\d+)[eE]([+-]?\d+)(?![\w.])")
_PY_FUNCS = {"arcsin": r"\arcsin", "arccos": r"\arccos", "arctan": r"\arctan", "sin": r"\sin", "cos": r"\cos",
             # numpy's and math's log is the natural logarithm, hence \ln
             "tan": r"\tan", "exp": r"\exp", "log": r"\ln", "log10": r"\log_{10}", "pi": r"\pi", "e": "e"}
_PY_FUNC = re.compile(r"\b(?:np|numpy|math)\.(" + "|".join(sorted(_PY_FUNCS, key=len, reverse=True)) + r")\b")


def normalize_math(s: str) -> str:
    """Rewrite what math-verify misreads into LaTeX it parses, in golds and predictions alike: e-notation
    (`4.5e33` -> `4.5\\times10^{33}`; math-verify reads `e` as Euler's number), numpy/math function names
    (`np.arcsin(x)` -> `\\arcsin(x)`), thousands separated by a thin space (`1\\,000` -> `1000`) and a degree sign
    (`45°` -> `45^{\\circ}`)."""
    s = _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{m.group(2).lstrip('+')}}}", s)
    s = _PY_FUNC.sub(lambda m: _PY_FUNCS[m.group(1)], s)
    # a spacing command only between a digit and exactly three more: a thousands separator, not spacing elsewhere
    s = re.sub(r"(?<=\d)(?:\\[,;:! ]|\{,\})(?=\d{3}(?!\d))", "", s)
    return re.sub(r"\s*°(?![A-Za-z])", r"^{\\circ}", s)


def _gold_for_parse(gold: str) -> str:
    g = normalize_math(gold.strip())
    # a stray `$ $` inside a gold answer (Minerva #72) would split the math: drop it
    return g if g.startswith("$") or "\\boxed" in g else f"${g.replace('$', ' ')}$"


def _text_key(s: str) -> str:
    """Exact-match key for text answers (both papers' graders compare strings, case- and space-insensitively,
    before any math): \\text{} wrappers, `$`, braces and spaces removed, lower case."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    return re.sub(r"\s+|\$|\\[,;:! ]|[{}]", "", s).rstrip(".").lower()


def _tiny_numbers_differ(gold_parsed, pred_parsed) -> bool:
    """math-verify compares numbers to a fixed number of decimals, so below ~1e-6 every number equals every other
    (Minerva's 2.88e-19 "equals" 2.88e-18). For two plain numbers under 1e-3 in size, require 6 significant
    digits instead."""
    try:
        g, p = gold_parsed[0], pred_parsed[0]
        if not (getattr(g, "is_number", False) and getattr(p, "is_number", False)):
            return False
        g, p = float(g), float(p)
    except (TypeError, ValueError, IndexError, AttributeError):
        return False
    if max(abs(g), abs(p)) >= 1e-3:
        return False
    return abs(g - p) > 1e-6 * max(abs(g), abs(p))


_PERCENT = re.compile(r"^(.*?)\s*\\?%\s*$", re.S)


def grade_math(response: str, gold: str, timeout: int = GRADE_TIMEOUT, extraction: str = "any") -> dict:
    """math-verify of the response's final answer (see EXTRACTIONS) against gold. Returns {"pred": str|None,
    "correct": bool, "timeout": bool}; `correct` implies a `pred`: a response without an extracted answer is wrong.
    Besides math-verify: an exact text match counts (text golds such as GPQA's), and a percentage counts against a
    gold fraction (`25\\%` vs `\\frac14`), as QFFT's grader (eval/utils/grader.py, math_equal) does."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
    ans = extract_answer(response, "any" if extraction == "any" else extraction)
    # both papers' rules: no extracted answer is wrong; only the lenient 'any' goes on to scan the whole response
    if ans is None and extraction != "any":
        return {"pred": None, "correct": False, "timeout": False}
    # The answer re-boxed, so that math-verify parses exactly it; a `$` inside would end the math early.
    pred_text = f"\\boxed{{{normalize_math(ans).replace('$', ' ')}}}" if ans is not None else \
        normalize_math(response or "")
    pred = ans
    try:
        # the string match first, as in both papers' graders: a text gold (gpqa_open) has no math to parse
        if ans is not None and _text_key(ans) == _text_key(gold) and _text_key(gold):
            return {"pred": ans, "correct": True, "timeout": False}
        # raise_on_error: a timeout must reach us as one (counted in `timeouts`), not as a silent "not equal"
        gold_parsed = parse(_gold_for_parse(gold), parsing_timeout=timeout, raise_on_error=True)
        pred_parsed = parse(pred_text, parsing_timeout=timeout, raise_on_error=True)
        if not pred_parsed:
            return {"pred": ans, "correct": False, "timeout": False}
        pred = ans if ans is not None else str(pred_parsed[-1])
        ok = bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout, raise_on_error=True))
        ok = ok and not _tiny_numbers_differ(gold_parsed, pred_parsed)
        m = _PERCENT.match(ans) if ans is not None and not ok and "%" not in gold else None
        if m and m.group(1).strip() and gold_parsed:
            try:
                # only a gold of at most 1 is a fraction; `30\%` against 30 is already equal (math-verify drops %)
                small = abs(float(gold_parsed[0])) <= 1
            except (TypeError, ValueError):
                small = False
            if small:
                frac = parse(f"$\\frac{{{normalize_math(m.group(1))}}}{{100}}$", parsing_timeout=timeout,
                             raise_on_error=True)
                ok = bool(frac) and bool(verify(gold_parsed, frac, timeout_seconds=timeout, raise_on_error=True))
        return {"pred": pred, "correct": ok, "timeout": False}
    except TimeoutException:
        return {"pred": pred, "correct": False, "timeout": True}
    except Exception:  # a malformed expression is a wrong answer, never a crash
        return {"pred": pred, "correct": False, "timeout": False}


# Multiple choice. QFFT's GPQA prompt (eval/data/gpqa/test.jsonl): options as `A. text`, then this instruction.
MC_INSTRUCTION = ("Please reason step-by-step and put your choice letter without any other text with \\boxed{} in "
                  "the end.")
_L = r"([A-J])(?![A-Za-z0-9])"  # a standalone option label: not the start of a word or a number
_WRAP = r"\**\s*\$?\s*(?:\\(?:text|textbf|mathrm|mathbf)\{\s*)?\(?\s*"
_MC_PATTERNS = [re.compile(p) for p in (
    r"\\(?:boxed|fbox)\s*\{\s*" + _WRAP + _L,                                     # \boxed{C}, \boxed{\text{(C)}}
    r"(?i:answer|option|choice)(?:\s+is)?\s*(?::|is)?\s*\**\s*:?\s*" + _WRAP + _L,   # answer is (C), ANSWER: C, ...
    r"\b(?:is|be)\s*:?\s*\(" + _L,                                                 # ... it is (C)
    r"\*\*\s*\(?" + _L + r"\)?[.:]?\s*\*\*\W*$",                                   # a final bold letter
)]


_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def _letter_in(answer: str, letters: str) -> Optional[str]:
    """The choice inside an extracted answer (QFFT eval/utils/grader.py math_equal: the answer equals the letter
    in any case, or choice_answer_clean's LAST standalone letter): `\\text{}`-like wrappers dropped, a lone
    lower-case letter read as the option, else the last standalone capital letter."""
    s = _WRAPPERS.sub(r"\1", answer)
    # A lone lower-case letter is the option (QFFT compares case-insensitively first). Inside longer text only capitals
    # count, or every article "a" would be option A.
    m = re.fullmatch(r"[\s$*(.:]*([a-z])[\s$*).:]*", s)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    hits = [h for h in re.findall(r"(?<![A-Za-z0-9\\])([A-Z])(?![A-Za-z0-9])", s) if h in letters]
    return hits[-1] if hits else None


def extract_choice(response: str, letters: str = "ABCDEFGHIJ", extraction: str = "any") -> Optional[str]:
    """The multiple-choice letter under an extraction rule (EXTRACTIONS). 'box' (QFFT), 'box_or_answer_is',
    'upft_box': the answer extract_answer takes (the final box; box_or_answer_is also a last-line 'The answer is:
    X'), and in it the letter (_letter_in); no box, no letter. 'any' (lenient): the LAST hit, by position in the
    response, of any of these forms: \\boxed{C} (also \\text{}, \\mathrm{}, parentheses), 'the answer is (C)',
    'Answer: C', 'correct option is C', 'choice is (B)', '... it is (C)', a final bold **C**. The letter must stand
    alone (`Cat`, `I believe` are no labels: a bare I or A followed by a lower-case word is English, not an
    option), else None."""
    if extraction != "any":
        ans = extract_answer(response, extraction)
        return _letter_in(ans, letters) if ans is not None else None
    text = response or ""
    best = None
    for pat in _MC_PATTERNS:
        for m in pat.finditer(text):
            letter, end = m.group(1), m.end(1)
            if letter not in letters:
                continue
            if letter in "AI" and re.match(r"\s+[a-z]", text[end:]) and text[m.start(1) - 1:m.start(1)] != "(":
                continue  # "Answer: I believe ..." / "answer: A good ..."
            # the LAST hit by position, whichever pattern found it: the final answer follows any options discussed
            if best is None or m.start(1) > best[0]:
                best = (m.start(1), letter)
    return best[1] if best else None


def grade(response: str, gold: Optional[str], answer_type: str = "math", timeout: int = GRADE_TIMEOUT,
          extraction: str = "any") -> dict:
    if gold is None:
        # no gold to compare with: the box is kept for reference, and nothing counts as right
        return {"pred": last_boxed(response), "correct": False, "timeout": False}
    if answer_type == "mc":
        pred = extract_choice(response, extraction=extraction)
        return {"pred": pred, "correct": pred is not None and pred == gold.strip().upper(), "timeout": False}
    return grade_math(response, gold, timeout, extraction)


def _grade_star(args):
    return grade(*args)


def _math_input(response: str, extraction: str = "any") -> str:
    """What grade_math needs of a response: its extracted answer as a box, else (extraction 'any') the whole text.
    grade_math(_math_input(r, x), g, x) == grade_math(r, g, x); it keeps what crosses to worker processes small."""
    ans = extract_answer(response, extraction)
    if ans is not None:
        return f"\\boxed{{{ans}}}"
    return response if extraction == "any" else ""


def grade_many(items: list[tuple[str, Optional[str], str]], workers: int = 0, timeout: int = GRADE_TIMEOUT,
               desc: str = "grading", extraction: str = "any") -> list[dict]:
    """Grade (response, gold, answer_type) triples in parallel worker processes (spawned: safe beside a vLLM
    engine), order preserved. workers=0: one per CPU core (<= 32); workers=1: in this process (main thread only:
    math-verify's timeouts are signals). Multiple-choice and gold-less items are graded here (a regex); identical
    math (answer, gold) pairs, common among n samples, are verified once; only the box crosses to the workers.
    `extraction`: see EXTRACTIONS."""
    import threading
    from tqdm import tqdm
    if not workers:  # one per core, at most 32 (each holds its own sympy; big GPU nodes have 100+ cores)
        workers = min(32, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1)
    results: list[Optional[dict]] = [None] * len(items)
    todo: dict[tuple[str, str], list[int]] = {}
    for i, (r, g, t) in enumerate(items):
        if g is None or t == "mc":
            results[i] = grade(r, g, t, timeout, extraction)
        else:
            todo.setdefault((_math_input(r, extraction), g), []).append(i)
    keys = list(todo)
    # math-verify's timeout is a SIGALRM, which only the main thread receives: another thread always uses the workers
    in_main = threading.current_thread() is threading.main_thread()
    if not keys:
        graded = []
    # under 64 pairs grading here is faster than starting spawned workers (each imports sympy and math-verify)
    elif (workers == 1 or len(keys) < 64) and in_main:
        graded = [grade_math(r, g, timeout, extraction) for r, g in tqdm(keys, desc=desc, disable=len(keys) < 64)]
    else:
        import multiprocessing as mp
        # spawn, not fork: forking a process that holds a vLLM engine (its threads, CUDA) is unsafe
        ctx = mp.get_context("spawn")
        # at least 8 pairs per worker, about 8 chunks each (<= 256 pairs): few round trips, slow pairs still spread
        workers = min(workers, max(1, len(keys) // 8))
        chunk = max(1, min(256, len(keys) // (workers * 8)))
        args = [(r, g, "math", timeout, extraction) for r, g in keys]
        with ctx.Pool(workers) as pool:
            graded = list(tqdm(pool.imap(_grade_star, args, chunksize=chunk), total=len(keys), desc=desc))
    for key, res in zip(keys, graded):
        for i in todo[key]:
            results[i] = dict(res)
    return results  # type: ignore[return-value]
