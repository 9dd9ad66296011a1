"""Grading agreement on every benchmark's real golds: each gold rendered the way a model writes it in LaTeX (inside
a box, e-notation as `m \\times 10^{k}`, `np.arcsin` as `\\arcsin`, thousands as `1,000` / `1\\,000`, `a/b` as
`\\frac{a}{b}`; letters as `\\boxed{C}`, 'The correct option is **C**', 'ANSWER: C', ...) must grade correct, and a
perturbed one (another number, exponent or letter; for an expression, the next question's gold) wrong.

    python bench/grading_agreement.py                      # this checkout's grader
    # another version's grader: its grading.py (or, before the split of common.py, its common.py), run from its
    # own folder so that its imports resolve, e.g. git worktree add OLD REV
    python bench/grading_agreement.py --grader OLD/grading.py
    GPQA_PATH=../shared/data/restricted/gpqa_diamond.jsonl.gz python bench/grading_agreement.py   # + gpqa, gpqa_open

Prints one table row per benchmark: rendered golds graded correct, perturbed golds graded wrong (never any text).
tests/test_grading.py runs the same renderings as assertions.

The papers' own graders (optional; their code is never vendored: point at your checkouts). Each runs in a worker
process under an interpreter with that repository's dependencies (QFFT: latex2sympy2 1.9.1 with
antlr4-python3-runtime 4.7.2, word2number, regex; UPFT: sympy, antlr4-python3-runtime 4.11.0, which its
math_equal insists on, and transformers for its utils package), and every response is graded by ours and theirs:

    python bench/grading_agreement.py --qfft_repo Question-Free-Fine-Tuning --qfft_python venv-qfft/bin/python \
        --upft_repo UPFT --upft_python venv-upft/bin/python [--outputs runs/eval/x qwq.jsonl ...] [--limit 200]

QFFT's grader is eval/utils/parser.py extract_answer + eval/utils/grader.py check_is_correct (commit c8cb267; its
eval/ folder), compared with ours under --extraction box. UPFT's (utils/openmathinst_utils.py) twice: its rule
check beside the judge, math_equal(extract_answer(response), gold), against ours under upft_box, and its judge-less
rule (process_results with the box, or "The answer is: X") against box_or_answer_is; UPFT grades no multiple
choice. --outputs: real model outputs, evaluate.py output directories (every response of every DIR/<bench>.jsonl)
or JSONL files with a response (`responses`, `response`, `prediction` or `model_generation`) and a gold (`gold` or
`answer`); without it, the rendered and perturbed golds above. Prints counts only (never any text).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_E = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)$")
_NP = re.compile(r"\b(?:np|numpy|math)\.(arcsin|arccos|arctan|sin|cos|tan|exp|sqrt)\(")
_INT = re.compile(r"^-?\d+$")
_FRAC = re.compile(r"^(-?\d+)/(\d+)$")
MATH_FORMS = ["The final answer is $\\boxed{{{}}}$.", "Therefore, the answer is \\(\\boxed{{{}}}\\).",
              "So we get\n\\[\n\\boxed{{{}}}\n\\]"]
MC_FORMS = ["\\boxed{{{}}}", "The correct option is **{}**.", "ANSWER: {}", "\\boxed{{\\text{{({})}}}}",
            "After checking every option, the choice is ({}).", "Final answer: $\\boxed{{\\mathrm{{{}}}}}$"]
# the boxed phrasings: under --extraction box a letter is read from the final box only (QFFT's harness)
MC_BOX_FORMS = [f for f in MC_FORMS if "boxed" in f] + ["So the answer is $\\boxed{{{}}}$, not the others."]


def _thousands(n: str, i: int) -> str:
    sign, digits = ("-", n[1:]) if n.startswith("-") else ("", n)
    if len(digits) < 4 or i % 3 == 2:
        return n
    groups = []
    while digits:
        groups.insert(0, digits[-3:])
        digits = digits[:-3]
    return sign + (",", "\\,")[i % 3].join(groups)


def render(gold: str, i: int) -> str:
    """A gold answer as a model writes it in LaTeX (the i-th variant), without the box."""
    g = gold.strip()
    m = _E.match(g)
    if m:
        return f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}"
    if _NP.search(g):
        return _NP.sub(lambda x: f"\\{x.group(1)}(", g)
    if _INT.match(g):
        return _thousands(g, i)
    m = _FRAC.match(g)
    if m:
        return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return g


def perturb(gold: str, other: str) -> str:
    """A wrong answer close to the gold: another number / exponent; for an expression or text gold, the next
    question's gold (`other`) when it differs, else the expression plus one."""
    g = gold.strip()
    m = _E.match(g)
    if m:
        return f"{m.group(1)} \\times 10^{{{int(m.group(2)) + 1}}}"
    if re.fullmatch(r"-?\d+(?:\.\d+)?", g):
        return str(int(g) + 1) if _INT.match(g) else f"{float(g) * 1.5 + 1:g}"
    return render(other, 0) if other.strip() != g else f"{g}+1"


