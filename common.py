"""The command line, JSONL I/O and hub upload: what every stage does with its arguments, inputs and outputs.

Stdlib imports only at the top: grader workers and the reaper import it.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional


# Paths are resolved from this file, not the working directory: the stages are run from anywhere (recipes, tests, cron),
# and data/ and the tiny model must still be found.
ROOT = Path(__file__).resolve().parent
DATA_DIR = ROOT / "data"


# The one exception a user is meant to see. Everything a user can get wrong (a flag, a file, a field) raises it with the
# place to fix ("file:line: field 'x' ..."); run_main turns it into one line, so a recipe's log shows the cause instead
# of a 60-line traceback from inside a library.
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
    # Ctrl-C is not an error: every stage keeps its finished work on disk (appended and fsynced), so say how to resume.
    # Exit 130 is the shell's convention for SIGINT, so a recipe under `set -e` stops too.
    except KeyboardInterrupt:
        print("interrupted: finished work is on disk; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # permission denied, read-only file system, disk full, a file where a folder should be
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    # a file read as text outside iter_jsonl/read_text, which name the file and line themselves
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
    prints the usage and 'unrecognized arguments', exit 2. `--config FILE.yaml [FILE2.yaml ...]`: flag values from
    YAML files (read_config); later files win, flags on the command line win over every file. `--push_to_hub`
    as a yes/no with `--hub_model_id REPO` (TRL) becomes `push_to_hub = REPO` (hub_repo)."""
    # here, not at the top: grader workers and the process reaper import this module and must not load transformers
    from transformers import HfArgumentParser

    parser = HfArgumentParser(args_class, description=doc, formatter_class=HelpFormatter)
    parser.add_argument("--config", nargs="+", action="extend", metavar="FILE.yaml", help=CONFIG_HELP)
    group = parser._optionals._group_actions  # --config listed first, after --help
    group.insert(1, group.pop())
    for action in parser._actions:  # --no_x repeats --x's help otherwise
        if isinstance(action, argparse._StoreFalseAction):
            action.help = f"the same as --{action.dest} false"
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)  # --config first: its values become the parser's defaults
    pre.add_argument("--config", nargs="+", action="extend", default=[])
    for path in pre.parse_known_args(argv)[0].config:
        for action, value in read_config(parser, path).items():
            # a file's value becomes the flag's default: it satisfies a required flag, and the command line still wins
            action.default, action.required = value, False
    # look_for_args_file off: HfArgumentParser would otherwise also read a SCRIPT.args file lying beside the stage
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                       look_for_args_file=False)
    if rest:  # an unknown flag is refused the argparse way: usage, 'unrecognized arguments', exit 2
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args = parsed[0]
    # TRL's spelling (--push_to_hub yes --hub_model_id REPO) becomes ours (--push_to_hub REPO) before any stage sees it
    if hasattr(args, "hub_model_id"):
        args.push_to_hub = hub_repo(args.push_to_hub, args.hub_model_id)
    return args


CONFIG_HELP = ("YAML file(s) of flag values, `name: value` per line (names as on the command line without '--', "
               "aliases too; lists as YAML lists; relative paths from the current folder); later files win, flags "
               "given on the command line win over all files. configs/<paper>/<stage>.yaml hold the papers' "
               "settings")


def paper_setting(args_class, stage: str, name: str) -> dict:
    """configs/<name>/<stage>.yaml as {field: value}, read and checked as --config reads it: what train.py
    --preset NAME and evaluate.py --protocol NAME fill in. One file per paper setting, so each value is written
    once (recipes pass the same file as --config)."""
    from transformers import HfArgumentParser
    parser = HfArgumentParser(args_class)
    return {action.dest: value for action, value in read_config(parser, ROOT / "configs" / name / f"{stage}.yaml")
            .items()}


