"""Question sources: the benchmark and training-question registry, local files and Hugging Face datasets.

Every loader returns records {"id": str, "question": str, "gold": str|None, "answer_type": "math"|"mc", ...}.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import zlib
from pathlib import Path
from typing import Callable, Optional

from common import DATA_DIR, DataError, _open, iter_jsonl, require
from grading import MC_INSTRUCTION, last_boxed
from models import check_hub
from runs import file_fingerprint


def answer_str(x) -> str:
    """27.0 -> '27' (AMC's float answers), other values as strings."""
    # Gold answers stored as JSON numbers (AMC23's 27.0) must read as the text a model writes ("27").
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x).strip()


def _gsm8k_gold(rec) -> str:
    # GSM8K's solutions end in "#### 1,234": the number after the last "####", thousands separators dropped, so the
    # gold is one plain number whichever way a model writes it.
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
    label: str = ""                 # the name in tables and figures (rak.py; as the papers print it); "": the key


REGISTRY: dict[str, Source] = {  # benchmarks in the order of the papers' table columns (rak.py), then pools
    "gsm8k": Source("benchmarks/gsm8k/test.jsonl", "question", _gsm8k_gold, label="GSM8K"),
    "math500": Source("benchmarks/math500/test.jsonl", "problem", lambda r: answer_str(r["answer"]),
                      id_field="unique_id", level="level", label="MATH500"),
    "aime24": Source("benchmarks/aime24/test.jsonl", "problem", lambda r: answer_str(r["answer"]), id_field="id",
                     label="AIME24"),
    "aime25": Source("benchmarks/aime25/test.jsonl", "problem", lambda r: answer_str(r["answer"]), id_field="id",
                     label="AIME25"),
    "amc23": Source("benchmarks/amc23/test.jsonl", "problem", lambda r: answer_str(r["answer"]), id_field="id",
                    label="AMC23"),
    # Minerva: the gold is the last \boxed{} of the reference solution (Qwen2.5-Math's harness) ...
    "minerva": Source("benchmarks/minerva_math/test.jsonl", "problem", lambda r: last_boxed(r["solution"]),
                      label="Minerva"),
    # ... or LIMO's short extracted answers for the same 272 questions in the same order.
    "minerva_short": Source("benchmarks/minerva_math/limo_minerva_qa.jsonl", "question",
                            lambda r: answer_str(r["answer"]), label="Minerva"),
    # GPQA diamond is never committed: --data PATH, $GPQA_PATH, or the gated hub dataset Idavidrein/gpqa.
    "gpqa": Source("", "question", lambda r: r["gold"], id_field="id", answer_type="mc", label="GPQA"),
    # UPFT's GPQA: the same 198 questions without options; gold = the correct answer's text (LLM judge: --judge)
    "gpqa_open": Source("", "question", lambda r: r["gold"], id_field="id", label="GPQA (open)"),
    "mmlu_pro": Source("benchmarks/mmlu_pro_test.jsonl.gz", "question", lambda r: r["answer"], id_field="question_id",
                       answer_type="mc", format_question=lambda r: _mc_question(r["question"], r["options"]),
                       label="MMLU-Pro"),
    # Training question pools
    "prm12k": Source("train/prm12k_questions.jsonl.gz", "problem", lambda r: answer_str(r["answer"]), kind="pool"),
    "math_train": Source("train/math_train_7500.jsonl.gz", "problem", lambda r: answer_str(r["answer"]), kind="pool"),
    "gsm8k_train": Source("train/gsm8k_train.jsonl.gz", "question", _gsm8k_gold, kind="pool"),
}
BENCHMARKS = [k for k, v in REGISTRY.items() if v.kind == "benchmark"]
GPQA_SEED = 0  # choices are shuffled per question with this seed: the same letters in every run


def label(name: str) -> str:
    """A benchmark's name in tables and figures: its registry label, else the name itself (a file of another name)."""
    src = REGISTRY.get(name)
    return src.label if src is not None and src.label else name


# An id from the question's text, for data without ids: stable across runs and machines (unlike a line number after a
# filter or a shuffle), so resume and the joins between stages still work.
def stable_id(question: str) -> str:
    return hashlib.sha1(question.encode("utf-8")).hexdigest()[:16]


