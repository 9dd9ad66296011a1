"""train.py (ZeRO-3, packing, block-diagonal / varlen attention) vs TRL SFTTrainer (padding, its defaults) on the
same model and the same UPFT-style data, in one run. Prints useful (non-padding) tokens per second and MFU.

    pip install -r requirements-bench.txt
    DS_ACCELERATOR=cpu python bench/train_throughput.py                       # CPU: tiny model, scaled-down traces
    python bench/train_throughput.py --model PATH_TO_1.5B --long_min 1000 --long_max 4000 --n 640 \\
        --micro_batch_tokens 8192 --gradient_checkpointing                      # GPU

Data: 90% UPFT prefix examples (a chat-formatted question + a ~40-token completion) and 10% full traces of
--long_min..--long_max completion tokens (the goal's mix is 1k-4k; the CPU default is scaled down to finish in
a few minutes). Both trainers see the same examples, the same global batch (TRL: per-device batch 8, its
default), the same learning rate, one epoch, and the same --gradient_checkpointing setting.
tokens/s = tokens of the examples (prompt + completion, no padding) / training time (train.py: the sum of its
logged step times; TRL: Trainer's train_runtime). MFU = 6 x params x tokens (+ causal attention) / time / peak.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import models  # noqa: E402

WORDS = ("first we compute the sum of the two numbers then we check whether it is divisible by three wait let me "
         "reconsider the factor of two so the answer is").split()


def make_data(tok, n: int, long_min: int, long_max: int, seed: int) -> list[dict]:
    import numpy as np
    rng = np.random.default_rng(seed)
    eot = models.end_of_turn(tok)
    vocab_text = " ".join(rng.choice(WORDS, size=20000))
    pool = models.encode(tok, [vocab_text])[0]
    recs = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS, size=int(rng.integers(15, 40))))
        prompt = models.render_prompt(tok, q, models.EVAL_SYSTEM_PROMPT)
        full = i % 10 == 9
        if not full:
            prompt = models.render_prompt(tok, q + models.UPFT_PREFIX_INSTRUCTION, models.EVAL_SYSTEM_PROMPT)
        length = int(rng.integers(long_min, long_max + 1)) if full else int(rng.integers(32, 48))
        start = int(rng.integers(0, len(pool) - length))
        recs.append({"id": str(i), "type": "full" if full else "prefix", "prompt": prompt,
                     "completion": tok.decode(pool[start:start + length]) + eot})
    return recs


def flops_of(n_params, n_layers, hidden, lengths):
    return sum(6 * n_params * L + 6 * n_layers * hidden * L * L for L in lengths)


def peak(args):
    import torch
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return 989e12 if ("H100" in name or "H200" in name) else 312e12
    return (os.cpu_count() or 1) * 2.5e9 * 32


def run_trl(args, data_path, out_dir, tokens, flops, packing=False, global_batch_size=8):
    """TRL SFTTrainer on the same data: padding (its default) or its own packing=True. Returns (tokens/s,
    flops/s) over the whole run, and sets run_trl.last = {steps, step_times, peak_mem_gb} for gpu_check.py."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    tok = AutoTokenizer.from_pretrained(args.model)
    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]}
                                     for r in common.read_jsonl(data_path)])
    gpu = torch.cuda.is_available()
    try:
        import flash_attn  # noqa: F401
        attn = "flash_attention_2" if gpu else "sdpa"
    except ImportError:  # TRL's packing then relies on transformers' packed-sequence mask from position_ids
        attn = "sdpa"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if gpu else torch.float32,
                                                 attn_implementation=attn)
    cfg = SFTConfig(output_dir=str(out_dir), num_train_epochs=1, learning_rate=args.lr, lr_scheduler_type="constant",
                    max_length=args.max_len, gradient_checkpointing=args.gradient_checkpointing,
                    save_strategy="no", report_to="none", logging_steps=1, bf16=gpu, use_cpu=not gpu,
                    seed=args.seed, dataloader_num_workers=0, disable_tqdm=True, packing=packing,
                    per_device_train_batch_size=8, gradient_accumulation_steps=max(1, global_batch_size // 8))

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_begin(self, *a, **k):
            self.t.append([time.perf_counter()])

        def on_step_end(self, *a, **k):
            if gpu:
                torch.cuda.synchronize()
            self.t[-1].append(time.perf_counter())
    times = StepTimes()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[times])
    res = trainer.train()
    dt = res.metrics["train_runtime"]
    run_trl.last = {"steps": len(times.t), "step_times": [b - a for a, b in times.t],
                    "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if gpu else None, "attn": attn}
    return tokens / dt, flops / dt


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(models.TINY_MODEL))
    p.add_argument("--n", type=int, default=40, help="examples (90%% prefixes, 10%% full traces)")
    p.add_argument("--long_min", type=int, default=256)
    p.add_argument("--long_max", type=int, default=768)
    p.add_argument("--max_len", type=int, default=4096)
    p.add_argument("--micro_batch_tokens", type=int, default=4096)
    p.add_argument("--global_batch_size", type=int, default=8, help="TRL's default per-device batch")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--peak_tflops", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip_trl", action="store_true")
    args = p.parse_args()

    from transformers import AutoConfig, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model)
    recs = make_data(tok, args.n, args.long_min, args.long_max, args.seed)
    lengths = [len(a) + len(b) for a, b in zip(models.encode(tok, [r["prompt"] for r in recs]),
                                               models.encode(tok, [r["completion"] for r in recs]))]
    tokens = sum(lengths)
    cfg = AutoConfig.from_pretrained(args.model).get_text_config()
    from transformers import AutoModelForCausalLM
    import torch
    with torch.device("meta"):
        n_params = sum(t.numel() for t in AutoModelForCausalLM.from_config(cfg).parameters())
    flops = flops_of(n_params, cfg.num_hidden_layers, cfg.hidden_size, lengths)
    print(f"data: {len(recs)} examples, {tokens} tokens (prefix ~40-token completions, 10% full traces "
          f"{args.long_min}-{args.long_max}); model {args.model} ({n_params / 1e6:.0f}M)")

    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "mix.jsonl"
        common.write_jsonl(data_path, recs)
        t0 = time.time()
        cmd = [sys.executable, str(ROOT / "train.py"), "--model", args.model, "--data", str(data_path),
               "--output_dir", str(Path(tmp) / "ours"), "--epochs", "1", "--lr", str(args.lr),
               "--lr_scheduler", "constant", "--global_batch_size", str(args.global_batch_size),
               "--max_len", str(args.max_len), "--micro_batch_tokens", str(args.micro_batch_tokens),
               "--save_steps", "0", "--seed", str(args.seed)]
        if args.gradient_checkpointing:
            cmd.append("--gradient_checkpointing")
        if args.peak_tflops:
            cmd += ["--peak_tflops", str(args.peak_tflops)]
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                       stdout=subprocess.DEVNULL)
        log = common.read_jsonl(Path(tmp) / "ours" / "train_log.jsonl")
        dt = sum(r["time_s"] for r in log)
        assert sum(r["tokens"] for r in log) == tokens, "train.py trained other tokens than the data holds"
        ours_tps, ours_mfu = tokens / dt, flops / dt / peak(args)
        print(f"train.py: {ours_tps:.0f} tokens/s, MFU {ours_mfu:.1%} ({len(log)} steps, {dt:.1f} s training, "
              f"{time.time() - t0:.0f} s with start-up)")
        if args.skip_trl:
            return
        trl_tps, trl_flops = run_trl(args, data_path, Path(tmp) / "trl", tokens, flops,
                                     global_batch_size=args.global_batch_size)
        print(f"TRL SFTTrainer (padding): {trl_tps:.0f} tokens/s, MFU {trl_flops / peak(args):.1%}")
    print(f"train.py / TRL tokens-per-second ratio: {ours_tps / trl_tps:.2f}")
    print(json.dumps({"train_py_tokens_per_s": ours_tps, "trl_tokens_per_s": trl_tps, "train_py_mfu": ours_mfu,
                      "trl_mfu": trl_flops / peak(args), "tokens": tokens, "examples": len(recs)}))


if __name__ == "__main__":
    main()
