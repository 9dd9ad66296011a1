"""Scaling out generation (backends.py): generated tokens/s of the Ray backend at R = 1, 2, 4, 8 replicas, its
efficiency E(R) = tps(R) / (R x tps(1)), and the Ray backend at one replica against the local backend (one engine
in this process), the same blocks of the same questions through the same Replica code.

    VLLM_CPU_KV_GB=1 python bench/scaleout.py --tiny --repeats 3   # CPU: Ray at 1 replica vs local (goal >= 0.9)
    python bench/scaleout.py --model Qwen/Qwen2.5-Math-7B-Instruct --replicas 1,2,4,8   # 8-GPU node (E(8) >= 0.9)
    python bench/scaleout.py --model M --replicas 8,16 --ray_address auto     # a cluster (recipes/slurm/ray.sbatch)

Start-up (cluster, actors, engines) is timed on its own line and left out of tokens/s: a run's steady state starts
when every replica has returned its first block (the R-th block to arrive), and tokens/s counts the blocks that
arrive after it, up to the last. Each run has its own cluster (private on 127.0.0.1 unless --ray_address) and fresh
engines with the same seed. Prints one line per run, a Markdown table of medians over --repeats interleaved runs,
and `ray / local tokens-per-second ratio: X`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import backends
import common
import models
import sources


@dataclass
class Args:
    model: str = field(default=str(models.TINY_MODEL), metadata={"help": "model path or hub name"})
    data: str = field(default="math500", metadata={"help": "question source (registry name or file)"})
    limit: int = field(default=2048, metadata={"help": "questions (--tiny: 64)"})
    n: int = field(default=1, metadata={"help": "samples per question (--tiny: 2)"})
    max_tokens: int = field(default=1024, metadata={"help": "generated tokens per sample (ignore_eos: exactly this "
                                                            "many; --tiny: 64)"})
    block_size: int = field(default=64, metadata={"help": "questions per block (--tiny: 8)"})
    replicas: str = field(default="1,2,4,8", metadata={"help": "replica counts to run on Ray, comma-separated "
                                                               "(--tiny: 1)"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per replica"})
    ray_address: Optional[str] = field(default=None, metadata={"help": "a running cluster (None: a private one per "
                                                                       "run)"})
    no_local: bool = field(default=False, metadata={"help": "skip the local-backend run (no ratio line)"})
    tiny: bool = field(default=False, metadata={"help": "CPU sizes: the tiny model, 64 questions x 2 x 64 tokens, "
                                                        "blocks of 8, R = 1"})
    repeats: int = field(default=1, metadata={"help": "run every configuration this many times, interleaved "
                                                      "(local, ray, local, ray, ...), and report medians: on a shared "
                                                      "or small machine one run's tokens/s varies by a fifth"})
    out: Optional[str] = field(default=None, metadata={"help": "also write the results as JSON here"})


def measure(a: Args, backend: str, replicas: int = 1) -> dict:
    """One run: every block's arrival time and tokens; start-up = until every replica has returned a block."""
    qs = sources.load_questions(a.data, limit=a.limit)
    params = {"n": a.n, "temperature": 0.6, "top_p": 1.0, "max_tokens": a.max_tokens, "ignore_eos": True}
    items = [backends.item(q["question"], params, q["id"]) for q in qs]
    spec = backends.EngineSpec(model=a.model, seed=0, tensor_parallel_size=a.tensor_parallel_size,
                               max_model_len=a.max_tokens + 1024)
    t0 = time.perf_counter()
    arrivals = []  # (seconds since start, tokens of the block)
    for block in backends.run(spec, items, backend=backend, block_size=a.block_size, ray_address=a.ray_address,
                              replicas=str(replicas) if backend == "ray" else None):
        arrivals.append((time.perf_counter() - t0, sum(c["num_token_ids"] for _, comps in block for c in comps)))
    k = min(replicas, len(arrivals) - 1)  # the block after which every replica is up
    start, steady = arrivals[k - 1][0], arrivals[k:]
    tokens = sum(t for _, t in steady)
    secs = arrivals[-1][0] - start
    return {"backend": backend, "replicas": replicas, "blocks": len(arrivals), "startup_s": start,
            "steady_blocks": len(steady), "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
            "total_s": arrivals[-1][0]}


def main() -> None:
    a = common.parse_args(Args, __doc__)
    if a.tiny:
        a.limit, a.n, a.max_tokens, a.block_size, a.replicas = 64, 2, 64, 8, "1"
    counts = [int(x) for x in a.replicas.split(",")]
    if a.limit // a.block_size < max(counts) + 2:
        raise common.DataError(f"--limit {a.limit} / --block_size {a.block_size}: too few blocks for "
                               f"{max(counts)} replicas (need a few blocks per replica after start-up)")
    import platform
    print(f"model {a.model}, {a.limit} {a.data} questions x n={a.n} x {a.max_tokens} tokens (ignore_eos), blocks of "
          f"{a.block_size}, TP {a.tensor_parallel_size}; {platform.processor() or platform.machine()}", flush=True)
    runs = []
    for k in range(a.repeats):  # interleaved: a slow spell of the machine hits every configuration alike
        if not a.no_local:
            runs.append({**measure(a, "local"), "repeat": k})
        for r in counts:
            runs.append({**measure(a, "ray", r), "repeat": k})
    for r in runs:
        print(f"{r['backend']} R={r['replicas']} (run {r['repeat'] + 1}): start-up {r['startup_s']:.1f} s (until "
              f"every replica returned a block); {r['tokens']} tokens in {r['seconds']:.1f} s after start-up "
              f"({r['steady_blocks']} of {r['blocks']} blocks) -> {r['tokens_per_s']:.1f} tokens/s", flush=True)
    # one row per configuration: medians over the repeats
    configs = list(dict.fromkeys((r["backend"], r["replicas"]) for r in runs))
    med = {c: {key: float(np.median([r[key] for r in runs if (r["backend"], r["replicas"]) == c]))
               for key in ("startup_s", "tokens_per_s")} for c in configs}
    ray1 = med.get(("ray", 1))
    rows = []
    for c in configs:
        e = med[c]["tokens_per_s"] / (c[1] * ray1["tokens_per_s"]) if ray1 and c[0] == "ray" else None
        med[c]["efficiency"] = e
        rows.append([c[0], str(c[1]), str(a.repeats), f"{med[c]['startup_s']:.1f}", f"{med[c]['tokens_per_s']:.1f}",
                     "" if e is None else f"{e:.2f}"])
    print(common.markdown_table(["backend", "replicas", "runs", "start-up s (median)", "tokens/s (median)", "E(R)"],
                                rows))
    local = med.get(("local", 1))
    if local and ray1:
        locals_ = [r for r in runs if r["backend"] == "local"]
        rays = [r for r in runs if r["backend"] == "ray" and r["replicas"] == 1]
        pairs = [ra["tokens_per_s"] / lo["tokens_per_s"] for lo, ra in zip(locals_, rays)]
        spread = f" (per repeat: {', '.join(f'{x:.2f}' for x in pairs)})" if len(pairs) > 1 else ""
        print(f"ray / local tokens-per-second ratio: {ray1['tokens_per_s'] / local['tokens_per_s']:.2f}{spread}")
    if a.out:
        common.write_json(a.out, {"args": vars(a), "runs": runs,
                                  "medians": [{"backend": c[0], "replicas": c[1], **med[c]} for c in configs]})


if __name__ == "__main__":
    common.run_main(main)