def _gpqa_records(path: Optional[str], open_ended: bool = False) -> list[dict]:
    """GPQA diamond with its four choices shuffled by a fixed seed into A-D; open_ended (UPFT's GPQA): the question
    alone, gold = the correct answer's text. open_ended also reads UPFT's own file (data/math_test/gpqa/test.jsonl:
    `question`, `solution`, `answer`, no options), whose question text is kept as it is (UPFT's prompt)."""
    # GPQA's authors ask that it never appear in plain text where crawlers read it: it is never committed, only read
    # from a local file the user points at, or from the gated hub dataset.
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
        if "correct_answer" not in r and "answer" in r:  # UPFT's open-ended file: no options
            if not open_ended:
                raise DataError(f"{where}: a GPQA record with 'answer' and no answer options (UPFT's open-ended "
                                f"file): it can only be read as gpqa_open")
            gold = str(require(r, "answer", where, (str, int, float))).strip()
            out.append({"id": str(r.get("id") or stable_id(q)), "question": q, "gold": gold, "answer_type": "math"})
            continue
        correct = str(require(r, "correct_answer", where, (str, int, float))).strip()
        wrong = [str(x).strip() for x in require(r, "incorrect_answers", where, (list,))]
        rid = str(r.get("id") or stable_id(q))
        if open_ended:
            out.append({"id": rid, "question": q.strip(), "gold": correct, "answer_type": "math"})
            continue
        options = [correct] + wrong
        # The correct answer is first in the source data: without a shuffle every gold letter would be A. Seeded per
        # question id, so the letters are the same in every run and do not depend on which other questions were loaded.
        random.Random(f"{GPQA_SEED}-{rid}").shuffle(options)
        out.append({"id": rid, "question": _mc_question(q.strip(), options), "gold": "ABCD"[options.index(correct)],
                    "answer_type": "mc"})
    return out


def _read_table(path) -> list[dict]:
    import pandas as pd
    p = str(path)
    try:
        if p.endswith(".parquet"):
            # pandas only for the formats JSONL is not (parquet, csv, a JSON list): imported here, so that the stages
            # that read JSONL do not pay for it.
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
    except (EOFError, zlib.error) as e:
        raise DataError(f"{p}: corrupt or truncated gzip file ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except (ValueError, OSError) as e:
        raise DataError(f"{p}: cannot read ({e})") from None
    return df.to_dict("records")


def _load_hf(name: str, split: str, config: Optional[str] = None) -> list[dict]:
    check_hub(name, "dataset")
    try:
        import datasets
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, gated, misspelled: one line, not a traceback
        cfg = f" config '{config}'" if config else ""
        raise DataError(f"could not load Hugging Face dataset '{name}'{cfg} split '{split}': "
                        f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    return list(ds)


def read_records(source: str, split: str = "train", config: Optional[str] = None) -> list[tuple[str, dict]]:
    """(where, record) pairs from a local .jsonl/.jsonl.gz/.json/.parquet/.csv file or a Hugging Face dataset
    (`split`, and `config`: its configuration name, `--dataset_config`)."""
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
    # Only ORG/NAME is taken for a hub dataset: a mistyped local path (runs/x.jsonl) must say "no such file", not start
    # a download of a dataset called runs/x.jsonl.
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.endswith((".jsonl", ".json", ".parquet", ".gz")):
        recs = [(f"{source}[{i}]", r) for i, r in enumerate(_load_hf(source, split, config))]
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


# Chat records: `messages` [{"role", "content"}] (OpenAI / TRL / open-r1) or ShareGPT `conversations`
# [{"from", "value"}] (LLaMA-Factory). Question = the user turn, response = the assistant turn after it.
CHAT_FIELDS = ("messages", "conversations")
_CHAT_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant",
               "system": "system"}


def chat_field(rec: dict) -> Optional[str]:
    """The chat field of a record (messages or conversations), or None."""
    return next((f for f in CHAT_FIELDS if f in rec), None)


def chat_turns(rec: dict, fld: str, where: str) -> list[tuple[str, str]]:
    """[(role, text)] of a chat record, roles normalized to user/assistant; system turns are left out (the system
    prompt is a flag of each stage, as for every other input). Anything else is a one-line error naming the
    field and the turn."""
    turns = rec[fld]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{fld}' must be a non-empty list of turns")
    out = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict):
            raise DataError(f"{where}: field '{fld}[{k}]' must be an object, got {type(t).__name__}")
        role = t.get("role", t.get("from"))
        text = t.get("content", t.get("value"))
        if isinstance(text, list):  # [{"type": "text", "text": ...}] parts (multimodal schema): text only
            if not all(isinstance(x, dict) and x.get("type") == "text" and isinstance(x.get("text"), str)
                       for x in text):
                raise DataError(f"{where}: field '{fld}[{k}]' has non-text content parts")
            text = "".join(x["text"] for x in text)
        if role not in _CHAT_ROLES:
            raise DataError(f"{where}: field '{fld}[{k}]' has role {role!r} (expected user/human, assistant/gpt "
                            f"or system)")
        if not isinstance(text, str):
            raise DataError(f"{where}: field '{fld}[{k}]' content must be str, got {type(text).__name__}")
        if _CHAT_ROLES[role] != "system":
            out.append((_CHAT_ROLES[role], text))
    return out


