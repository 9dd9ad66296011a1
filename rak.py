r"""RAK, AES and the papers' result tables and figures, from evaluate.py outputs of several models.

    python rak.py --runs base=runs/eval_base sft=runs/eval_sft qfft=runs/eval_qfft \
        --reference base --baseline sft --out results
    python rak.py --runs base=DIR upft=DIR --train_stats upft=data/upft.jsonl.stats.json --plots
    python rak.py --runs base=DIR sft=DIR qfft=DIR --baseline sft --ci 0.95   # bootstrap intervals over questions

Each DIR is an evaluate.py output directory: DIR/<benchmark>.jsonl, one line per question with the lists
`correct`, `num_tokens` and `long_cot` (one entry per sample; `level` for MATH500). Everything is computed from
these per-sample files (DIR/metrics.json is not read).

Metrics
- Acc: % correct over all samples. Tokens: mean response tokens. Long-CoT: % of samples with a reflective keyword.
- RAK (QFFT §2.2, Eq. 1, footnote 3), against --reference M_S (the short-CoT model the others were fine-tuned
  from): per sample index i, a question is *solvable* when M_S's i-th sample is correct; with M_L's i-th sample,
  TP = solvable & short-CoT, FN = solvable & long-CoT, FP = unsolvable & short-CoT, TN = unsolvable & long-CoT,
  p_o = (TP+TN)/N, p_e = ((TP+FP)(TP+FN) + (FN+TN)(FP+TN))/N², κ_i = (p_o - p_e)/(1 - p_e) (0 with a warning when
  p_e = 1), RAK = 100 · mean_i κ_i. `--solvable mean`: solvable = M_S's mean accuracy on the question ≥ 0.5 (needed
  when the runs have different numbers of samples). The reference's own row compares it with itself.
- AES (QFFT §4.2) against --baseline (QFFT Table 3 uses the long-CoT SFT model; --reference when no --baseline):
  ΔL = (L_base - L)/L_base, ΔA = (A - A_base)/A_base,
  AES = 100(α ΔL + β|ΔA|) if ΔA ≥ 0 else 100(α ΔL - γ|ΔA|); the base's own AES is left empty ('-' in the paper).
- Average: the mean over the chosen benchmarks (empty when a run lacks one of them); Δ rows (against --baseline:
  accuracy and RAK differences, tokens as relative change in %) average the per-benchmark Δ, as QFFT Table 2 does.
- --ci LEVEL: percentile bootstrap intervals over questions (--ci_resamples resamples, --seed) for accuracy, tokens,
  RAK and long-CoT, their averages and the Δ rows. Each resample draws the benchmark's questions with replacement,
  the same draw for every run (Δ rows are paired), and recomputes every metric from the per-sample arrays, RAK with
  the reference on the same questions. Markdown/LaTeX: `value ± half the interval's width`; CSV: exact
  `<column>_lower` and `<column>_upper` columns.

Outputs (OUT = --out, default `results`): the tables printed as Markdown and written as OUT/tables.md,
OUT/table_qfft.csv, table_aes.csv, table_upft.csv, long_cot.csv (column `run`, Δ rows `Δ <name>`, columns
`<benchmark>_<metric>` in raw units at full precision (Δ rows: tokens in %), `avg_<metric>`), as .tex (booktabs),
OUT/rak_detail.csv (the confusion matrix of every sample index), OUT/meta.json; with --plots
OUT/long_cot_by_level.png (QFFT Fig. 5a) and OUT/acc_vs_tokens.png.
"""
from __future__ import annotations

import json
import math
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np

import common
import grading
import runs
import sources
import tracking

# ----------------------------------------------------------------------------------------------------------------


# field(...) for the many flags without aliases; a list default needs default_factory (one list per instance)
def _f(default, help_text):
    return field(default_factory=list, metadata={"help": help_text}) if default == [] else \
        field(default=default, metadata={"help": help_text})


@dataclass
class Args:
    runs: list[str] = field(default_factory=list, metadata={
        "help": "NAME=DIR ...: evaluate.py output directories (a bare DIR is named after its folder)",
        "aliases": ["--input"]})
    reference: Optional[str] = _f(None, "run RAK is measured against: the short-CoT model the others were "
                                        "fine-tuned from (default: the first run)")
    baseline: Optional[str] = _f(None, "run the Δ rows and AES compare against, e.g. the long-CoT SFT model "
                                       "(default: no Δ rows; AES against --reference)")
    benchmarks: Optional[list[str]] = _f(None, "benchmarks, space- or comma-separated (default: every one present "
                                               "in a run)")
    out: str = field(default="results", metadata={"help": "output directory for the CSV / LaTeX / Markdown tables "
                                                          "and the figures", "aliases": ["--output", "--output_dir"]})
    format: list[str] = field(default_factory=lambda: ["md", "csv", "tex"],
                              metadata={"help": "table files to write: md, csv, tex (the Markdown tables are always "
                                                "printed)"})
    plots: bool = _f(False, "also draw long_cot_by_level.png and acc_vs_tokens.png (needs matplotlib)")
    # 'index' is QFFT's footnote 3: the reference's i-th sample decides for the model's i-th sample
    solvable: Literal["index", "mean"] = _f("index", "'index': a question is solvable at sample i when the "
                                                     "reference's i-th sample is correct (QFFT); 'mean': when the "
                                                     "reference's mean accuracy on it is >= 0.5")
    # QFFT §4.2 (after O1-Pruner): α = β = 0.1, γ = 1.0, so a loss of accuracy weighs ten times a gain
    alpha: float = _f(0.1, "AES weight of the length reduction")
    beta: float = _f(0.1, "AES weight of an accuracy gain")
    gamma: float = _f(1.0, "AES weight of an accuracy loss")
    train_stats: list[str] = _f([], "NAME=STATS.json ...: prepare.py's OUT.jsonl.stats.json of a run, for the "
                                    "trained-token columns of the UPFT table")
    show: list[str] = field(default_factory=lambda: ["qfft", "aes", "upft", "long_cot"],
                            metadata={"help": "tables to print (all four are always written): qfft (QFFT Table 2), "
                                              "aes (QFFT Table 3), upft (UPFT Table 1), long_cot"})
    overwrite: bool = _f(False, "replace an --out made from other runs or settings")
    long_cot_rule: Optional[Literal["paper", "qfft_code"]] = _f(None, (
        "which responses are long-CoT, recomputed from every run's responses: paper (a reflective keyword, each "
        "run's --reflect_words; QFFT §2) or qfft_code (QFFT's eval/analysis/analysis_cli.py: 'wait' > 3 times, or "
        ">= 1 with 'alternatively'). None: the long_cot each run's evaluate.py stored (its --long_cot_rule, "
        "default paper)"))
    ci: Optional[float] = _f(None, "confidence level of bootstrap intervals over questions, e.g. 0.95: accuracy, "
                                   "tokens, RAK, long-CoT, averages and Δ rows get 'value ± half-width' in Markdown/"
                                   "LaTeX and <column>_lower/_upper in CSV (unset: none)")
    ci_resamples: int = _f(1000, "bootstrap resamples for --ci")
    seed: int = _f(0, "seed of the bootstrap resamples (--ci): the same seed gives the same intervals")
    report_to: Literal["none", "tensorboard", "wandb"] = _f("none", tracking.HELP.replace(
        "numbers", "table cells (rak/<run>/<benchmark>/<metric>)"))
    run_name: Optional[str] = _f(None, tracking.RUN_NAME_HELP)


