"""One command before a week of GPU time: is this machine's pipeline correct, and how fast is it? Prints one
table and a verdict, writes the same to a JSON file, exits 1 when a check fails. No downloads: the models are
random-initialised from Qwen2.5-1.5B / -7B shapes written locally, plus the bundled tiny model.

    python bench/gpu_check.py                     # one GPU: every check, ~8 min on one H200 (sizes are flags)
    python bench/gpu_check.py --gpus 8            # + the multi-GPU variants: ZeRO-3 over NCCL, tensor-parallel vLLM
    make gpu-check                                # the same as the first line
    DS_ACCELERATOR=cpu python bench/gpu_check.py --tiny     # CPU, tiny sizes, a couple of minutes (CI runs this)
    pip install -r requirements-bench.txt         # adds TRL: the TRL rows run instead of printing 'skip'

Checks (status pass / fail / skip; `info` rows are measurements, `goal` rows compare them with the project's speed
goals (bench/README.md) and never fail the verdict):
  attention   packed loss and gradients == separate sequences for every attention implementation that runs here
              (packing.py), on the Qwen2.5-1.5B shape (GPU) or the tiny models (CPU); `*` marks the one train.py
              picks. A control row (no example boundaries) must differ, so the check can fail.
              Tolerance: fp32 rel 1e-4 (loss) / rel-L2 1e-3 (gradients); bf16 rel 1e-2 / rel-L2 5e-2.
  loss_head   chunked (and Liger when installed) == the logits head, values and gradients; GPU: peak memory of
              forward+backward of one 16k-token row on the 7B shape for each head.
  train       train.py (ZeRO-3, packing) on a UPFT-style mix (90% ~40-token prefix examples, 10% full traces of
              --long_min..--long_max tokens) and on QFFT-style traces (--qfft_min..--qfft_max): tokens/s, MFU,
              peak memory; the same data through TRL SFTTrainer with padding and with packing=True.
  sampling    sample.py's path vs bare vLLM: the same engine, the same prompts (bench/sample_overhead.py).
  round_trip  the checkpoint train.py wrote loads in vLLM and generates.
tokens/s counts example tokens (no padding) over the steps after the first (compilation, allocator warm-up);
MFU = (6 x params x tokens + causal attention) / time / peak (--peak_tflops, else train.py's table of GPUs).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))
import common  # noqa: E402
import models  # noqa: E402
import runs  # noqa: E402

# Real shapes (config.json of Qwen/Qwen2.5-1.5B-Instruct and -7B-Instruct), random weights.
SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
QWEN_COMMON = dict(max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu",
                   attention_dropout=0.0, use_sliding_window=False)
TOL = {"fp32": (1e-4, 1e-3), "bf16": (1e-2, 5e-2)}  # (loss rel, gradient rel-L2)
GOALS = {"mfu_long": 0.40, "vs_trl_padding": 5.0, "vs_trl_packing": 1.3, "sampling_overhead": 1.05}


class Report:
    def __init__(self):
        self.rows = []

    def add(self, check, case, status, value="", detail=""):
        row = {"check": check, "case": case, "status": status, "value": value, "detail": detail}
        self.rows.append(row)
        print(f"[{status:4s}] {check:10s} {case:40s} {value}  {detail}".rstrip(), flush=True)
        return row

    @property
    def ok(self):
        return not any(r["status"] == "fail" for r in self.rows)


# --------------------------------------------------------------------------------------------- models
def write_shape(name: str, out: Path, tokenizer_dir: Path, save_weights: bool, dtype="bfloat16") -> Path:
    """A Qwen2 model of a real shape, random init, with the tiny model's tokenizer (ids < any real vocab)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Qwen2Config(**SHAPES[name], **QWEN_COMMON, bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    if save_weights:
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen2ForCausalLM(cfg).to(getattr(torch, dtype))
        model.save_pretrained(out)
        del model
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    else:
        cfg.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=[tok.eos_token_id],
                     pad_token_id=tok.pad_token_id).save_pretrained(out)
    return out


def model_from_config(path, attn, device, dtype, layers=None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    import packing
    packing.register()
    cfg = AutoConfig.from_pretrained(path)
    if layers:
        cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)
    return m