def read_config(parser, path) -> dict:
    """--config FILE.yaml -> {argparse action: value}, every value checked as the flag would be (type, choices). An
    unknown key, a key given twice (by two of its names) or a bad value is a DataError naming the file and the
    key."""
    import yaml
    text = read_text(path, "file", prefix="--config ")
    try:
        # safe_load: a config file is data, never code (no Python object tags)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        # YAML counts lines from 0, editors from 1
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise DataError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    # an empty file, or comments only: it sets nothing
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected `flag: value` lines (a YAML mapping), got {type(data).__name__}")
    out, seen = {}, {}
    for key, value in data.items():
        action = parser._option_string_actions.get(f"--{key}")
        # --config inside a config file would have to be read recursively; --help is not a value
        if action is None or action.dest in ("help", "config"):
            raise DataError(f"{path}: key '{key}': not a flag of {parser.prog} (see --help)")
        # a flag given twice under two of its names (an alias and its field): which wins would depend on the key order
        if action.dest in seen:
            raise DataError(f"{path}: key '{key}': the same flag as '{seen[action.dest]}'")
        seen[action.dest] = key
        if isinstance(action, argparse._StoreFalseAction):  # `no_packing: true` = `packing: false`
            if not isinstance(value, bool):
                raise DataError(f"{path}: key '{key}': expected true or false, got {value!r}")
            action, value = next(a for a in parser._actions if a.dest == action.dest and a is not action), not value
        out[action] = config_value(action, value, f"{path}: key '{key}'")
    return out


def config_value(action, value, where: str):
    """One YAML value converted and checked as argparse would convert and check it on the command line."""
    if value is None:
        # null only where the flag's own default is None: argparse never gives None to the others, and stages rely on it
        if action.default is not None:
            raise DataError(f"{where}: null is not allowed (default: {action.default!r})")
        return None
    many = action.nargs in ("+", "*")
    if isinstance(value, (list, dict)) and not (many and isinstance(value, list)):
        raise DataError(f"{where}: expected one value, got a YAML {type(value).__name__}")
    items = value if isinstance(value, list) else [value]
    conv = []
    for x in items:
        if isinstance(x, (list, dict)):
            raise DataError(f"{where}: expected plain values, got a nested YAML {type(x).__name__}")
        try:  # YAML's own types (1e-5 may arrive as a string) go through the flag's converter as text
            v = x if action.type is None else action.type(x if isinstance(x, bool) else str(x))
        except Exception as e:  # argparse.ArgumentTypeError, ValueError
            name = getattr(action.type, "__name__", "value")
            raise DataError(f"{where}: {x!r} is not a valid {name} ({e})") from None
        if action.choices is not None and v not in action.choices:
            raise DataError(f"{where}: {x!r} is not one of {', '.join(map(repr, action.choices))}")
        conv.append(v)
    return conv if many else conv[0]


