"""vLLM on CPU: generated tokens/s of a model for each dtype (bf16, float32) and vLLM-CPU thread setting, on the
machine it runs on. Each configuration runs in a fresh process (vLLM reads its thread settings at engine start):
one engine start, a short warm-up, then ONE timed llm.generate of --prompts prompts x --n samples x --max_tokens
tokens (ignore_eos: every sample generates exactly max_tokens). Prints the CPU's bf16 flags, what models.cpu_dtype
would choose, and a Markdown table.

    VLLM_CPU_KV_GB=1 python bench/cpu_speed.py                          # tiny model, 2 dtypes x 3 thread settings
    python bench/cpu_speed.py --dtypes float32 --threads vllm,reserve0  # fewer engine starts
    python bench/cpu_speed.py --emulate_no_bf16                         # also: this CPU told to use AVX2 only

Thread settings (--threads):
  vllm      vLLM-CPU's own default: one core reserved for the scheduler process, OpenMP bound to the others
            (VLLM_CPU_NUM_OF_RESERVED_CPU=1 VLLM_CPU_OMP_THREADS_BIND=auto): ONE thread on a 2-core machine;
            this project's default above 2 cores (models.cpu_thread_env)
  reserve0  no reserved core, OpenMP bound to every core (VLLM_CPU_NUM_OF_RESERVED_CPU=0): this project's
            default on machines with at most 2 cores
  nobind    no binding, OMP_NUM_THREADS = all cores (VLLM_CPU_OMP_THREADS_BIND=nobind)
--emulate_no_bf16 adds rows run with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 (oneDNN and PyTorch's own
kernels limited to AVX2, as on a CPU without AVX-512/AMX). This is NOT a faithful AVX2-only CPU: vLLM-CPU's own
kernels ignore both variables, and on an AMX machine bf16 then dies with SIGILL (docs/cpu.md). Measure on a real
AVX2-only machine instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models
import sources

THREADS = {
    "vllm": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1", "VLLM_CPU_OMP_THREADS_BIND": "auto"},
    "reserve0": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "auto"},
    "nobind": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))},
}
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@dataclass
class Args:
    model: str = field(default=str(models.TINY_MODEL), metadata={"help": "model path"})
    dtypes: str = field(default="bfloat16,float32", metadata={"help": "comma-separated dtypes"})
    threads: str = field(default="vllm,reserve0,nobind", metadata={"help": "comma-separated: vllm, reserve0, nobind"})
    emulate_no_bf16: bool = field(default=False, metadata={"help": "also run each dtype (vllm threads) with AVX2 only"})
    prompts: int = field(default=16, metadata={"help": "prompts per timed call"})
    n: int = field(default=1, metadata={"help": "samples per prompt"})
    max_tokens: int = field(default=64, metadata={"help": "generated tokens per sample (ignore_eos)"})
    child: str = field(default="", metadata={"help": "internal: run one configuration (JSON) and print RESULT"})


def child(a: Args) -> None:
    cfg = json.loads(a.child)
    from vllm import SamplingParams
    t0 = time.perf_counter()
    llm = models.make_llm(a.model, seed=0, max_model_len=512, dtype=cfg["dtype"])
    start = time.perf_counter() - t0
    tok = llm.get_tokenizer()
    qs = sources.load_questions("math500", limit=a.prompts)
    ids = models.encode(tok, [models.render_prompt(tok, q["question"], models.EVAL_SYSTEM_PROMPT) for q in qs])
    prompts = [{"prompt_token_ids": x} for x in ids]
    params = SamplingParams(n=a.n, temperature=0.6, max_tokens=a.max_tokens, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)  # warm-up
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    print("RESULT " + json.dumps({"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt,
                                  "engine_start_s": start}), flush=True)


def main() -> None:
    from transformers import HfArgumentParser
    (a,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    if a.child:
        return child(a)
    import pandas as pd
    flags = models.cpu_flags()
    dtype, why = models.cpu_dtype("auto")
    print(f"CPU: {len(os.sched_getaffinity(0))} cores; bf16 flags: "
          f"{', '.join(f for f in models.NATIVE_BF16_FLAGS if f in flags) or 'none'}; "
          f"avx512f: {'avx512f' in flags}; models.cpu_dtype('auto') -> {dtype} ({why})")
    print(f"load average: {os.getloadavg()[0]:.2f} (other work on the machine skews the numbers)")
    configs = [(d, t, False) for d in a.dtypes.split(",") for t in a.threads.split(",")]
    if a.emulate_no_bf16:
        configs += [(d, "vllm", True) for d in a.dtypes.split(",")]
    rows = []
    for d, t, emu in configs:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **THREADS[t], **(AVX2_ONLY if emu else {})}
        env.setdefault("VLLM_CPU_KV_GB", "1")
        if t != "nobind":
            env.pop("OMP_NUM_THREADS", None)
        cfg = json.dumps({"dtype": d})
        p = subprocess.run([sys.executable, __file__, "--model", a.model, "--prompts", str(a.prompts), "--n",
                            str(a.n), "--max_tokens", str(a.max_tokens), "--child", cfg], env=env,
                           capture_output=True, text=True)
        res = next((json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")), None)
        row = {"dtype": d, "threads": t, "isa": "AVX2 only (emulated)" if emu else "native"}
        if res is None:
            row["error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:120]
        else:
            row.update({"tokens/s": round(res["tokens_per_s"], 1), "tokens": res["tokens"],
                        "seconds": round(res["seconds"], 1), "engine start s": round(res["engine_start_s"], 1)})
        rows.append(row)
        print(row, flush=True)
    df = pd.DataFrame(rows).fillna("")
    head = list(df.columns)
    print("\n| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|")
    for r in df.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in r) + " |")


if __name__ == "__main__":
    main()
