"""Grading speed: the same 8,000 responses (MATH500 x 16) graded sequentially in one process and with evaluate.py's
parallel grader (grading.grade_many: spawned worker processes, one per core; identical answer/gold pairs verified
once), in one run. Also times grade_many in one process, to split the gain into dedup and processes.

    python bench/grading_speed.py                  # MATH500 x 16 = 8,000 responses, workers = one per CPU core
    python bench/grading_speed.py --workers 4 --samples 16

The responses are synthesized from the gold answers and reference solutions, half of them perturbed into wrong
answers (a digit changed, another question's answer, a wrong unboxed number), so math-verify parses and compares
real expressions. Prints the times (best of --repeats, alternating), checks the gradings agree, and prints
`parallel / sequential grading speed-up: X.XX` (goal >= 1.7 on 2 cores).
"""
from __future__ import annotations

import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common
import grading
import sources
from tqdm import tqdm


@dataclass
class Args:
    samples: int = 16      # responses per MATH500 question
    workers: int = 0       # parallel grader processes (0: one per CPU core)
    seed: int = 0
    repeats: int = 3       # alternating repeats; the best time of each grader counts


def perturb(gold: str, rng: random.Random) -> str:
    """A plausible wrong answer: one digit changed, else '+1' appended."""
    digits = [m.start() for m in re.finditer(r"\d", gold)]
    if not digits:
        return gold + "+1"
    i = rng.choice(digits)
    return gold[:i] + str((int(gold[i]) + rng.randint(1, 9)) % 10) + gold[i + 1:]


def synthesize(samples: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    qs = sources.load_questions("math500")
    sols = common.read_jsonl(common.DATA_DIR / "benchmarks" / "math500" / "test.jsonl")
    items = []
    for qi, (q, s) in enumerate(zip(qs, sols)):
        gold, sol = q["gold"], s["solution"]
        reasoning = sol.split("\\boxed")[0][-600:]  # some real LaTeX before the answer
        right = [sol,
                 f"{reasoning}\nSo the answer is $\\boxed{{{gold}}}$.",
                 f"Wait, let me double-check. {reasoning}\nTherefore the final answer is \\boxed{{{gold}}}.",
                 f"{reasoning} Thus $\\boxed{{{gold.replace(chr(92) + 'frac', chr(92) + 'dfrac')}}}$",
                 f"The final answer is ${gold}$."]
        wrong = [f"{reasoning}\nSo the answer is $\\boxed{{{perturb(gold, rng)}}}$.",
                 f"{reasoning}\nSo the answer is $\\boxed{{{qs[(qi + 1) % len(qs)]['gold']}}}$.",
                 sol.replace(f"\\boxed{{{grading.last_boxed(sol)}}}", f"\\boxed{{{perturb(gold, rng)}}}"),
                 f"{reasoning}\nI get {rng.randint(2, 999)} in the end."]
        # even samples: the right answer in one of 5 forms; odd samples: a wrong one (mostly distinct answers, as
        # real samples are, so caching/dedup in the grader cannot skip the work)
        for k in range(samples):
            if k % 2 == 0:
                items.append((right[(k // 2) % len(right)], gold, "math"))
            elif k % 8 == 3:
                items.append((wrong[1 + (k // 8) % 3], gold, "math"))
            else:
                items.append((f"{reasoning}\nSo the answer is $\\boxed{{{perturb(gold, rng)}}}$.", gold, "math"))
    return items


def main():
    from transformers import HfArgumentParser
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    items = synthesize(args.samples, args.seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers or cores
    print(f"{len(items)} responses; {cores} CPU cores; parallel workers: {workers}")
    grading.grade(r"\boxed{1}", "1")  # import math-verify/sympy here, outside the sequential timing

    # alternate the three graders `repeats` times and keep each one's best time: on a shared machine the other
    # jobs' load comes and goes, and the minimum is the least disturbed measurement
    times = {"seq": [], "one": [], "par": []}
    for rep in range(args.repeats):
        t = time.perf_counter()
        seq = [grading.grade(r, g, a) for r, g, a in tqdm(items, desc="sequential")]  # the plain loop
        times["seq"].append(time.perf_counter() - t)
        t = time.perf_counter()
        one = grading.grade_many(items, workers=1, desc="grade_many, 1 process")
        times["one"].append(time.perf_counter() - t)
        t = time.perf_counter()
        par = grading.grade_many(items, workers=workers, desc="parallel")  # includes spawning the workers
        times["par"].append(time.perf_counter() - t)
        assert [r["correct"] for r in one] == [r["correct"] for r in par]
        print(f"repeat {rep + 1}: " + "  ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items())
              + f"  (load average {os.getloadavg()[0]:.1f})")
    t_seq, t_one, t_par = (min(times[k]) for k in ("seq", "one", "par"))

    diff = sum(a["correct"] != b["correct"] for a, b in zip(seq, par))
    acc = sum(r["correct"] for r in seq) / len(seq)
    uniq = len({(grading._math_input(r), g) for r, g, _ in items})
    print(f"sequential (plain grade() loop): {t_seq:.1f} s ({len(items) / t_seq:.0f} responses/s)")
    print(f"grade_many in one process ({uniq} distinct answer/gold pairs verified): {t_one:.1f} s")
    print(f"grade_many with {workers} worker processes: {t_par:.1f} s ({len(items) / t_par:.0f} responses/s); "
          f"processes alone: x{t_one / t_par:.2f}")
    print(f"graded correct: {100 * acc:.1f}%   timeouts: {sum(r['timeout'] for r in seq)}   "
          f"disagreements between the two runs: {diff}")
    print(f"parallel / sequential grading speed-up: {t_seq / t_par:.2f}")


if __name__ == "__main__":
    common.run_main(main)
