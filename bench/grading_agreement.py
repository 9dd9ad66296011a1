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
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grader", help="a grading.py (or an old common.py) to test instead of this checkout's")
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
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