FORMATS = ("md", "csv", "tex")


def warn(msg: str) -> None:
    # stderr: the tables on stdout stay clean to redirect
    print(f"warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# Reading evaluate.py outputs
@dataclass
class Bench:
    """One benchmark of one run: (questions × samples) arrays, rows in file order."""
    path: Path
    ids: list[str]
    correct: np.ndarray  # bool (Q, n)
    long_cot: np.ndarray  # bool (Q, n)
    tokens: np.ndarray  # float (Q, n)
    levels: list[Optional[int]]

    @property
    def n(self) -> int:
        return self.correct.shape[1]


def _sample_list(rec: dict, fld: str, where: str, kind: str) -> list:
    vals = common.require(rec, fld, where, (list,))
    for v in vals:
        # bool is an int in Python: `correct` must be true/false, and a token count must not be
        ok = isinstance(v, bool) if kind == "bool" else \
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v)
        if not ok:
            what = "true/false" if kind == "bool" else "non-negative numbers"
            raise common.DataError(f"{where}: field '{fld}' must be a list of {what}, found {v!r}")
    return vals


def load_benchmark(path: Path, long_cot_rule: Optional[str] = None, words: Optional[str] = None) -> Bench:
    """One evaluate.py benchmark file; long_cot_rule given: long_cot recomputed from the responses under it (paper:
    the keywords `words`, default 'wait')."""
    pattern = grading.reflect_pattern(words or grading.DEFAULT_REFLECT_WORDS)
    ids, correct, long_cot, tokens, levels = [], [], [], [], []
    first: dict[str, str] = {}
    n = None
    for lineno, rec in common.iter_jsonl(path):
        where = f"{path}:{lineno}"
        # compared as strings: a file of one's own may number its questions
        rid = str(common.require(rec, "id", where, (str, int)))
        if rid in first:
            raise common.DataError(f"{where}: duplicate id '{rid}' (first at {first[rid]})")
        first[rid] = where
        c = _sample_list(rec, "correct", where, "bool")
        lc = _sample_list(rec, "long_cot", where, "bool")
        # recomputed from the responses: runs evaluated under different rules become comparable
        if long_cot_rule:
            resp = common.require(rec, "responses", where, (list,))
            if len(resp) != len(lc) or not all(isinstance(t, str) for t in resp):
                raise common.DataError(f"{where}: field 'responses' must hold one text per sample ({len(lc)}) to "
                                       f"apply --long_cot_rule")
            lc = [grading.long_cot_offset(t, long_cot_rule, pattern) is not None for t in resp]
        # evaluate.py --count_tokenizer: every model's responses counted with one tokenizer (QFFT's convention)
        t = _sample_list(rec, "counted_tokens" if "counted_tokens" in rec else "num_tokens", where, "num")
        # a question without samples would divide by zero in every mean
        if not c:
            raise common.DataError(f"{where}: field 'correct' is empty (no samples)")
        if not len(c) == len(lc) == len(t):
            raise common.DataError(f"{where}: fields 'correct', 'long_cot', 'num_tokens' have different lengths "
                                   f"({len(c)}, {len(lc)}, {len(t)})")
        if n is None:
            n = len(c)
        # one n per benchmark: the (questions × samples) arrays and RAK's i-th samples need it
        elif len(c) != n:
            raise common.DataError(f"{where}: field 'correct' has {len(c)} samples, earlier lines have {n}")
        lv = rec.get("level")
        if isinstance(lv, str):
            # MATH's own spelling, "Level 3", read as 3
            digits = "".join(ch for ch in lv if ch.isdigit())
            lv = int(digits) if digits else None
        elif lv is not None and not (isinstance(lv, int) and not isinstance(lv, bool)):
            raise common.DataError(f"{where}: field 'level' must be int, got {type(lv).__name__}")
        ids.append(rid)
        correct.append(c)
        long_cot.append(lc)
        tokens.append(t)
        levels.append(lv)
    if not ids:
        raise common.DataError(f"{path}: no records")
    return Bench(path, ids, np.array(correct, dtype=bool), np.array(long_cot, dtype=bool),
                 np.array(tokens, dtype=float), levels)


def run_meta(d: str) -> dict:
    """An evaluate.py output directory's meta.json ({} when absent or not a JSON object)."""
    p = Path(d) / "meta.json"
    m = common.read_json(p, "metadata") if p.exists() else {}
    return m if isinstance(m, dict) else {}