def chat_exchanges(rec: dict, fld: str, where: str) -> list[tuple[str, list[str]]]:
    """[(user turn, [the assistant turns after it])], in order. A user turn with no assistant turn after it, or
    an assistant turn before any user turn, is an error naming the field."""
    out: list[tuple[str, list[str]]] = []
    for role, text in chat_turns(rec, fld, where):
        if role == "user":
            if out and not out[-1][1]:
                raise DataError(f"{where}: field '{fld}': user turn {len(out)} has no assistant turn after it")
            out.append((text, []))
        elif not out:
            raise DataError(f"{where}: field '{fld}': an assistant turn comes before any user turn")
        else:
            out[-1][1].append(text)
    if not out:
        raise DataError(f"{where}: field '{fld}' has no user turn")
    if not out[-1][1]:
        raise DataError(f"{where}: field '{fld}': user turn {len(out)} has no assistant turn after it")
    return out


def chat_question(rec: dict, fld: str, where: str) -> str:
    """The question of a chat record: its one user turn (the assistant turns are answers, not questions); several
    user turns are refused, never guessed."""
    users = [text for role, text in chat_turns(rec, fld, where) if role == "user"]
    if len(users) != 1:
        raise DataError(f"{where}: field '{fld}' has {len(users)} user turns; a question is one user turn "
                        f"(prepare.py --chat_turns all splits multi-turn chats)")
    return users[0]


def load_questions(source: str, *, question_field: Optional[str] = None, answer_field: Optional[str] = None,
                   id_field: Optional[str] = None, split: str = "train", limit: Optional[int] = None,
                   data_path: Optional[str] = None, config: Optional[str] = None) -> list[dict]:
    """Questions from a registry name (benchmark or pool), a local file or a Hugging Face dataset (`config`: its
    configuration). A record without a question field but in chat form (messages / conversations) gives its user
    turn.

    `data_path` points a registry name at another file with the same schema (for gpqa: the GPQA file).
    Ids are unique strings; duplicates are an error naming both places.
    """
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}")
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
                # Files without an id field (GSM8K, Minerva) use the line's index: these files are fixed (committed), so
                # the index is as stable as an id.
                rid = str(rec[src.id_field]) if src.id_field and src.id_field in rec else str(len(out))
                item = {"id": rid, "question": q, "gold": None if gold is None else str(gold),
                        "answer_type": src.answer_type}
                if src.level and src.level in rec:
                    lv = rec[src.level]
                    # MATH500's level is "Level 3" in some copies and 3 in others: the digits alone, so per-level
                    # metrics group the same.
                    item["level"] = int(re.sub(r"\D", "", str(lv)) or 0)
                out.append(item)
                wheres.append(where)
    else:
        wheres = []
        for where, rec in read_records(source, split, config):
            qf = _pick(rec, question_field, QUESTION_FIELDS)
            cf = chat_field(rec) if qf is None else None
            if qf is None and cf is None:
                raise DataError(f"{where}: no question field (tried {', '.join(QUESTION_FIELDS + CHAT_FIELDS)}; "
                                f"set --question_field)")
            q = chat_question(rec, cf, where) if cf else require(rec, qf, where)
            if not q.strip():
                raise DataError(f"{where}: field '{qf or cf}' is empty")
            af = _pick(rec, answer_field, ANSWER_FIELDS)
            gold = rec.get(af) if af else None
            idf = _pick(rec, id_field, ("id",))
            if id_field and id_field not in rec:
                raise DataError(f"{where}: missing field '{id_field}'")
            rid = str(rec[idf]) if idf and rec.get(idf) is not None else stable_id(q)
            out.append({"id": rid, "question": q, "gold": None if gold is None else answer_str(gold),
                        "answer_type": "math"})
            wheres.append(where)
    # Duplicate ids are an error, not deduplicated: every later stage joins on the id (resume, rak's per-question
    # agreement), and two questions under one id would silently merge.
    for item, where in zip(out, wheres):
        if item["id"] in where_of:
            raise DataError(f"{where}: duplicate id '{item['id']}' (first at {where_of[item['id']]})")
        where_of[item["id"]] = where
    if not out:
        raise DataError(f"{source}: no records")
    # --limit takes the first K questions in file order (not a sample): the same K for every model compared.
    return out[:limit] if limit else out


