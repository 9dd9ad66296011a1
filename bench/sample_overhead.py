"""What sample.py costs on top of vLLM: its core path (chat-template rendering + tokenizing, one engine run per
block through backends.run's local backend, records built and appended to disk with fsync, progress bar) against a
bare llm.generate on the same pre-tokenized prompts and sampling params, in ONE process with ONE engine, alternating
the order each repeat.

    VLLM_CPU_KV_GB=1 python bench/sample_overhead.py                         # tiny model, 64 questions x n=2, 64 tokens
    python bench/sample_overhead.py --model Qwen/Qwen2.5-Math-7B-Instruct --limit 512 --max_tokens 1024   # GPU

Prints per-repeat times and `sample.py / bare vLLM time ratio: X.XX` (sum over repeats; goal <= 1.05).
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backends
import common
import models
import sources
import sample


@dataclass
class Args:
    model: str = str(models.TINY_MODEL)
    data: str = "math500"
    limit: int = 64            # questions
    n: int = 2                 # samples per question
    max_tokens: int = 64
    chunk_size: int = 512      # sample.py's default
    repeats: int = 3           # each repeat runs both, order alternating
    seed: int = 42


def compare(llm, a: sample.Args, repeats: int, log=print) -> dict:
    """sample.py's path vs bare llm.generate on one engine, `repeats` times each, alternating order."""
    system_prompt = models.resolve_system_prompt(a.system_prompt)
    questions = sources.load_questions(a.data, limit=a.limit)
    tokenizer = llm.get_tokenizer()
    params = sample.make_sampling_params(sample.sampling_settings(a))
    bare_prompts = [{"prompt_token_ids": ids} for ids in sample.encode_prompts(tokenizer, questions, system_prompt)]
    llm.generate(bare_prompts[:4], params, use_tqdm=False)  # warm-up

    def bare():
        outs = llm.generate(bare_prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    def via_sample(out_path: Path):  # sample.py's local backend (backends.run: prompts rendered per block)
        items = [backends.item(q["question"], sample.sampling_params(sample.sampling_settings(a)), q["id"])
                 for q in questions]
        blocks = backends.run(sample.engine_spec(a, system_prompt), items, block_size=a.chunk_size, llm=llm)
        stats = sample.sample_blocks(blocks, questions, lambda recs: common.append_jsonl(out_path, recs))
        return stats["tokens"]

    times = {"bare": [], "sample": []}
    tokens = {"bare": [], "sample": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = ["bare", "sample"] if r % 2 == 0 else ["sample", "bare"]
            for which in order:
                t0 = time.perf_counter()
                ntok = bare() if which == "bare" else via_sample(Path(tmp) / f"rep{r}.jsonl")
                times[which].append(time.perf_counter() - t0)
                tokens[which].append(ntok)
                log(f"repeat {r} {which:6s}: {times[which][-1]:7.2f} s, {ntok} tokens")
    tb, ts = sum(times["bare"]), sum(times["sample"])
    return {"questions": len(questions), "bare_s": tb, "sample_s": ts, "bare_tokens": sum(tokens["bare"]),
            "sample_tokens": sum(tokens["sample"]), "time_ratio": ts / tb,
            "per_token_ratio": (ts / max(1, sum(tokens["sample"]))) / (tb / max(1, sum(tokens["bare"])))}


def main() -> None:
    from transformers import HfArgumentParser
    (b,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    a = sample.Args(model=b.model, data=b.data, output="unused.jsonl", limit=b.limit, n=b.n, max_tokens=b.max_tokens,
                    chunk_size=b.chunk_size, seed=b.seed)
    llm = models.make_llm(a.model, seed=a.seed)
    r = compare(llm, a, b.repeats, log=lambda m: print(m, flush=True))
    sample.shutdown(llm)
    print(f"{r['questions']} questions x n={a.n}, max_tokens {a.max_tokens}, {b.repeats} repeats, model {a.model}")
    print(f"bare vLLM: {r['bare_s']:.2f} s ({r['bare_tokens']} tokens); sample.py: {r['sample_s']:.2f} s "
          f"({r['sample_tokens']} tokens); per-token time ratio: {r['per_token_ratio']:.3f}")
    print(f"sample.py / bare vLLM time ratio: {r['time_ratio']:.2f}")


if __name__ == "__main__":
    common.run_main(main)