def load_model(path, attn, device, dtype):
    import packing
    from transformers import AutoModelForCausalLM
    packing.register()
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=dtype).to(device)


# --------------------------------------------------------------------------------------------- checks
def packed_batch(tok, lengths, seed=0):
    """Examples with a ~20-token prompt and completions of the given lengths, from random real-vocab ids."""
    import numpy as np
    import train
    rng = np.random.default_rng(seed)
    ids_max = min(len(tok), 30000)
    examples = [train.Example(rng.integers(3, ids_max, size=n + 20).astype(np.int32), 20) for n in lengths]
    idx = list(range(len(examples)))
    return examples, idx, train.token_weights(idx, examples, "sample")


def loss_grads(model, mb, attn, head="logits"):
    import torch
    import train
    model.zero_grad(set_to_none=True)
    loss = train.micro_batch_loss(model, mb, next(model.parameters()).device, attn, head)
    loss.backward()
    g = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return loss.item(), g


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def rel_l2(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check_attention(rep, name, path, device, dtype, tok, lengths, layers=None, from_config=False):
    """Every attention implementation on one packed row vs the separate-sequence sum (dense SDPA, one example per
    forward): loss and every parameter's gradient."""
    import torch
    import packing
    import train
    on_gpu = device.type == "cuda"
    chosen = packing.choose_attention("auto", on_gpu, True, device)
    impls = ["sdpa", packing.VARLEN, packing.FLEX] + (["flash_attention_2"] if packing.flash_attn_installed()
                                                      and on_gpu else [])
    kind = "bf16" if dtype == torch.bfloat16 else "fp32"
    tl, tg = TOL[kind]
    make = (lambda a: model_from_config(path, a, device, dtype, layers)) if from_config else \
        (lambda a: load_model(path, a, device, dtype))
    examples, idx, w = packed_batch(tok, lengths)
    pad = tok.pad_token_id
    ref_model = make("sdpa")
    ref_model.zero_grad(set_to_none=True)
    total = sum(train.micro_batch_loss(ref_model, train.collate([j], examples, w, True, pad), device, "sdpa")
                for j in idx)
    total.backward()
    ref_g = torch.cat([p.grad.flatten().float() for p in ref_model.parameters() if p.grad is not None])
    ref_l = total.item()
    del ref_model
    mb = train.collate(idx, examples, w, True, pad)
    case0 = f"{name} {kind} T={sum(len(e.ids) for e in examples)} n={len(examples)}"
    for impl in impls:
        mark = "*" if impl == chosen else ""
        case = f"{impl}{mark} ({case0})"
        try:
            model = make(impl)
            if impl == packing.FLEX and not on_gpu:  # flex_attention: no backward on CPU (torch 2.13)
                with torch.no_grad():
                    lo = train.micro_batch_loss(model, mb, device, impl).item()
                ok = rel(lo, ref_l) <= tl
                rep.add("attention", case, "pass" if ok else "fail", f"loss rel {rel(lo, ref_l):.1e}",
                        "forward only: flex_attention has no CPU backward")
            else:
                lo, g = loss_grads(model, mb, impl)
                el, eg = rel(lo, ref_l), rel_l2(g, ref_g)
                rep.add("attention", case, "pass" if el <= tl and eg <= tg else "fail",
                        f"loss rel {el:.1e}, grad rel-L2 {eg:.1e}")
            del model
        except Exception as e:  # an implementation that cannot run here is reported, not fatal
            status = "fail" if impl == chosen else "skip"
            rep.add("attention", case, status, "", f"cannot run here: {type(e).__name__}: {str(e)[:120]}")
        gc.collect()
    # control: the same row without example boundaries must be detectably wrong
    # (an explicit causal mask over the whole row: with no mask at all, transformers >= 5.x rebuilds the example
    # boundaries from the restarting position_ids for SDPA)
    model = make("sdpa")
    real = packing.attention_kwargs
    packing.attention_kwargs = lambda impl, seg: {"attention_mask": packing.dense_block_causal_mask(seg * 0)}
    try:
        lo, g = loss_grads(model, mb, "sdpa")
    finally:
        packing.attention_kwargs = real
    el, eg = rel(lo, ref_l), rel_l2(g, ref_g)
    rep.add("attention", f"control: no boundaries ({case0})", "pass" if el > tl or eg > tg else "fail",
            f"loss rel {el:.1e}, grad rel-L2 {eg:.1e}", "must exceed the tolerance, else the rows above prove nothing")
    del model
    gc.collect()


def check_loss_head(rep, name, path, device, dtype, tok, lengths, layers=None, from_config=False):
    import torch
    import packing
    kind = "bf16" if dtype == torch.bfloat16 else "fp32"
    tl, tg = TOL[kind]
    make = (lambda: model_from_config(path, "sdpa", device, dtype, layers)) if from_config else \
        (lambda: load_model(path, "sdpa", device, dtype))
    import train
    examples, idx, w = packed_batch(tok, lengths, seed=1)
    mb = train.collate(idx, examples, w, True, tok.pad_token_id)
    model = make()
    ref_l, ref_g = loss_grads(model, mb, "sdpa", "logits")
    heads = ["chunked"] + (["liger"] if device.type == "cuda" and packing.liger_installed() else [])
    for h in heads:
        try:
            chunk, packing.HEAD_CHUNK = packing.HEAD_CHUNK, 37  # several chunks even on the tiny rows
            try:
                lo, g = loss_grads(model, mb, "sdpa", h)
            finally:
                packing.HEAD_CHUNK = chunk
            el, eg = rel(lo, ref_l), rel_l2(g, ref_g)
            rep.add("loss_head", f"{h} vs logits ({name} {kind})", "pass" if el <= tl and eg <= tg else "fail",
                    f"loss rel {el:.1e}, grad rel-L2 {eg:.1e}")
        except Exception as e:
            rep.add("loss_head", f"{h} vs logits ({name} {kind})", "fail", "", f"{type(e).__name__}: {str(e)[:120]}")
    if device.type != "cuda" or not packing.liger_installed():
        rep.add("loss_head", "liger", "skip", "", "needs a GPU and liger-kernel (pip install liger-kernel)")
    del model
    gc.collect()


def check_memory(rep, path, device, tokens, attn, layers):
    """Peak memory of forward+backward of one packed row of `tokens` tokens, per loss head (7B shape, gradient
    checkpointing, bf16, no optimizer): the logits head holds the bf16 logits of every trained position."""
    import torch
    import packing
    import train
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = model_from_config(path, attn, device, torch.bfloat16, layers)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    per = max(1, tokens // 4)
    examples, idx, w = packed_batch(tok, [per - 20] * 4, seed=2)
    mb = train.collate(idx, examples, w, True, tok.pad_token_id)
    for h in ["logits", "chunked"] + (["liger"] if packing.liger_installed() else []):
        try:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            loss_grads(model, mb, attn, h)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30
            rep.add("loss_head", f"memory {h} ({tokens} tok, 7B shape, {layers or 28} layers)", "info",
                    f"{peak:.1f} GB above the weights")
        except Exception as e:
            rep.add("loss_head", f"memory {h}", "fail" if h != "liger" else "skip", "",
                    f"{type(e).__name__}: {str(e)[:120]}")
    del model
    gc.collect()
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------- training
def qfft_data(tok, n, lo, hi, seed):
    """Question-free traces (QFFT): no prompt, a long completion."""
    import numpy as np
    from train_throughput import WORDS
    rng = np.random.default_rng(seed)
    pool = models.encode(tok, [" ".join(rng.choice(WORDS, size=hi + 1000))])[0]
    recs = []
    for i in range(n):
        L = int(rng.integers(lo, hi + 1))
        s = int(rng.integers(0, max(1, len(pool) - L)))
        recs.append({"id": f"q{i}", "type": "qfft", "prompt": "",
                     "completion": tok.decode(pool[s:s + L]) + models.end_of_turn(tok)})
    return recs


def summarise(log):
    """tokens/s, MFU over the steps after the first (when there are >= 2), peak memory."""
    use = log[1:] if len(log) >= 2 else log
    tokens, dt = sum(r["tokens"] for r in use), sum(r["time_s"] for r in use)
    mem = [r.get("peak_mem_gb") for r in log if r.get("peak_mem_gb") is not None]
    return {"tokens_per_s": tokens / dt, "mfu": sum(r["mfu"] * r["time_s"] for r in use) / dt,
            "peak_mem_gb": max(mem) if mem else None, "steps": len(log), "timed_steps": len(use)}


def run_train(rep, label, model, data, out, a, gpus, max_len, micro):
    cmd = ["train.py", "--model", model, "--data", data, "--output_dir", out, "--epochs", "1", "--lr", "1e-6",
           "--lr_scheduler", "constant", "--warmup_ratio", "0", "--global_batch_size", str(a.global_batch_size),
           "--max_len", str(max_len), "--micro_batch_tokens", str(micro), "--save_steps", "0", "--overwrite"]
    if a.gradient_checkpointing:
        cmd.append("--gradient_checkpointing")
    if a.peak_tflops:
        cmd += ["--peak_tflops", str(a.peak_tflops)]
    if gpus > 1:
        import shutil
        ds = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or "deepspeed"
        cmd = [ds, "--num_gpus", str(gpus), "--master_port", str(29500 + os.getpid() % 1000)] + cmd
    else:
        cmd = [sys.executable] + cmd
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    p = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        rep.add("train", label, "fail", "", f"train.py exited {p.returncode}: {(p.stderr or p.stdout)[-300:]}")
        return None
    log = common.read_jsonl(Path(out) / "train_log.jsonl")
    s = summarise(log)
    attn = next((ln.split("attention ")[1].split(",")[0] for ln in p.stdout.splitlines() if "attention " in ln), "?")
    mem = f", peak {s['peak_mem_gb']:.1f} GB" if s["peak_mem_gb"] is not None else ""
    ok = all(math.isfinite(r["loss"]) for r in log)
    rep.add("train", label, "pass" if ok else "fail", f"{s['tokens_per_s']:.0f} tok/s, MFU {s['mfu']:.1%}{mem}",
            f"attention {attn}, {s['steps']} steps ({s['timed_steps']} timed), {time.time() - t0:.0f} s with start-up")
    return s


def run_trl_part(a, data, model, packing_flag):
    """In a subprocess (clean GPU memory): TRL SFTTrainer over the same data. Returns its summary or None."""
    code = (f"import sys, json; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'bench')!r}]\n"
            "import argparse, train_throughput as tt\n"
            f"args = argparse.Namespace(model={model!r}, lr=1e-6, max_len={a.max_len}, "
            f"gradient_checkpointing={a.gradient_checkpointing}, seed=0)\n"
            f"tt.run_trl(args, {data!r}, {str(Path(data).parent / 'trl')!r}, 1, 1, packing={packing_flag}, "
            f"global_batch_size={a.global_batch_size})\n"
            "print('TRL_RESULT', json.dumps(tt.run_trl.last))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("TRL_RESULT")), None)
    if p.returncode != 0 or line is None:
        return {"error": (p.stderr or p.stdout)[-300:]}
    return json.loads(line.split(" ", 1)[1])


def check_train(rep, a, model, tok, tmp: Path, gpus, flops_fn, peak_flops):
    import train_throughput as tt
    results = {}
    mixes = {
        "upft": (tt.make_data(tok, a.n_upft, a.long_min, a.long_max, 0), a.max_len, a.micro_batch_tokens),
        "long": ([r for r in tt.make_data(tok, 10 * a.n_long, a.long_min, a.long_max, 1) if r["type"] == "full"],
                 a.max_len, a.micro_batch_tokens),
        "qfft": (qfft_data(tok, a.n_qfft, a.qfft_min, a.qfft_max, 0), a.qfft_max + 64, max(a.micro_batch_tokens,
                                                                                           a.qfft_max + 64)),
    }
    try:
        import trl  # noqa: F401
        have_trl = True
    except ImportError:
        have_trl = False
    for mix, (recs, max_len, micro) in mixes.items():
        if not recs:
            continue
        d = tmp / mix
        d.mkdir(exist_ok=True)
        common.write_jsonl(d / "data.jsonl", recs)
        lengths = [len(x) + len(y) for x, y in zip(models.encode(tok, [r["prompt"] for r in recs]),
                                                   models.encode(tok, [r["completion"] for r in recs]))]
        lengths = [min(n, max_len) for n in lengths]
        unit = "process" if os.environ.get("DS_ACCELERATOR") == "cpu" else "GPU"
        label = f"train.py {mix} ({len(recs)} ex, {sum(lengths)} tok, {gpus} {unit}{'s' if gpus > 1 else ''})"
        s = run_train(rep, label, model, d / "data.jsonl", d / "ours", a, gpus, max_len, micro)
        results[mix] = {"train_py": s}
        if mix == "long" and s and gpus == 1:
            rep.add("goal", f"MFU on {a.long_min}-{a.long_max}-token traces >= 40%",
                    "info", f"{s['mfu']:.1%}", "met" if s["mfu"] >= GOALS["mfu_long"] else "missed")
        if mix != "upft":
            continue
        if not have_trl:
            rep.add("train", "TRL SFTTrainer padding / packing", "skip", "",
                    "trl not installed: pip install -r requirements-bench.txt")
            continue
        tokens = sum(lengths)
        for name, flag in (("padding", False), ("packing", True)):
            r = run_trl_part(a, str(d / "data.jsonl"), model, flag)
            if "error" in r:
                rep.add("train", f"TRL {name}", "fail", "", r["error"])
                continue
            times = r["step_times"][1:] if len(r["step_times"]) >= 2 else r["step_times"]
            # steps are whole optimizer steps over the same examples: useful tokens/s over the timed steps
            frac = len(times) / max(1, len(r["step_times"]))
            tps = tokens * frac / sum(times)
            mfu = flops_fn(lengths) * frac / sum(times) / peak_flops
            mem = f", peak {r['peak_mem_gb']:.1f} GB" if r.get("peak_mem_gb") is not None else ""
            rep.add("train", f"TRL {name} (upft, {r['attn']})", "info", f"{tps:.0f} tok/s, MFU {mfu:.1%}{mem}")
            results[mix][f"trl_{name}"] = {"tokens_per_s": tps, "mfu": mfu, "peak_mem_gb": r.get("peak_mem_gb")}
            if s:
                goal = GOALS[f"vs_trl_{name}"]
                ratio = s["tokens_per_s"] / tps
                rep.add("goal", f"train.py / TRL {name} >= {goal}x (useful tok/s)", "info", f"{ratio:.2f}x",
                        "met" if ratio >= goal else "missed")
    return results


# ---------------------------------------------------------------------------------------------------- vLLM
VLLM_PART = """
import json, sys
sys.path[:0] = [{root!r}, {bench!r}]
import models, sample, sample_overhead
if __name__ == "__main__":
    from vllm import SamplingParams
    out = {{}}
    llm = models.make_llm({ckpt!r}, seed=0, max_model_len={max_model_len}, tensor_parallel_size={tp})
    tok = llm.get_tokenizer()
    ids = models.encode(tok, [models.render_prompt(tok, "What is 2+3?", None)])[0]
    o = llm.generate([{{"prompt_token_ids": ids}}], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
    out["round_trip_tokens"] = len(o[0].outputs[0].token_ids)
    a = sample.Args(model={ckpt!r}, data="math500", output="unused.jsonl", limit={limit}, n={n},
                    max_tokens={max_tokens}, seed=0)
    out["sampling"] = sample_overhead.compare(llm, a, {repeats}, log=lambda m: print(m, file=sys.stderr))
    print("VLLM_RESULT", json.dumps(out), flush=True)
    sample.shutdown(llm)
"""


def check_vllm(rep, a, ckpt, tp):
    code = VLLM_PART.format(root=str(ROOT), bench=str(ROOT / "bench"), ckpt=str(ckpt), tp=tp,
                            max_model_len=a.vllm_max_len, limit=a.sample_limit, n=a.sample_n,
                            max_tokens=a.sample_max_tokens, repeats=a.sample_repeats)
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false",
                                "VLLM_CPU_KV_GB": os.environ.get("VLLM_CPU_KV_GB", "1")})
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("VLLM_RESULT")), None)
    if p.returncode != 0 or line is None:
        rep.add("round_trip", f"vLLM loads train.py's checkpoint (tp={tp})", "fail", "",
                f"exit {p.returncode}: {(p.stderr or p.stdout)[-300:]}")
        rep.add("sampling", "sample.py vs bare vLLM", "skip", "", "vLLM did not start")
        return None
    r = json.loads(line.split(" ", 1)[1])
    rep.add("round_trip", f"vLLM loads train.py's checkpoint (tp={tp})",
            "pass" if r["round_trip_tokens"] == 16 else "fail", f"{r['round_trip_tokens']}/16 tokens generated")
    s = r["sampling"]
    rep.add("sampling", f"sample.py / bare vLLM time (tp={tp})", "info", f"{s['time_ratio']:.3f}",
            f"{s['questions']} questions x n={a.sample_n}, {s['bare_tokens']} tokens, {a.sample_repeats} repeats")
    if os.environ.get("DS_ACCELERATOR") != "cpu":
        rep.add("goal", "sample.py within 5% of bare vLLM", "info", f"{s['time_ratio']:.3f}",
                "met" if s["time_ratio"] <= GOALS["sampling_overhead"] else "missed")
    return r