def parse_pairs(specs: list[str], flag: str, bare_ok: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in specs:
        if "=" in s:
            name, val = s.split("=", 1)
        elif bare_ok:
            # a bare DIR is named after its folder (a trailing slash from tab completion dropped)
            name, val = Path(s.rstrip("/")).name, s
        else:
            raise common.DataError(f"{flag} {s}: expected NAME=PATH")
        if not name or not val:
            raise common.DataError(f"{flag} {s}: expected NAME=PATH")
        # two runs of one name would share one row of every table
        if name in out:
            raise common.DataError(f"{flag}: run name '{name}' given twice")
        out[name] = val
    return out


def list_benchmarks(name: str, d: str) -> dict[str, Path]:
    p = Path(d)
    if not p.is_dir():
        raise common.DataError(f"run '{name}': {d} is not a directory (expected an evaluate.py output directory "
                               f"holding <benchmark>.jsonl files)")
    files = sources.eval_output_files(p)
    if not files:
        raise common.DataError(f"run '{name}': {d} has no <benchmark>.jsonl files (is it an evaluate.py output "
                               f"directory?)")
    return files


def order_benchmarks(names) -> list[str]:
    names = set(names)
    # the registry's order is the papers' column order; other names (files of no registry benchmark) after it
    return [b for b in sources.BENCHMARKS if b in names] + sorted(names - set(sources.BENCHMARKS))


# ----------------------------------------------------------------------------------------------------------------
# Metrics
def kappa(solvable: np.ndarray, short: np.ndarray) -> dict:
    """Cohen's κ between 'solvable by the reference' and 'answered with a short CoT' over N questions (QFFT Eq. 1)."""
    solvable, short = np.asarray(solvable, bool), np.asarray(short, bool)
    N = len(solvable)
    tp = int(np.sum(solvable & short))
    fn = int(np.sum(solvable & ~short))
    fp = int(np.sum(~solvable & short))
    tn = int(np.sum(~solvable & ~short))
    p_o = (tp + tn) / N
    # chance agreement from the two marginals (QFFT Eq. 1)
    p_e = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / N ** 2
    # p_e = 1 (every question in one cell of the matrix): κ is 0/0, reported as 0; rak() warns
    degenerate = math.isclose(p_e, 1.0)
    k = 0.0 if degenerate else (p_o - p_e) / (1 - p_e)
    return {"TP": tp, "FN": fn, "FP": fp, "TN": tn, "N": N, "p_o": p_o, "p_e": p_e, "kappa": k,
            "degenerate": degenerate}


def match_ids(ref: Bench, model: Bench, ref_name: str, name: str, bench: str) -> np.ndarray:
    """Row indices into model for each reference question; any unmatched id is an error."""
    # Matched by id, not by line: runs may list their questions in another order (Ray writes blocks as they finish).
    pos = {rid: i for i, rid in enumerate(model.ids)}
    only_ref = [r for r in ref.ids if r not in pos]
    ref_set = set(ref.ids)
    only_model = [r for r in model.ids if r not in ref_set]
    if only_ref or only_model:
        parts = []
        for who, lst in ((ref_name, only_ref), (name, only_model)):
            if lst:
                more = f" and {len(lst) - 5} more" if len(lst) > 5 else ""
                parts.append(f"{len(lst)} only in '{who}' ({', '.join(map(repr, lst[:5]))}{more})")
        raise common.DataError(f"{bench}: runs '{ref_name}' ({ref.path}) and '{name}' ({model.path}) have different "
                               f"question ids: {'; '.join(parts)}")
    return np.array([pos[r] for r in ref.ids])


def rak(ref: Bench, model: Bench, mode: str, ref_name: str, name: str, bench: str) -> tuple[float, list[dict]]:
    """RAK = 100 · mean over sample indices of κ_i; also the per-index confusion matrices."""
    rows = match_ids(ref, model, ref_name, name, bench)
    short = ~model.long_cot[rows]  # (Q, n_model), in the reference's question order
    if mode == "index":
        if model.n != ref.n:
            raise common.DataError(f"{bench}: run '{name}' has {model.n} samples per question, reference "
                                   f"'{ref_name}' has {ref.n}; RAK pairs the i-th samples (QFFT footnote 3). "
                                   f"Pass --solvable mean to call a question solvable when the reference's mean "
                                   f"accuracy is >= 0.5")
        solvable = ref.correct
    else:
        # 'mean': one verdict per question, repeated for each of the model's samples (any n on either side)
        solvable = np.repeat((ref.correct.mean(axis=1) >= 0.5)[:, None], model.n, axis=1)
    details = [{"sample": i, **kappa(solvable[:, i], short[:, i])} for i in range(model.n)]
    bad = [d["sample"] for d in details if d["degenerate"]]
    if bad:
        warn(f"{bench}, run '{name}': p_e = 1 for {len(bad)} of {model.n} sample indices (every question in one cell "
             f"of the confusion matrix: all solvable and short, or all unsolvable and long); κ set to 0 there")
    return 100.0 * float(np.mean([d["kappa"] for d in details])), details


def aes(acc_base: float, tok_base: float, acc: float, tok: float, alpha=0.1, beta=0.1, gamma=1.0) -> float:
    """Accuracy-Efficiency Score (QFFT §4.2)."""
    if not tok_base or (not acc_base and acc):
        return float("nan")  # relative accuracy change undefined: an empty cell
    dl = (tok_base - tok) / tok_base
    da = (acc - acc_base) / acc_base if acc_base else 0.0  # 0% -> 0%: no accuracy change
    # ×100: QFFT Table 3 prints AES × 100 (QFFT on GSM8K: 0.059 is printed 5.9; docs/paper_numbers.md)
    return 100.0 * (alpha * dl + beta * abs(da)) if da >= 0 else 100.0 * (alpha * dl - gamma * abs(da))


def summarize(b: Bench) -> dict:
    out = {"acc": 100.0 * b.correct.mean(), "tokens": float(b.tokens.mean()), "long_cot": 100.0 * b.long_cot.mean(),
           "n": b.n, "num_questions": len(b.ids)}
    by_level = {}
    for lv in sorted({lv for lv in b.levels if lv is not None}):
        mask = np.array([x == lv for x in b.levels])
        by_level[lv] = 100.0 * b.long_cot[mask].mean()
    out["long_cot_by_level"] = by_level
    return out


def train_stats(path: str) -> dict:
    """Average and total trained tokens from prepare.py's OUT.jsonl.stats.json (a few other spellings accepted)."""
    p = Path(path)
    if not p.is_file():
        raise common.DataError(f"{p}: --train_stats file not found")
    try:
        s = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise common.DataError(f"{p}: not valid JSON ({e.msg})") from None
    if not isinstance(s, dict):
        raise common.DataError(f"{p}: expected a JSON object")

    # several spellings: stats written by other tools (or older prepare.py versions) are read too
    def pick(keys):
        for k in keys:
            v = s.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
        return None

    # prepare.py writes trained_tokens (UPFT's "#Tokens tuning"), examples and completion_tokens_mean; its
    # total_tokens includes the prompts, so it is not a synonym here
    total = pick(("trained_tokens", "total_trained_tokens", "total_completion_tokens", "completion_tokens"))
    n = pick(("examples", "num_examples", "n_examples", "num_records", "records"))
    avg = pick(("completion_tokens_mean", "avg_completion_tokens", "mean_completion_tokens", "avg_trained_tokens",
                "mean_trained_tokens"))
    # whichever two are stored give the third: the average from the totals when both are there
    if total is not None and n:
        avg = total / n
    elif total is None and avg is not None and n is not None:
        total = avg * n
    if total is None or avg is None:
        raise common.DataError(f"{p}: cannot find the trained-token counts (expected 'trained_tokens' and "
                               f"'examples' as prepare.py writes them, or 'completion_tokens_mean'; keys present: "
                               f"{', '.join(sorted(s)) or 'none'})")
    return {"train_avg_tokens": avg, "train_total_tokens": total}


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap intervals over questions (--ci)
def kappa_counts(tp, fn, fp, tn) -> np.ndarray:
    """Cohen's κ from (possibly weighted) confusion counts, element-wise; 0 where p_e = 1, as kappa() does."""
    tp, fn, fp, tn = (np.asarray(x, dtype=float) for x in (tp, fn, fp, tn))
    n = tp + fn + fp + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        p_o = (tp + tn) / n
        p_e = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n ** 2
        k = (p_o - p_e) / (1 - p_e)
    # 0 where p_e = 1, as kappa(); NaN where a resample drew nothing stays NaN, and intervals() leaves it out
    return np.where(np.isclose(p_e, 1.0), 0.0, k)


def question_weights(ids: list[str], resamples: int, seed: int, bench: str) -> np.ndarray:
    """(resamples, len(ids)): how often each question is drawn in each bootstrap resample (multinomial = drawing
    len(ids) questions with replacement), seeded by --seed and the benchmark's name."""
    # crc32 of the name, not hash(): Python salts string hashes per process, and a seed must give the same intervals
    # in every run. One stream per benchmark: adding a benchmark leaves the others' intervals unchanged.
    rng = np.random.default_rng([seed, zlib.crc32(bench.encode())])
    # Counts, not drawn indices: every resampled metric is then a weighted mean, one matrix product for all resamples.
    # float32 halves the memory of resamples × questions (MMLU-Pro has 12,032 questions).
    return rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=resamples).astype(np.float32)