def responses(qs: list[dict], perturbed: bool, mc_forms: list[str] = MC_BOX_FORMS) -> list[tuple[str, str, str]]:
    items = []
    for i, q in enumerate(qs):
        g = q["gold"]
        if q["answer_type"] == "mc":
            letter = chr(ord("A") + (ord(g) - ord("A") + 1) % 4) if perturbed else g
            items.append((mc_forms[i % len(mc_forms)].format(letter), g, "mc"))
        else:
            ans = perturb(g, qs[(i + 1) % len(qs)]["gold"]) if perturbed else render(g, i)
            items.append((MATH_FORMS[i % len(MATH_FORMS)].format(ans), g, "math"))
    return items


def load_grader(path: str | None):
    """The module whose grade_many is measured: this checkout's grading.py, or the file at `path` (imported with
    its own folder first on sys.path, so that an old common.py or a grading.py finds its siblings)."""
    if not path:
        import grading
        return grading
    folder = str(Path(path).resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location("grader_under_test", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["grader_under_test"] = mod
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(folder)
    return mod


# ----------------------------------------------------------------------------------------------------------------
# The papers' graders, run from the user's checkouts in worker processes (stdlib only on this side of the pipe)
def paper_worker(paper: str, repo: str) -> None:
    """Read {"response", "gold", "type"} lines on stdin, write {"verdicts": {rule: bool}} lines on stdout, graded by
    the paper's own code imported from `repo` (QFFT: its eval/ folder on sys.path, as eval/eval.py runs)."""
    if paper == "qfft":
        sys.path.insert(0, str(Path(repo) / "eval"))
        from utils.grader import check_is_correct  # QFFT eval/utils/grader.py
        from utils.parser import extract_answer  # QFFT eval/utils/parser.py

        def verdicts(resp, gold, kind):
            return {"qfft": bool(check_is_correct(extract_answer(resp, "math"), gold, "math"))}
    else:
        sys.path.insert(0, str(repo))
        from utils.openmathinst_utils import extract_answer, math_equal, process_results

        def verdicts(resp, gold, kind):
            if kind == "mc":
                return {}
            box = f"\\boxed{{{gold}}}"  # UPFT's judge-less branch reads the gold from a boxed reference solution
            return {"upft_judge_rule": bool(math_equal(extract_answer(resp), gold)),
                    "upft_no_judge": bool(process_results(resp, box, True, answer_extract_from_boxed=True)
                                          or process_results(resp, box, False, r"The answer is: (.+)$", True))}
    for line in sys.stdin:
        item = json.loads(line)
        try:
            v = verdicts(item["response"], item["gold"], item["type"])
        except Exception as e:  # a crash in their grader is a wrong answer there, counted
            v = {"error": type(e).__name__}
        print(json.dumps({"verdicts": v}), flush=True)


def run_paper(paper: str, repo: str, python: str, items: list[tuple[str, str, str]]) -> list[dict]:
    with tempfile.TemporaryFile("w+") as f:
        for r, g, t in items:
            f.write(json.dumps({"response": r, "gold": g, "type": t}) + "\n")
        f.seek(0)
        p = subprocess.run([python, __file__, "--worker", paper, "--repo", repo], stdin=f, capture_output=True,
                           text=True)
    if p.returncode != 0:
        sys.exit(f"{paper}'s grader failed under {python}: {p.stderr.strip().splitlines()[-1] if p.stderr else ''}")
    out = [json.loads(line)["verdicts"] for line in p.stdout.splitlines() if line.startswith("{")]
    if len(out) != len(items):
        sys.exit(f"{paper}'s grader answered {len(out)} of {len(items)} items")
    return out


_RESPONSE_FIELDS, _GOLD_FIELDS = ("responses", "response", "prediction", "model_generation"), ("gold", "answer")


def real_outputs(paths: list[str]) -> dict[str, list[tuple[str, str, str]]]:
    """{source name: [(response, gold, type)]} from evaluate.py output directories or response JSONL files."""
    import sources
    out = {}
    for path in paths:
        p = Path(path)
        files = sources.eval_output_files(p).items() if p.is_dir() else [(p.stem, p)]
        for bench, f in files:
            items = []
            for line in open(f, encoding="utf-8"):
                rec = json.loads(line)
                rf = next((k for k in _RESPONSE_FIELDS if k in rec), None)
                gf = next((k for k in _GOLD_FIELDS if rec.get(k) is not None), None)
                if rf is None or gf is None:
                    continue
                resps = rec[rf] if isinstance(rec[rf], list) else [rec[rf]]
                kind = rec.get("answer_type", "math")
                items += [(r, str(rec[gf]), kind) for r in resps if isinstance(r, str)]
            out[f"{p.name}/{bench}" if p.is_dir() else bench] = items
    return out


def compare_with_papers(a) -> None:
    import grading
    if a.outputs:
        sets = real_outputs(a.outputs)
    else:
        import sources
        sets = {}
        for b in sources.BENCHMARKS:
            if b.startswith("gpqa") and not os.environ.get("GPQA_PATH"):
                continue
            qs = [q for q in sources.load_questions(b, data_path=os.environ.get("GPQA_PATH") if b.startswith("gpqa")
                                                    else None) if q["gold"] is not None][:a.limit or None]
            sets[b] = responses(qs, False) + responses(qs, True)
    print("| source | responses | rule (ours vs theirs) | both right | both wrong | only ours right | "
          "only theirs right | their errors | agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    pairs = [("qfft", "box", "qfft", a.qfft_repo, a.qfft_python),
             ("upft", "upft_box", "upft_judge_rule", a.upft_repo, a.upft_python),
             ("upft", "box_or_answer_is", "upft_no_judge", a.upft_repo, a.upft_python)]
    for name, items in sets.items():
        items = items[:a.limit] if a.limit and a.outputs else items
        theirs_by_paper = {}
        for paper, ours_rule, their_rule, repo, python in pairs:
            if not repo:
                continue
            if paper not in theirs_by_paper:
                theirs_by_paper[paper] = run_paper(paper, repo, python or sys.executable, items)
            ours = grading.grade_many(items, workers=a.workers, extraction=ours_rule)
            rows = [(o["correct"], t.get(their_rule), "error" in t) for o, t in zip(ours, theirs_by_paper[paper])
                    if their_rule in t or "error" in t]
            if not rows:
                continue
            n = len(rows)
            both = sum(o and bool(t) for o, t, _ in rows)
            neither = sum(not o and not t for o, t, _ in rows)
            only_o = sum(o and not t for o, t, _ in rows)
            only_t = sum(bool(t) and not o for o, t, _ in rows)
            errors = sum(e for _, _, e in rows)
            print(f"| {name} | {n} | {ours_rule} vs {their_rule} | {both} | {neither} | {only_o} | {only_t} | "
                  f"{errors} | {100 * (both + neither) / n:.1f}% |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grader", help="a grading.py (or an old common.py) to test instead of this checkout's")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--qfft_repo", help="a checkout of LWL-cpu/Question-Free-Fine-Tuning with eval/ (c8cb267)")
    ap.add_argument("--upft_repo", help="a checkout of 1KE-JI/UPFT")
    ap.add_argument("--qfft_python", help="python with QFFT's grader dependencies (default: this one)")
    ap.add_argument("--upft_python", help="python with UPFT's grader dependencies (default: this one)")
    ap.add_argument("--outputs", nargs="*", help="real model outputs: evaluate.py output dirs or response JSONL files")
    ap.add_argument("--limit", type=int, help="the first K responses of each --outputs source (without: the first K "
                                              "questions of each benchmark, rendered and perturbed)")
    ap.add_argument("--worker", choices=["qfft", "upft"], help=argparse.SUPPRESS)
    ap.add_argument("--repo", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return paper_worker(a.worker, a.repo)
    if a.qfft_repo or a.upft_repo:
        return compare_with_papers(a)
    c = load_grader(a.grader)
    import sources as current
    names = [b for b in current.BENCHMARKS if not b.startswith("gpqa") or os.environ.get("GPQA_PATH")]
    kw = {"extraction": "box"} if "extraction" in c.grade_many.__code__.co_varnames else {}
    print(f"grader: {a.grader or 'this checkout'}" + (" (--extraction box)" if kw else ""))
    print("| benchmark | golds | rendered golds graded correct | perturbed golds graded wrong |")
    print("|---|---|---|---|")
    for b in names:
        gpqa_path = os.environ.get("GPQA_PATH") if b.startswith("gpqa") else None
        qs = [q for q in current.load_questions(b, data_path=gpqa_path)
              if q["gold"] is not None]
        ok = c.grade_many(responses(qs, False), workers=a.workers, **kw)
        bad = c.grade_many(responses(qs, True), workers=a.workers, **kw)
        n = len(qs)
        right = sum(r["correct"] for r in ok)
        wrong = sum(not r["correct"] for r in bad)
        print(f"| {b} | {n} | {right} ({100 * right / n:.1f}%) | {wrong} ({100 * wrong / n:.1f}%) |")


if __name__ == "__main__":
    main()