# ---------------------------------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU: the tiny models, tiny sizes (CI)")
    p.add_argument("--gpus", type=int, default=1, help="> 1: also ZeRO-3 over N GPUs and tensor-parallel vLLM")
    p.add_argument("--out", default="gpu_check.json", help="JSON file: every row, the verdict, versions")
    p.add_argument("--only", default="attention,loss_head,train,vllm", help="comma-separated subset of checks")
    p.add_argument("--shape", default="qwen2.5-1.5b", choices=list(SHAPES), help="model shape for train/vLLM")
    p.add_argument("--memory_tokens", type=int, default=16384, help="GPU: packed row for the loss-head memory row")
    p.add_argument("--memory_layers", type=int, default=28, help="GPU: layers of the 7B shape for that row")
    p.add_argument("--n_upft", type=int, default=512, help="UPFT mix: examples (10%% are full traces)")
    p.add_argument("--long_min", type=int, default=1000)
    p.add_argument("--long_max", type=int, default=4000)
    p.add_argument("--n_qfft", type=int, default=16, help="QFFT traces")
    p.add_argument("--qfft_min", type=int, default=8000)
    p.add_argument("--qfft_max", type=int, default=16000)
    p.add_argument("--max_len", type=int, default=4096)
    p.add_argument("--micro_batch_tokens", type=int, default=16384)
    p.add_argument("--global_batch_size", type=int, default=64)
    p.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--peak_tflops", type=float, default=0.0)
    p.add_argument("--sample_limit", type=int, default=128, help="MATH-500 questions for the sampling check")
    p.add_argument("--sample_n", type=int, default=4)
    p.add_argument("--sample_max_tokens", type=int, default=512)
    p.add_argument("--n_long", type=int, default=32, help="GPU: full traces of --long_min..--long_max (MFU goal)")
    p.add_argument("--sample_repeats", type=int, default=2)
    p.add_argument("--vllm_max_len", type=int, default=4096)
    a = p.parse_args(argv)
    if a.tiny:  # CPU sizes: every check, about two minutes on 2 cores
        a.n_upft, a.long_min, a.long_max, a.n_qfft, a.qfft_min, a.qfft_max = 20, 64, 160, 2, 200, 300
        a.max_len, a.micro_batch_tokens, a.global_batch_size, a.gradient_checkpointing = 512, 1024, 8, False
        a.sample_limit, a.sample_n, a.sample_max_tokens, a.sample_repeats, a.vllm_max_len = 4, 1, 8, 1, 512
        a.n_long = 0  # the MFU goal is a GPU number
    return a