def bootstrap(data: dict, names: list[str], benches: list[str], ref: str, base: Optional[str], mode: str,
              resamples: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{row: {csv column: the metric in every resample}} for the columns of build_tables (<bench>_acc, _tokens,
    _long_cot, _rak, avg_*) and the Δ rows ('Δ <run>'). Each benchmark's questions (the union of the runs' ids) are
    resampled once; every run is weighted by the same draw, so Δ rows are paired."""
    out: dict[str, dict[str, np.ndarray]] = {r: {} for r in names}
    for b in benches:
        ids = sorted({i for r in names if b in data[r] for i in data[r][b].ids})
        col = {i: k for k, i in enumerate(ids)}
        w = question_weights(ids, resamples, seed, b)
        for r in names:
            x = data[r].get(b)
            if x is None:
                continue
            # the draw restricted to this run's questions; its total weight is the number of them drawn
            wr = w[:, [col[i] for i in x.ids]]
            tot = wr.sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):  # a subset of the union may draw no question
                for m, arr, scale in (("acc", x.correct, 100.0), ("tokens", x.tokens, 1.0),
                                      ("long_cot", x.long_cot, 100.0)):
                    # each question's mean over its samples, weighted by the draw: summarize() on the resample
                    out[r][f"{b}_{m}"] = scale * (wr @ arr.mean(axis=1)) / tot
            if b in data[ref]:
                rf = data[ref][b]
                rows = match_ids(rf, x, ref, r, b)
                short = ~x.long_cot[rows]
                solvable = rf.correct if mode == "index" else np.repeat((rf.correct.mean(axis=1) >= 0.5)[:, None],
                                                                        x.n, axis=1)
                wq = w[:, [col[i] for i in rf.ids]]
                # each confusion cell as a weighted count of questions: rak() on every resample at once
                ks = [kappa_counts(*(wq @ (a & c).astype(np.float32) for a, c in
                                     ((solvable[:, i], short[:, i]), (solvable[:, i], ~short[:, i]),
                                      (~solvable[:, i], short[:, i]), (~solvable[:, i], ~short[:, i]))))
                      for i in range(x.n)]
                out[r][f"{b}_rak"] = 100.0 * np.mean(ks, axis=0)
    nan = np.full(resamples, np.nan)
    for r in names:
        for m in ("acc", "tokens", "long_cot", "rak"):
            # a benchmark missing in a run makes its average NaN in every resample, as the tables leave it empty
            out[r][f"avg_{m}"] = np.mean([out[r].get(f"{b}_{m}", nan) for b in benches], axis=0)
    # Δ rows from the same draw for the run and the baseline: the interval of the difference itself, much narrower
    # than two intervals subtracted when the runs share their hard questions
    if base:
        for r in names:
            if r == base:
                continue
            d = {}
            for b in benches:
                x, y = out[r], out[base]
                d[f"{b}_acc"] = x.get(f"{b}_acc", nan) - y.get(f"{b}_acc", nan)
                with np.errstate(divide="ignore", invalid="ignore"):
                    d[f"{b}_tokens"] = 100.0 * (x.get(f"{b}_tokens", nan) - y.get(f"{b}_tokens", nan)) \
                        / y.get(f"{b}_tokens", nan)
                d[f"{b}_rak"] = x.get(f"{b}_rak", nan) - y.get(f"{b}_rak", nan)
            for m in ("acc", "tokens", "rak"):
                d[f"avg_{m}"] = np.mean([d[f"{b}_{m}"] for b in benches], axis=0)
            out[f"Δ {r}"] = d
    return out


def intervals(boot: dict[str, dict[str, np.ndarray]], level: float) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile intervals at `level` from bootstrap(); a column with no finite resample gets none."""
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for row, cols in boot.items():
        for c, v in cols.items():
            v = np.asarray(v, dtype=float)
            # a resample that drew none of a run's questions (or a 0/0 κ) gives NaN: left out, not counted as 0
            v = v[np.isfinite(v)]
            if len(v):
                lo, hi = np.percentile(v, [lo_q, hi_q])
                out.setdefault(row, {})[c] = (float(lo), float(hi))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tables: raw values (CSV, full precision) + formatted cells (Markdown / LaTeX)