CUSTOM_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a file stem in evaluate.py's output: no dots, no slashes


def load_custom_benchmark(name: str, path: str, limit: Optional[int] = None) -> list[dict]:
    """A benchmark outside the registry (evaluate.py --benchmarks NAME=FILE.jsonl): one record per line with `id`,
    `question`, `answer`, and optionally `answer_type` ("math", the default, graded by math-verify; or "mc" with
    `options`, a list of 2-16 choice texts shown under the question as `A. text` like MMLU-Pro/GPQA, `answer` =
    the letter or the correct option's text) and `level` (an int, for by-level metrics). Ids are unique."""
    if not CUSTOM_NAME.fullmatch(name) or name in REGISTRY:
        raise DataError(f"--benchmarks {name}={path}: the name must be letters, digits, _ or - and not a registry "
                        f"benchmark ({', '.join(BENCHMARKS)}; point one of those at another file with --data)")
    if not Path(path).is_file():
        raise DataError(f"--benchmarks {name}={path}: file not found")
    out, where_of = [], {}
    for where, rec in read_records(path):
        rid = str(require(rec, "id", where, (str, int)))
        if rid in where_of:
            raise DataError(f"{where}: duplicate id '{rid}' (first at {where_of[rid]})")
        where_of[rid] = where
        q = require(rec, "question", where)
        if not q.strip():
            raise DataError(f"{where}: field 'question' is empty")
        answer = require(rec, "answer", where, (str, int, float))
        atype = rec.get("answer_type") or "math"
        if atype not in ("math", "mc"):
            raise DataError(f"{where}: field 'answer_type' must be 'math' or 'mc', got {atype!r}")
        item = {"id": rid, "question": q, "gold": answer_str(answer), "answer_type": atype}
        if atype == "mc":
            options = require(rec, "options", where, (list,))
            if not 2 <= len(options) <= 16 or not all(isinstance(o, (str, int, float)) for o in options):
                raise DataError(f"{where}: field 'options' must be a list of 2 to 16 choice texts")
            letters = "ABCDEFGHIJKLMNOP"[:len(options)]
            gold = answer_str(answer)
            texts = [answer_str(o) for o in options]
            if gold.upper() in letters and len(gold) == 1:
                gold = gold.upper()
            elif gold in texts:
                gold = letters[texts.index(gold)]
            else:
                raise DataError(f"{where}: field 'answer' {gold!r} is neither a letter {letters[0]}-{letters[-1]} nor "
                                f"one of the options")
            item.update(question=_mc_question(q, options), gold=gold)
        elif "options" in rec:
            raise DataError(f"{where}: field 'options' needs \"answer_type\": \"mc\"")
        if rec.get("level") is not None:
            item["level"] = int(require(rec, "level", where, (int,)))
        out.append(item)
    return out[:limit] if limit else out


def eval_output_files(directory) -> dict[str, Path]:
    """The per-benchmark files of an evaluate.py output directory, {benchmark: DIR/<benchmark>.jsonl}, registry
    benchmarks first in registry order. The one reader of that layout (evaluate.py --grade_only, rak.py).
    Benchmark names have no dots: hidden, temporary or partial files (.x.jsonl, x.partial.jsonl) are not results."""
    files = {f.name[:-len(".jsonl")]: f for f in sorted(Path(directory).glob("*.jsonl"))
             if "." not in f.name[:-len(".jsonl")]}
    order = {b: i for i, b in enumerate(BENCHMARKS)}
    return dict(sorted(files.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def data_fingerprint(source: Optional[str], data_path: Optional[str] = None) -> Optional[dict]:
    """The fingerprint of the local file a question source reads (registry name, or a path; `data_path` points a
    registry name at another file); None for a Hugging Face dataset or GPQA from the hub."""
    if not source:
        return None
    if data_path:
        path = Path(data_path)
    elif source in REGISTRY:
        f = REGISTRY[source].file or os.environ.get("GPQA_PATH" if source == "gpqa" else "", "")
        path = (DATA_DIR / f) if f else None
    else:
        path = Path(source)
    return file_fingerprint(path) if path is not None and path.is_file() else None