def hub_repo(push_to_hub: Optional[str], hub_model_id: Optional[str]) -> Optional[str]:
    """--push_to_hub REPO, or TRL's --push_to_hub [yes|no] --hub_model_id REPO -> the repository, or None (no
    push)."""
    value = (push_to_hub or "").strip()
    if value.lower() in ("", "no", "false", "0", "n"):
        return None
    if value.lower() in ("yes", "true", "1", "y"):
        if not hub_model_id:
            raise DataError("--push_to_hub: give the repository as --hub_model_id USER/NAME (or --push_to_hub "
                            "USER/NAME)")
        return hub_model_id
    if hub_model_id and hub_model_id != value:
        raise DataError(f"--push_to_hub {value} and --hub_model_id {hub_model_id}: two repositories; give one")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help: the docstring verbatim; '(default: X)' added only where the help text does not already say what the
    default is, and never for None (nothing set) or a --no_ flag."""

    def _get_help_string(self, action):
        text = action.help or ""
        # a help text that already says its default would print it twice
        if re.search(r"\bdefault\s*:|\(default\b", text, re.I) or action.default is None \
                or isinstance(action, argparse._StoreFalseAction):
            return text
        return super()._get_help_string(action)


# ----------------------------------------------------------------------------------------------------------------
# JSONL I/O
# Benchmarks and pools are committed gzipped (data/); reading .gz transparently keeps every reader the same.
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
        # Bytes, decoded per line: a bad byte then names its line and column instead of failing the whole read (text
        # mode would raise from inside readline with no line number).
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
            # Blank lines are tolerated (hand-edited files, a trailing newline); they still count in line numbers, so an
            # error's line is the one an editor shows.
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


# Every finished output is written this way: a reader (the next stage, a resumed run) sees the old file or the new one,
# never half of one. The temporary name carries the pid so that two writers (which the locks prevent anyway) could not
# share one; fsync before the rename, or a power loss can leave the renamed file empty.
def atomic_write(path, write: Callable, binary: bool = False) -> None:
    """write(f) into a temporary file beside path, then rename it into place; binary=True: f is a binary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # hidden and with a dot in its stem: no reader's glob (sources.eval_output_files) takes it for a result
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with (open(tmp, "wb") if binary else _open(tmp, "wt")) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dumps(rec) -> str:
    # ensure_ascii=False: questions and traces in Chinese stay readable in the JSONL, and a third of the size of
    # their \uXXXX escapes.
    return json.dumps(rec, ensure_ascii=False)


def write_jsonl(path, records: Iterable[dict]) -> None:
    """Write all records atomically (temporary file, then rename)."""
    atomic_write(path, lambda f: f.writelines(dumps(r) + "\n" for r in records))


def write_json(path, obj) -> None:
    # default=str: a Path or another non-JSON value in args or metadata becomes text instead of failing the final write
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"))


# The resumable outputs (sample.py, evaluate.py's partial files, train_log.jsonl) grow by appends, one fsynced batch at
# a time: a kill loses at most the batch being written, and load_finished cuts its torn line.
def append_jsonl(path, records: Iterable[dict]) -> None:
    """Append records and fsync: a kill after this returns loses none of them."""
    with open(path, "a", encoding="utf-8") as f:
        # one write per batch: a kill tears at most the last line, which load_finished cuts off
        f.write("".join(dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def load_finished(path) -> dict[str, dict]:
    """Records already in a resumable output, keyed by id. A torn last line (a kill mid-write) is cut off."""
    path = Path(path)
    if not path.exists():
        return {}
    # Only a line with its newline is complete: append_jsonl writes the newline last, so anything after the final
    # newline is a write interrupted by a kill and is cut off before the file is parsed (and appended to again).
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


def read_text(path, what: str = "file", prefix: str = "") -> str:
    """A whole text file, or a DataError naming it (`prefix`, e.g. the flag, goes first): missing, unreadable, not
    UTF-8."""
    try:
        # bytes, then UTF-8: the same result on every machine, whatever the locale's encoding
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{prefix}{path}: {what} not found") from None
    except OSError as e:
        raise DataError(f"{prefix}{path}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{prefix}{path}: {what} is not UTF-8 text") from None


def read_json(path, what: str = "file") -> Any:
    """A JSON file (metadata, metrics, a config) or DataError naming it: missing, unreadable, not UTF-8, not JSON."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
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
    # the folder is created later: probe the nearest existing one, where that mkdir will write
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        # A real write, not os.access: access() ignores read-only mounts, quotas and ACLs on network file systems, and a
        # stage must not find out after hours of generation that it cannot write its result.
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
    # Numbers right-aligned (`---:`) as in the papers' tables, so columns of accuracies line up when rendered.
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])

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
    # Checked before the work starts, not after: a push that fails at the end of a training run would leave the user
    # guessing whether the model was saved (it is; only the upload failed).
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
        # an offline cluster node would otherwise hang on the connection: 10 s, then a clear error
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
        # a list of files is copied into one folder: one upload_folder call sends them side by side with the card
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
