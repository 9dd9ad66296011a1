"""Runs: what a stage writes next to its output (arguments, git commit, input fingerprints), the lock that keeps
one run per output, and the watchdogs that leave no process behind when a run dies. Manual: docs/runs.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from common import DataError, ROOT, read_json

# ----------------------------------------------------------------------------------------------------------------
# Run metadata: every stage writes its arguments and the git commit next to its output, and refuses to mix
# output made with other settings unless --overwrite.
def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        # "-dirty" marks output made by uncommitted code: the commit alone would claim a reproducibility it does not
        # have. Untracked files (runs/, a scratch script) do not change the code that ran, so they do not count.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    # No git (a pip-installed copy, a tarball): the metadata says null rather than failing the run.
    except (OSError, subprocess.SubprocessError):
        return None


def versions(*packages: str) -> dict:
    from importlib import metadata
    # Versions of the libraries that decide the numbers (vLLM's sampling, math-verify's parser, transformers'
    # templates): results that differ between two machines are first explained here.
    out = {"python": sys.version.split()[0]}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_info(args, **extra) -> dict:
    # All arguments (also those that do not change the output) and the exact command: enough to re-run it by hand. What
    # is compared on a re-run is only `settings`, which each stage passes in **extra.
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
        # A torn or hand-edited meta file is refused, not treated as "no settings": resuming on top of output whose
        # settings cannot be read is exactly the silent mix this check exists to prevent.
        old = json.loads(meta_path.read_bytes().decode("utf-8")).get("settings", {})
    except (ValueError, AttributeError, OSError):
        raise DataError(f"{meta_path}: unreadable metadata; pass --overwrite to start {what} afresh") from None
    # Round-trip through JSON so that the new settings compare as the saved ones read back (tuples become lists, paths
    # strings); otherwise an unchanged setting would look changed.
    new = json.loads(json.dumps(settings, default=str))
    changed, diff = [], []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k.endswith("_fingerprint"):
            # Fingerprint keys are compared by describe_change, which names the file or model that changed: "the data
            # file X changed" says what to do, a diff of two hash dicts does not.
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


def claim_output(meta_path, settings: dict, overwrite: bool, what: str, *, made: bool = True,
                 unowned: Optional[str] = None) -> Optional[dict]:
    """Claim an output for this run, before anything is touched: resume it, refuse it, or start afresh. Every stage
    calls it once, after its lock (lock_output) and before it writes; it changes nothing on disk.

    made: whether the earlier run left output besides its metadata (what that is, the stage knows). Metadata with
    nothing beside it was left by a run that failed before its first result: it protects nothing, so it must not
    block the corrected command (ignored: the caller starts afresh and rewrites it).
    unowned: the message to refuse with when there is output but no metadata (None: such output is not checked;
    stages that write their output atomically and their metadata last rebuild it).

    Returns the earlier run's metadata when it was made with the same `settings` (resume, or "already done"), None
    when the caller starts afresh (nothing there, a failed start, or --overwrite). Raises DataError when it was
    made with other settings or by an unknown run (check_settings' messages), unless --overwrite."""
    meta_path = Path(meta_path)
    # The order matters: no metadata at all is checked first (output of unknown origin), then a failed start (metadata
    # with nothing beside it), and only then the settings, so that a corrected command after a failed start is never
    # refused for the settings it just corrected.
    if not meta_path.exists():
        if made and unowned and not overwrite:
            raise DataError(unowned)
        return None
    if not made:  # a failed start
        return None
    if not check_settings(meta_path, settings, overwrite, what):
        return None
    return read_json(meta_path, "metadata")


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints of a stage's inputs, kept in its `settings`: check_settings then refuses to resume (or to call
# "done") output made from a data file or a model that has changed at the same path, and says which one.
# Fingerprints are cheap by design: they run on every start, also the instant "already done" re-runs of a recipe, so
# hashing a multi-GB trace file whole each time would make a no-op re-run take seconds.
FULL_HASH_BYTES = 256 << 20  # files up to this size are hashed whole (~0.3 s); larger ones: head + tail + mtime
PART_HASH_BYTES = 16 << 20   # bytes hashed at each end of a larger file
# The files that change what a model generates besides its weights: the config, the generation defaults (top-p, EOS) and
# the chat template. Weight files are recognized by suffix so that sharded checkpoints (model-00001-of-00004...) are all
# covered.
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
            # Never seek back before `part`: in a file shorter than 2 x part the tail starts after the head, so no
            # byte is hashed twice.
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


def model_fingerprint(model: Optional[str]) -> Optional[dict]:
    """A cheap fingerprint of a local model directory: the sha256 of its small files (config, generation config,
    tokenizer, chat template, weight index) and the name, size and mtime_ns of each weight file (never their
    bytes: GBs). A model re-trained or re-written at the same path changes it. None for a hub name."""
    # A hub name is not fingerprinted: that would mean downloading it, and it is not what train.py re-writes in place
    # (a local directory is).
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
            # Weights by size and mtime only: hashing 15 GB of safetensors on every start costs a minute, and a
            # re-trained model is always re-written (new mtime).
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


# ----------------------------------------------------------------------------------------------------------------
# One run per output, and nothing left running when a run dies (docs/runs.md).
_LOCKS: dict[str, Any] = {}  # lock file -> its open file (held until exit)
_REAPER: list = []  # the watchdog process of reap_children_on_death, once started


def lock_output(output, what: str = "") -> Path:
    """Take the exclusive lock of an output (a file, or a directory) for the life of this process: the lock file
    PARENT/.NAME.lock, held with fcntl.flock. A second process that wants the same output fails at once with a
    DataError naming the holder's pid. The OS releases the lock when the holder dies (also by kill -9), so it is
    never stale; the lock file itself stays (empty of meaning). Idempotent within a process. Returns the lock
    file's path."""
    # flock, not a lock file that exists or not: the kernel releases a flock when its holder dies in any way (kill -9,
    # OOM, a node reboot), so a lock can never be left stale and no one ever has to delete it by hand.
    import fcntl
    out = Path(output).absolute()
    # Beside the output, hidden: the same path for every process on the machine that names this output, whatever its
    # working directory (out is absolute), and it does not show up as an output itself.
    lock = out.with_name(f".{out.name}.lock")
    if str(lock) in _LOCKS:
        return lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    # "a+", not "w": opening must not truncate the holder's pid before we know we hold the lock (the refused process
    # reads it to name the holder).
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
    # The start time (field 22 of /proc/PID/stat) makes (pid, start) a unique name for a process: pids are reused, and
    # the reaper must never kill an unrelated process that got a dead child's pid.
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
    # Polling the parent pid is the one signal that also works after SIGKILL: a dying process runs no code, but its
    # children are re-parented (to init or a subreaper) at once.
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
    # A separate process, not a thread: a thread dies with the process it should outlive. "-S" and importing only runs
    # (stdlib + common) keep it small and quick to start; it must not import torch or vllm.
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import runs; runs._reaper({os.getpid()})"
    _REAPER.append(subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, close_fds=True))


# The launchers' own command names, matched against the parents' command lines: a rank has no other way to know it was
# started by a launcher (the environment variables are also set by hand in tests and by `python train.py`).
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

    # A thread suffices here (unlike the reaper): the rank itself is alive and only has to notice. A kill -9 of
    # `deepspeed` runs no cleanup, so without this the ranks would train on and write checkpoints (docs/runs.md).
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