def is_number(v) -> bool:
    """A value to print: not missing (None) and not NaN (a metric with nothing to average)."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def f_acc(v, delta=False):
    return "" if not is_number(v) else (f"{v:+.1f}" if delta else f"{v:.1f}")


def f_tok(v, delta=False):
    # QFFT's tables write tokens in K (1.7K) and their Δ as a relative change in %
    return "" if not is_number(v) else (f"{v:+.1f}%" if delta else f"{v / 1000:.1f}K")


def f_big(v, delta=False):
    if not is_number(v):
        return ""
    # UPFT Table 2's #Tokens style (2.3M, 0.2M)
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}K" if v >= 1e3 else f"{v:.0f}"


def f_int(v, delta=False):
    return "" if not is_number(v) else f"{v:.0f}"


@dataclass
class Table:
    name: str  # file stem
    title: str
    groups: list  # [(group label, [(metric label, csv column, formatter)])]
    rows: list = field(default_factory=list)  # [(run label, {csv column: value}, is_delta)]
    notes: list = field(default_factory=list)
    dash: set = field(default_factory=set)  # (run label, csv column) cells printed '-' (not applicable), NaN in CSV
    ci: dict = field(default_factory=dict)  # (run label, csv column) -> (lower, upper) of --ci

    def columns(self):
        return [c for _, ms in self.groups for _, c, _ in ms]

    def frame(self):
        """One row per run; with --ci, `<column>_lower` and `<column>_upper` after each column that has intervals."""
        import pandas as pd
        cols = []
        for c in self.columns():
            cols.append(c)
            if any(key[1] == c for key in self.ci):
                cols += [f"{c}_lower", f"{c}_upper"]
        nan = (float("nan"), float("nan"))
        rows = []
        for r, vals, _ in self.rows:
            row = {"run": r}
            for c in self.columns():
                row[c] = vals.get(c, float("nan"))
                if f"{c}_lower" in cols:
                    # a '-' cell (not applicable) has no interval either
                    row[f"{c}_lower"], row[f"{c}_upper"] = nan if (r, c) in self.dash else self.ci.get((r, c), nan)
            rows.append(row)
        return pd.DataFrame(rows, columns=["run"] + cols)

    def cells(self):
        fmts = [f for _, ms in self.groups for _, _, f in ms]
        return [[r] + ["-" if (r, c) in self.dash else _with_ci(f, vals.get(c), d, self.ci.get((r, c)))
                       for c, f in zip(self.columns(), fmts)] for r, vals, d in self.rows]

    def markdown(self) -> str:
        head = ["run"] + [f"{g} {m}".strip() for g, ms in self.groups for m, _, _ in ms]
        out = [f"### {self.title}", "", common.markdown_table(head, self.cells())]
        out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def latex(self) -> str:
        """booktabs LaTeX through pandas (Styler.to_latex): the groups as multicolumn headers, the notes below."""
        import pandas as pd
        cols = pd.MultiIndex.from_tuples([("", "Run")] + [(g, m) for g, ms in self.groups for m, _, _ in ms])
        df = pd.DataFrame(self.cells(), columns=cols)
        if not any(m for _, ms in self.groups for m, _, _ in ms):  # one header row: the group labels
            df.columns = ["Run"] + [g for g, _ in self.groups]
        # run names and labels may hold _ or %, which LaTeX would read as commands
        sty = df.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
        # run names left-aligned, numbers right-aligned, as in the Markdown tables
        tex = sty.to_latex(hrules=True, multicol_align="c", caption=_latex_escape(self.title), position="t",
                           position_float="centering", column_format="l" + "r" * (len(df.columns) - 1))
        if self.notes:
            # the notes inside the float, under the tabular, so that they move with the table
            tex = tex.replace("\\end{table}", "\\par\\smallskip\\footnotesize\n"
                              + " \\\\\n".join(_latex_escape(n) for n in self.notes) + "\n\\end{table}")
        return _latex_math(tex)


def _with_ci(f, v, delta: bool, ci: Optional[tuple]) -> str:
    """A cell, with `± half the interval's width` when --ci gave it an interval (tokens: in K, or % in Δ rows)."""
    cell = f(v, delta)
    if not cell or ci is None:
        return cell
    half = (ci[1] - ci[0]) / 2
    if f is f_tok and not delta:  # K with as many decimals as it takes for the half-width not to read 0.0K
        d = next((d for d in (1, 2, 3) if round(half / 1000, d) > 0), 3)
        return f"{v / 1000:.{d}f}K ± {half / 1000:.{d}f}K"
    return f"{cell} ± {f'{half:.1f}%' if f is f_tok else f(half)}"


def _latex_escape(s: str) -> str:
    # pandas' own escaper, the one the cells go through: caption, notes and cells escape alike
    from pandas.io.formats.style_render import _escape_latex
    return _escape_latex(s)


def _latex_math(tex: str) -> str:
    """The few non-ASCII symbols of the tables as math (pdflatex has no glyphs for them)."""
    for a, b in (("Δ", "$\\Delta$"), ("≥", "$\\geq$"), ("κ", "$\\kappa$"), ("α", "$\\alpha$"), ("±", "$\\pm$"),
                 ("β", "$\\beta$"), ("γ", "$\\gamma$")):
        tex = tex.replace(a, b)
    return tex


def _avg(vals: list) -> float:
    # An average over fewer benchmarks than its row's would not compare with the others: NaN, an empty cell.
    return float(np.mean(vals)) if vals and all(is_number(v) for v in vals) else float("nan")


def build_tables(names, benches, summ, raks, aes_vals, args, ref, base, aes_base, train, degenerate=()) -> list[Table]:
    """summ[run][bench] = summarize(); raks[run][bench] = RAK; aes_vals[run][bench] = AES; missing = absent key."""
    missing = [(r, b) for r in names for b in benches if b not in summ[r]]
    miss_note = ([f"empty: no results for {', '.join(f'{r}/{b}' for r, b in missing)}; averages that would "
                  f"include them are left empty"] if missing else [])
    # the display names live with the sources: one list for every table and figure
    label = sources.label

    def metrics_of(r):
        v = {}
        for b in benches:
            s = summ[r].get(b)
            v[f"{b}_acc"] = s["acc"] if s else float("nan")
            v[f"{b}_tokens"] = s["tokens"] if s else float("nan")
            v[f"{b}_long_cot"] = s["long_cot"] if s else float("nan")
            v[f"{b}_rak"] = raks[r].get(b, float("nan"))
            v[f"{b}_aes"] = aes_vals[r].get(b, float("nan"))
        for m in ("acc", "tokens", "long_cot", "rak", "aes"):
            v[f"avg_{m}"] = _avg([v[f"{b}_{m}"] for b in benches])
        return v

    vals = {r: metrics_of(r) for r in names}

    # 1. QFFT Table 2
    groups = [(label(b), [("Acc", f"{b}_acc", f_acc), ("Tokens", f"{b}_tokens", f_tok), ("RAK", f"{b}_rak", f_acc)])
              for b in benches]
    groups.append(("Average", [("Acc", "avg_acc", f_acc), ("Tokens", "avg_tokens", f_tok),
                               ("RAK", "avg_rak", f_acc)]))
    t2 = Table("table_qfft", "Accuracy, response tokens and RAK (QFFT Table 2 layout)", groups)
    for r in names:
        # each Δ row right under its run, as in QFFT Table 2
        t2.rows.append((r, vals[r], False))
        if base and r != base:
            d = {}
            for b in benches:
                x, y = vals[r], vals[base]
                d[f"{b}_acc"] = x[f"{b}_acc"] - y[f"{b}_acc"]
                # a relative change, undefined against a base of 0 tokens (or a missing one): empty
                d[f"{b}_tokens"] = 100.0 * (x[f"{b}_tokens"] - y[f"{b}_tokens"]) / y[f"{b}_tokens"] \
                    if is_number(y[f"{b}_tokens"]) and y[f"{b}_tokens"] else float("nan")
                d[f"{b}_rak"] = x[f"{b}_rak"] - y[f"{b}_rak"]
            for m in ("acc", "tokens", "rak"):  # QFFT Table 2: the Average Δ is the mean of the per-benchmark Δ
                d[f"avg_{m}"] = _avg([d[f"{b}_{m}"] for b in benches])
            t2.rows.append((f"Δ {r}", d, True))
    t2.notes = [f"Acc in %; Tokens: mean response tokens (K); RAK (QFFT Eq. 1) against the reference '{ref}' "
                f"(its own row compares it with itself); solvable = "
                + ("the reference's i-th sample is correct" if args.solvable == "index"
                   else "the reference's mean accuracy on the question >= 0.5") + "."]
    if base:
        t2.notes.append(f"Δ rows against '{base}': accuracy difference (points), tokens as relative change (%), "
                        f"RAK difference; the Average Δ is the mean of the per-benchmark Δ (as in QFFT Table 2).")
    degen = [f"{d['run']}/{d['benchmark']} ({d['count']} of {d['n']})" for d in degenerate]
    if degen:
        t2.notes.append(f"κ_i set to 0 where p_e = 1 (all questions in one cell): {', '.join(degen)}.")
    no_ref = [b for b in benches if b not in summ[ref]]
    if no_ref:
        t2.notes.append(f"RAK empty for {', '.join(no_ref)}: the reference '{ref}' has no results there.")
    t2.notes += miss_note

    # 2. QFFT Table 3
    groups = [(label(b), [("Acc", f"{b}_acc", f_acc), ("Tokens", f"{b}_tokens", f_tok), ("AES", f"{b}_aes", f_acc)])
              for b in benches]
    groups.append(("Average", [("Acc", "avg_acc", f_acc), ("Tokens", "avg_tokens", f_tok), ("AES", "avg_aes", f_acc)]))
    # no Δ rows: AES is already a comparison with its base
    t3 = Table("table_aes", "Accuracy-Efficiency Score (QFFT Table 3 layout)", groups,
               [(r, vals[r], False) for r in names])
    t3.dash = {(aes_base, f"{b}_aes") for b in benches} | {(aes_base, "avg_aes")}
    t3.notes = [f"AES (QFFT §4.2) against '{aes_base}' with α={args.alpha:g}, β={args.beta:g}, γ={args.gamma:g}; "
                f"Average AES is the mean of the per-benchmark AES; the base's own AES cells are '-', as in the "
                f"paper."] + miss_note
    if not base:
        t3.notes.append("no --baseline given: AES is against the reference; QFFT Table 3 measures it against the "
                        "long-CoT SFT model (pass --baseline).")

    # 3. UPFT Table 1
    # one number per benchmark, headed by the benchmark alone, as UPFT Table 1
    groups = [(label(b), [("", f"{b}_acc", f_acc)]) for b in benches] + [("Average", [("", "avg_acc", f_acc)])]
    if train:
        groups.append(("Train", [("tokens/ex", "train_avg_tokens", f_int), ("#Tokens", "train_total_tokens", f_big)]))
    t1 = Table("table_upft", "Accuracy (UPFT Table 1 layout)", groups,
               [(r, {**vals[r], **train.get(r, {})}, False) for r in names])
    t1.notes = ["Accuracy in % over all samples."] + miss_note
    if train:
        t1.dash = {(r, c) for r in names if r not in train for c in ("train_avg_tokens", "train_total_tokens")}
        t1.notes.append("Train: average trained (completion) tokens per example and total trained tokens, from "
                        "prepare.py's stats (" + ", ".join(f"{r}" for r in train) + "); '-' for runs without "
                        "--train_stats (e.g. the untuned base).")

    # 4. Long-CoT ratio
    groups = [(label(b), [("", f"{b}_long_cot", f_acc)]) for b in benches] + \
        [("Average", [("", "avg_long_cot", f_acc)])]
    t4 = Table("long_cot", "Long-CoT ratio (% of responses with a reflective keyword)", groups,
               [(r, vals[r], False) for r in names])
    t4.notes = list(miss_note)
    return [t2, t3, t1, t4]


# ----------------------------------------------------------------------------------------------------------------
# Figures
def _pyplot():
    try:
        import matplotlib
        # no display on a cluster node: draw into files only
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise common.DataError("--plots needs matplotlib: pip install matplotlib") from None
    return plt


def make_plots(out: Path, names, benches, summ) -> list[Path]:
    plt = _pyplot()
    written = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {r: colors[j % len(colors)] for j, r in enumerate(names)}  # one colour per run in both figures
    # QFFT Fig. 5a: long-CoT ratio by MATH500 level, one bar group per level, one bar per run
    # only MATH500 has difficulty levels; a run without them has no bars to draw
    have = [r for r in names if "math500" in summ[r] and summ[r]["math500"]["long_cot_by_level"]]
    if have:
        levels = sorted({lv for r in have for lv in summ[r]["math500"]["long_cot_by_level"]})
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(levels) + 2), 4), dpi=150)
        # the runs' bars share 80% of each level's slot, leaving a gap between levels
        w = 0.8 / len(have)
        x = np.arange(len(levels))
        for j, r in enumerate(have):
            ys = [summ[r]["math500"]["long_cot_by_level"].get(lv, np.nan) for lv in levels]
            bars = ax.bar(x + (j - (len(have) - 1) / 2) * w, ys, w, label=r, color=color[r])
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ax.set_xticks(x, [f"Level {lv}" for lv in levels])
        ax.set_ylabel("long-CoT ratio (%)")
        # room above 100% for the bar labels and the legend
        ax.set_ylim(0, 118)
        ax.set_yticks(range(0, 101, 20))
        ax.set_title("MATH500: long-CoT ratio by difficulty level")
        ax.legend(frameon=False, fontsize=8, loc="upper center", ncol=min(len(have), 6))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        p = out / "long_cot_by_level.png"
        fig.savefig(p)
        plt.close(fig)
        written.append(p)
    else:
        warn("no MATH500 results with 'level' in any run: long_cot_by_level.png not drawn")
    # accuracy vs tokens, one panel per benchmark, one labelled point per run
    k = len(benches)
    # at most four panels a row, so that the figure stays readable at page width
    cols = min(k, 4)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), dpi=150, squeeze=False)
    for ax, b in zip(axes.flat, benches):
        for r in names:
            s = summ[r].get(b)
            if s:
                ax.scatter(s["tokens"], s["acc"], color=color[r], s=40, zorder=3)
                ax.annotate(r, (s["tokens"], s["acc"]), xytext=(4, 4), textcoords="offset points", fontsize=8)
        ax.set_title(sources.label(b))
        ax.set_xlabel("mean response tokens")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(0.2)
        lo, hi = ax.get_ylim()
        # the margins of an accuracy axis stay near 0-100
        ax.set_ylim(max(lo, -2), min(hi, 105))
        ax.set_xlim(left=max(ax.get_xlim()[0], 0))
    # the empty panels of the last row are hidden
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.suptitle("Accuracy vs. response length")
    fig.tight_layout()
    p = out / "acc_vs_tokens.png"
    fig.savefig(p)
    plt.close(fig)
    written.append(p)
    return written


# ----------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = common.parse_args(Args, __doc__, argv)
    if not args.runs:
        raise common.DataError("--runs: give at least one NAME=DIR")
    for name in ("alpha", "beta", "gamma"):
        # `not x >= 0`, not `x < 0`: NaN is refused too
        if not getattr(args, name) >= 0:
            raise common.DataError(f"--{name} must be >= 0 (an AES weight), got {getattr(args, name)}")
    if args.ci is not None and not 0 < args.ci < 1:
        raise common.DataError(f"--ci must be a confidence level in (0, 1), e.g. 0.95, got {args.ci}")
    if args.ci_resamples < 1:
        raise common.DataError(f"--ci_resamples must be >= 1, got {args.ci_resamples}")
    # before any run is read: an unwritable --out fails in a second
    common.check_writable(args.out, "--out", folder=True)
    formats = common.comma_list(args.format)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise common.DataError(f"--format: unknown {', '.join(bad)} (choose from {', '.join(FORMATS)})")
    run_dirs = parse_pairs(args.runs, "--runs", bare_ok=True)
    names = list(run_dirs)
    # the first run by default: runs are usually listed base model first
    ref = args.reference or names[0]
    for flag, v in (("--reference", ref), ("--baseline", args.baseline)):
        if v is not None and v not in run_dirs:
            raise common.DataError(f"{flag} {v}: not one of the runs ({', '.join(names)})")
    base = args.baseline
    aes_base = base or ref
    stats_files = parse_pairs(args.train_stats, "--train_stats", bare_ok=False)
    unknown = [r for r in stats_files if r not in run_dirs]
    if unknown:
        raise common.DataError(f"--train_stats: {', '.join(unknown)} not one of the runs ({', '.join(names)})")
    # read now: a bad stats file fails before any run is loaded
    train = {r: train_stats(p) for r, p in stats_files.items()}
    if args.plots:
        _pyplot()  # fail before any work when matplotlib is missing
    tracking.Tracker.check(args.report_to)

    files = {r: list_benchmarks(r, d) for r, d in run_dirs.items()}
    present = order_benchmarks(b for fs in files.values() for b in fs)
    if args.benchmarks:
        benches = common.comma_list(args.benchmarks)
        absent = [b for b in benches if b not in present]
        if absent:
            raise common.DataError(f"--benchmarks: no run has {', '.join(absent)} (present: {', '.join(present)})")
    else:
        benches = present
    out = Path(args.out)
    metas = {r: run_meta(d) for r, d in run_dirs.items()}
    stored = {r: metas[r].get("settings", {}).get("long_cot_rule") or "paper" for r in names}  # before the flag: paper
    # resolved paths: the same runs named from another folder are the same settings
    settings = {"runs": {r: str(Path(d).resolve()) for r, d in run_dirs.items()}, "reference": ref,
                "baseline": base, "benchmarks": benches, "solvable": args.solvable, "alpha": args.alpha,
                "beta": args.beta, "gamma": args.gamma, "train_stats": stats_files,
                "long_cot_rule": args.long_cot_rule or stored,
                **({"ci": args.ci, "ci_resamples": args.ci_resamples, "seed": args.seed} if args.ci else {})}
    runs.claim_output(out / "meta.json", settings, args.overwrite, f"{out}")  # tables are cheap: always rewritten
    if args.long_cot_rule is None and len(set(stored.values())) > 1:
        used = ", ".join(f"{r}: {v}" for r, v in stored.items())
        warn(f"the runs were evaluated with different long-CoT rules ({used}): pass --long_cot_rule to recompute "
             f"them all with one")
    # each run's own reflect words when the paper rule is recomputed: a run evaluated with other keywords keeps them
    data = {r: {b: load_benchmark(files[r][b], args.long_cot_rule, metas[r].get("reflect_words"))
                for b in benches if b in files[r]} for r in names}
    for r in names:
        for b in benches:
            if b not in data[r]:
                warn(f"run '{r}' has no {b}.jsonl in {run_dirs[r]}: its cells are left empty")

    summ = {r: {b: summarize(x) for b, x in data[r].items()} for r in names}
    raks, aes_vals, detail, degenerate = {r: {} for r in names}, {r: {} for r in names}, [], []
    for r in names:
        for b, x in data[r].items():
            # RAK needs the reference's grades on the same benchmark; without them the cell stays empty
            if b in data[ref]:
                raks[r][b], det = rak(data[ref][b], x, args.solvable, ref, r, b)
                detail += [{"run": r, "benchmark": b, **d} for d in det]
                if any(d["degenerate"] for d in det):
                    degenerate.append({"run": r, "benchmark": b, "n": len(det),
                                       "count": sum(d["degenerate"] for d in det)})
            if b in summ[aes_base] and r != aes_base:  # the base's own AES is '-' in QFFT Table 3
                sb = summ[aes_base][b]
                aes_vals[r][b] = aes(sb["acc"], sb["tokens"], summ[r][b]["acc"], summ[r][b]["tokens"],
                                     args.alpha, args.beta, args.gamma)

    tables = build_tables(names, benches, summ, raks, aes_vals, args, ref, base, aes_base, train, degenerate)
    cis = {}
    if args.ci:
        # only the ± comes from the bootstrap: every table value stays the point estimate computed above
        cis = intervals(bootstrap(data, names, benches, ref, base, args.solvable, args.ci_resamples, args.seed),
                        args.ci)
        for t in tables:
            t.ci = {(r, c): cis[r][c] for r, _, _ in t.rows for c in t.columns() if c in cis.get(r, {})}
            if t.ci:
                t.notes.append(f"±: half the width of the {args.ci:.0%} percentile bootstrap interval over questions "
                               f"({args.ci_resamples} resamples, seed {args.seed}; Δ rows paired); the CSV has the "
                               f"exact bounds (<column>_lower, <column>_upper).")
    # every table is written; --show only chooses what is printed
    md = "\n".join(t.markdown() for t in tables)
    show = set(common.comma_list(args.show))
    unknown = show - {"qfft", "aes", "upft", "long_cot"}
    if unknown:
        raise common.DataError(f"--show: unknown table(s) {', '.join(sorted(unknown))} (qfft, aes, upft, long_cot)")
    print("\n".join(t.markdown() for t in tables if t.name.removeprefix("table_") in show))

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        # Each file atomically: a reader (a LaTeX build, a notebook) never sees half a table.
        common.atomic_write(out / "tables.md", lambda f: f.write(md))
        written.append(out / "tables.md")
    for t in tables:
        if "csv" in formats:
            df = t.frame()
            # df=df (t=t below): the lambda binds this iteration's table, not the loop variable (bugbear B023)
            common.atomic_write(out / f"{t.name}.csv", lambda f, df=df: df.to_csv(f, index=False))
            written.append(out / f"{t.name}.csv")
        if "tex" in formats:
            common.atomic_write(out / f"{t.name}.tex", lambda f, t=t: f.write(t.latex()))
            written.append(out / f"{t.name}.tex")
    if detail and "csv" in formats:
        import pandas as pd
        # the degenerate flag is in the table notes; the confusion counts here show it (one cell holds every question)
        df = pd.DataFrame(detail).drop(columns="degenerate")
        common.atomic_write(out / "rak_detail.csv", lambda f: df.to_csv(f, index=False))
        written.append(out / "rak_detail.csv")
    if args.plots:
        written += make_plots(out, names, benches, summ)
    # every number (and the intervals) in meta.json: trackers and later tools read it, not the formatted tables
    metrics = {r: {b: {k: v for k, v in s.items()} | {"rak": raks[r].get(b), "aes": aes_vals[r].get(b)}
                   for b, s in summ[r].items()} for r in names}
    common.write_json(out / "meta.json", runs.run_info(args, settings=settings, metrics=metrics,
                                                         versions=runs.versions("numpy", "pandas", "matplotlib"),
                                                         **({"intervals": cis} if args.ci else {})))
    # last: a tracker sees only what was also written to disk
    tracking.report(args.report_to, out, "rak", metrics, {"settings": settings}, args.run_name)
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)


if __name__ == "__main__":
    common.run_main(main)