def main(argv=None):
    a = parse(argv)
    import torch
    import numpy as np  # noqa: F401
    from transformers import AutoTokenizer
    import packing
    import train
    from train_throughput import flops_of
    only = set(a.only.split(","))
    on_gpu = torch.cuda.is_available() and not a.tiny
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    device = torch.device("cuda" if on_gpu else "cpu")
    rep = Report()
    t_start = time.time()
    tiny = models.TINY_MODEL
    if not (tiny / "config.json").exists():
        from tiny_model import materialize
        materialize()
    tok = AutoTokenizer.from_pretrained(tiny)
    env = {"device": torch.cuda.get_device_name() if on_gpu else "cpu", "gpus": a.gpus, "tiny": a.tiny,
           "flash_attn": packing.flash_attn_installed(), "liger": packing.liger_installed(),
           "attention_auto": packing.choose_attention("auto", on_gpu, True, device),
           "loss_head_auto": packing.choose_loss_head("auto", on_gpu, device),
           **runs.versions("torch", "transformers", "deepspeed", "vllm", "trl", "liger-kernel", "flash-attn")}
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if on_gpu:
            shape = write_shape(a.shape, tmp / a.shape, tiny, save_weights="train" in only or "vllm" in only)
            cfg7 = write_shape("qwen2.5-7b", tmp / "qwen2.5-7b", tiny, save_weights=False)
            model_specs = [(a.shape, shape, torch.bfloat16, True, [1500, 700, 300, 40, 40, 40])]
        else:
            from tiny_model import random_tiny_model
            shape = tiny
            model_specs = [("random-qwen2", random_tiny_model(tmp / "rq", "qwen2"), torch.float32, False,
                            [60, 30, 20, 9]),
                           ("smollm2-135m", tiny, torch.float32, False, [40, 20, 10])]
        if "attention" in only:
            for name, path, dtype, from_cfg, lengths in model_specs:
                check_attention(rep, name, path, device, dtype, tok, lengths, from_config=from_cfg)
        if "loss_head" in only:
            for name, path, dtype, from_cfg, lengths in model_specs[:1]:
                check_loss_head(rep, name, path, device, dtype, tok, lengths, from_config=from_cfg)
            if on_gpu:
                check_memory(rep, cfg7, device, a.memory_tokens, env["attention_auto"], a.memory_layers)
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        ckpt = None
        if "train" in only or "vllm" in only:
            from transformers import AutoConfig, AutoModelForCausalLM
            cfg = AutoConfig.from_pretrained(shape)
            with torch.device("meta"):
                n_params = sum(t.numel() for t in AutoModelForCausalLM.from_config(cfg).parameters())
            peak = train.peak_flops(train.Args(model="", data="", output_dir="", peak_tflops=a.peak_tflops),
                                    device)  # one device: the TRL rows run on one GPU
            flops_fn = lambda lengths: flops_of(n_params, cfg.num_hidden_layers, cfg.hidden_size, lengths)  # noqa
            gpu_counts = [1] + ([a.gpus] if a.gpus > 1 else [])
            for g in gpu_counts:
                results[f"train_{g}gpu"] = check_train(rep, a, str(shape), tok, tmp, g, flops_fn, peak)
            ck = tmp / "upft" / "ours"
            ckpt = ck if (ck / "model.safetensors").exists() or list(ck.glob("*.safetensors")) else None
        if "vllm" in only:
            if ckpt is None:
                rep.add("round_trip", "vLLM loads train.py's checkpoint", "fail" if "train" in only else "skip",
                        "", "no checkpoint from train.py")
            else:
                tps = [1] + ([tp_for(shape, a.gpus)] if a.gpus > 1 and on_gpu else [])
                for tp in tps:
                    results[f"vllm_tp{tp}"] = check_vllm(rep, a, ckpt, tp)
                if a.gpus > 1 and not on_gpu:
                    rep.add("round_trip", "tensor-parallel vLLM", "skip", "", "CPU: vLLM runs one process")
    verdict = "PASS" if rep.ok else "FAIL"
    elapsed = time.time() - t_start
    print_table(rep)
    print(f"\nverdict: {verdict} ({sum(r['status'] == 'pass' for r in rep.rows)} pass, "
          f"{sum(r['status'] == 'fail' for r in rep.rows)} fail, {sum(r['status'] == 'skip' for r in rep.rows)} "
          f"skip) in {elapsed:.0f} s; JSON: {a.out}")
    common.write_json(a.out, {"verdict": verdict, "ok": rep.ok, "elapsed_s": elapsed, "environment": env,
                              "args": vars(a), "rows": rep.rows, "results": results})
    return 0 if rep.ok else 1


def tp_for(shape, gpus):
    """The largest tensor-parallel size <= gpus that divides the attention heads (12 for the 1.5B shape)."""
    heads = json.loads((Path(shape) / "config.json").read_text())["num_attention_heads"]
    return max(d for d in range(1, gpus + 1) if heads % d == 0 and (d & (d - 1)) == 0)


def print_table(rep):
    import pandas as pd
    df = pd.DataFrame(rep.rows)[["status", "check", "case", "value", "detail"]]
    print()
    print(df.to_markdown(index=False) if _has_tabulate() else df.to_string(index=False))


def _has_tabulate():
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
