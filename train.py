"""Full-parameter SFT with DeepSpeed ZeRO-3: packing, exact loss reduction, resumable. Reads prepare.py output.

    # one node, 8 GPUs (QFFT hyperparameters, QFFT Table 5)
    deepspeed --num_gpus 8 train.py --model Qwen/Qwen2.5-7B-Instruct --data train.jsonl --output_dir ckpt/qfft \\
        --preset qfft --gradient_checkpointing --save_every_epoch
    # UPFT (App. B): PRM12K 2 epochs lr 1e-6 (the preset); LIMO: --epochs 3 --lr 2e-6; R1-distill: --max_len 16384
    deepspeed --num_gpus 8 train.py --model M --data upft.jsonl --output_dir ckpt/upft --preset upft
    # several nodes: a hostfile with lines `host slots=8`, same command on the first node
    deepspeed --hostfile hostfile --master_addr HOST0 train.py ... --deepspeed configs/ds_z3.json
    # 32B on few GPUs: offload optimizer states and parameters to CPU RAM
    deepspeed --num_gpus 8 train.py ... --deepspeed configs/ds_z3_offload.json
    # CPU (tests, laptops): fp32, gloo
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 train.py --model models/smollm2-135m-instruct --data d.jsonl \\
        --output_dir o
    python train.py ...            # one process, no launcher (torchrun works too)
    ... --resume                   # after a kill: continue from the last DeepSpeed checkpoint, same data order
    # LoRA (peft, TRL's flag names), still under ZeRO-3; DIR holds the merged model, DIR/adapter/ the adapter
    deepspeed --num_gpus 8 train.py --model M --data d.jsonl --output_dir o --use_peft --lora_r 16 --lora_alpha 32 \
        --lora_target_modules all-linear --lr 1e-4
    # a held-out eval loss (same masking and reduction as the training loss) every 50 steps
    ... --eval_ratio 0.05 --eval_steps 50        # or --eval_data held_out.jsonl (prepare.py output)

Each example: `prompt` and `completion` tokenized separately (no special tokens added; prepare.py's strings already
carry the template's), concatenated, cut at --max_len; the loss falls on completion tokens only. An optimizer step
consumes --global_batch_size EXAMPLES, split over ranks (balanced by tokens) and packed into micro-batches of up
to --micro_batch_tokens tokens; position ids restart per example and attention never crosses examples
(packing.py: FlashAttention-2 varlen on GPU when installed, else torch's varlen kernel or flex_attention, O(T);
on CPU SDPA with a dense block-diagonal causal mask). Loss reduction is
computed against the global batch, so it does not depend on the number of ranks or micro-batches.

Output: DIR/ (HF checkpoint: safetensors, config, tokenizer, chat template, generation_config; with --use_peft the
merged weights, and the adapter in DIR/adapter/), DIR/epoch_{k}/
with --save_every_epoch, DIR/train_log.jsonl (one line per step), DIR/train_loss.png (loss and learning rate per
step, eval loss with --eval_data/--eval_ratio; drawn at the end, also of a resumed run), DIR/meta.json,
DIR/checkpoints/ (DeepSpeed), DIR/tensorboard/ with --report_to tensorboard (`tensorboard --logdir
DIR/tensorboard`). --push_to_hub USER/NAME uploads the checkpoint with a model card made from meta.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import warnings

import numpy as np

import common
import models
import runs
import packing
import tracking

# Each paper's hyperparameters: configs/<preset>/train.yaml (read by resolve). Flags given on the command line
# override them.
SCHEDULERS = ("cosine", "constant_with_warmup", "linear", "constant")
# Without a preset
BASE = dict(lr=1e-5, epochs=3, global_batch_size=32, lr_scheduler="cosine", warmup_ratio=0.03, weight_decay=0.0,
            max_len=16384, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0)
# Arguments that do not change the result: a resumed run may change them
NOT_SETTINGS = {"resume", "overwrite", "stop_after_steps", "local_rank", "save_steps", "save_total_limit",
                "keep_checkpoints", "deepspeed", "gradient_checkpointing", "micro_batch_tokens",
                "attn_implementation", "loss_head", "peak_tflops", "save_every_epoch", "report_to", "push_to_hub",
                "eval_data", "eval_steps", "hub_model_id", "run_name",
                "per_device_train_batch_size", "gradient_accumulation_steps"}  # these two: in global_batch_size
LORA_ARGS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


@dataclass
class Args:
    model: str = field(metadata={"help": "base model: local directory or Hugging Face name",
                                 "aliases": ["--model_name_or_path"]})
    data: str = field(metadata={"help": "prepare.py output JSONL: records with prompt and completion",
                                "aliases": ["--input", "--dataset_name"]})
    output_dir: str = field(metadata={"help": "where the checkpoint, train_log.jsonl and meta.json go",
                                      "aliases": ["--output", "--out"]})
    deepspeed: str = field(
        default="configs/ds_z3.json", metadata={"help": "DeepSpeed config (\"auto\" values are filled from these "
                                                        "arguments)"})
    preset: Optional[Literal["qfft", "upft"]] = field(
        default=None, metadata={"help": "qfft | upft: each paper's hyperparameters, configs/<preset>/train.yaml "
                                        "(printed at start); flags override"})
    # hyperparameters: None = the preset's value, else BASE above
    epochs: Optional[int] = field(default=None, metadata={"help": "passes over the data (default: the preset's, "
                                                                  "else 3)", "aliases": ["--num_train_epochs"]})
    lr: Optional[float] = field(default=None, metadata={"help": "peak learning rate (default: the preset's, else "
                                                                "1e-5)", "aliases": ["--learning_rate"]})
    global_batch_size: Optional[int] = field(
        default=None, metadata={"help": "EXAMPLES per optimizer step, over all ranks (default: the preset's, else "
                                        "32)"})
    per_device_train_batch_size: Optional[int] = field(default=None, metadata={"help": (
        "TRL/HF name: sets --global_batch_size = this x --gradient_accumulation_steps x the number of ranks "
        "(micro-batches are still packed by --micro_batch_tokens)")})
    gradient_accumulation_steps: Optional[int] = field(default=None, metadata={"help": (
        "TRL/HF name, with --per_device_train_batch_size (alone: per-device batch 1)")})
    lr_scheduler: Optional[Literal["cosine", "constant_with_warmup", "linear", "constant"]] = field(
        default=None, metadata={"help": "learning-rate schedule after warmup (default: the preset's, else cosine)",
                                "aliases": ["--lr_scheduler_type"]})
    warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": "fraction of the steps with linear warmup (default: the preset's, else "
                                        "0.03)"})
    weight_decay: Optional[float] = field(
        default=None, metadata={"help": "AdamW weight decay, not applied to biases and norm weights (default: the "
                                        "preset's, else 0)"})
    adam_beta1: Optional[float] = field(default=None, metadata={"help": "AdamW beta1 (default: the preset's, else "
                                                                        "0.9)"})
    adam_beta2: Optional[float] = field(default=None, metadata={"help": "AdamW beta2 (default: the preset's, else "
                                                                        "0.999)"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon", "aliases": ["--adam_epsilon"]})
    max_grad_norm: Optional[float] = field(
        default=None, metadata={"help": "gradient clipping norm, 0 = no clipping (default: the preset's, else 1.0)"})
    max_len: Optional[int] = field(default=None, metadata={"help": "tokens per example (prompt + completion); "
                                                                   "longer ones are cut at the end (default: the "
                                                                   "preset's, else 16384)",
                                                           "aliases": ["--max_length"]})
    loss_reduction: Literal["sample", "token"] = field(
        default="sample", metadata={"help": "sample: mean token loss per example, averaged over examples | token: "
                                            "per token"})
    micro_batch_tokens: int = field(default=16384, metadata={"help": "token budget of one packed micro-batch per rank"})
    packing: bool = field(default=True, metadata={"help": "--no_packing: padded micro-batches in data order (the "
                                                          "usual baseline)"})
    attn_implementation: Literal["auto", "flash_attention_2", "packed_varlen", "packed_flex", "sdpa", "eager"] = field(
        default="auto", metadata={"help": (
            "auto: flash_attention_2 on GPU when installed, else torch's varlen attention (packed_varlen) or "
            "flex_attention with a block mask (packed_flex), both O(T); on CPU sdpa with a dense block mask, the "
            "reference (packing.py)")})
    loss_head: packing.LossHead = field(default="auto", metadata={"help": (
        "how the loss meets the vocabulary (the same number, less memory): auto = liger on GPU when installed and "
        "exact, else chunked; chunked = logits one chunk of positions at a time, recomputed in backward; logits = "
        "lm_head over all trained positions at once (the reference)")})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass (less memory, slower)"})
    max_steps: int = field(default=0, metadata={"help": "> 0: train this many optimizer steps (also the schedule's "
                                                        "length)"})
    seed: int = field(default=42, metadata={"help": "data order (a seeded permutation per epoch), LoRA's initial "
                                                        "adapters and dropout masks (seeded per step)"})
    save_every_epoch: bool = field(default=False, metadata={"help": "HF checkpoint in DIR/epoch_{k}"})
    save_steps: int = field(default=500, metadata={"help": "DeepSpeed checkpoint (for --resume) every this many "
                                                           "steps (0: none between), and at each epoch end"})
    save_total_limit: int = field(default=1, metadata={"help": "DeepSpeed checkpoints kept"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep DIR/checkpoints after a finished run "
                                                                    "(optimizer states are large)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last DeepSpeed checkpoint in "
                                                          "DIR/checkpoints",
                                                  "aliases": ["--resume_from_checkpoint"]})
    overwrite: bool = field(default=False, metadata={"help": "replace output made with other settings"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub (untrusted "
                                                                     "otherwise)"})
    peak_tflops: float = field(default=0.0, metadata={"help": "for the MFU estimate; 0 = a table of GPUs, or a "
                                                              "rough CPU figure"})
    bf16: Optional[bool] = field(default=None, metadata={
        "help": "bf16 weights and compute: unset = on GPUs that support it, else fp32 (CPU); --bf16 false: fp32",
        "nargs": "?", "const": True})
    # hidden from --help (argparse.SUPPRESS), still accepted: for tests, stop after this many steps without saving,
    # as a kill would; and the rank the deepspeed launcher passes
    stop_after_steps: int = field(default=0, metadata={"help": argparse.SUPPRESS})
    local_rank: int = field(default=-1, metadata={"help": argparse.SUPPRESS})
    # LoRA (TRL's names). The presets are full fine-tuning, as the papers trained.
    use_peft: bool = field(default=False, metadata={"help": (
        "train LoRA adapters (peft) instead of every parameter, under ZeRO-3 as well. DIR holds the merged model "
        "(evaluate.py and vLLM load it as any checkpoint), DIR/adapter/ the adapter (peft format)")})
    lora_r: int = field(default=16, metadata={"help": "--use_peft: LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "--use_peft: LoRA alpha (the update is scaled by "
                                                          "alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "--use_peft: dropout on the LoRA input"})
    lora_target_modules: Optional[list[str]] = field(default=None, metadata={"help": (
        "--use_peft: module names to adapt, e.g. q_proj,v_proj, or all-linear (default: peft's choice for the "
        "architecture)")})
    # Held-out loss
    eval_data: Optional[str] = field(default=None, metadata={"help": (
        "prepare.py output whose loss is computed like the training loss (same masks and --loss_reduction, over "
        "all of it at once), without gradient, on every rank; logged as eval_loss")})
    eval_ratio: float = field(default=0.0, metadata={"help": (
        "hold out this fraction of --data's questions (seeded; every example of a held-out source_id) as the eval "
        "set instead of --eval_data; they are not trained on")})
    eval_steps: int = field(default=0, metadata={"help": "eval loss every N optimizer steps (0: at each epoch end), "
                                                         "and after the last step"})
    report_to: Literal["none", "tensorboard", "wandb"] = field(
        default="none", metadata={"help": "also log every train_log.jsonl field per step (rank 0), the arguments "
                                          "and data stats as config: tensorboard (event files in "
                                          "DIR/tensorboard[/RUN_NAME]) or wandb (WANDB_PROJECT, default qfft-upft; "
                                          "WANDB_MODE=offline works)"})
    run_name: Optional[str] = field(default=None, metadata={"help": tracking.RUN_NAME_HELP})
    push_to_hub: Optional[str] = field(
        default=None, metadata={"help": "REPO (user/name), or yes with --hub_model_id REPO (TRL): upload the "
                                        "finished checkpoint with a model card from meta.json (HF_TOKEN; HF_ENDPOINT "
                                        "for a private hub)", "nargs": "?", "const": "yes"})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "REPO (user/name) for --push_to_hub yes"})


# ----------------------------------------------------------------------------------------------------------------
def resolve(args: Args) -> Args:
    """Fill hyperparameters left unset from the preset, then BASE."""
    if args.per_device_train_batch_size is not None or args.gradient_accumulation_steps is not None:
        per, accum = (1 if v is None else v for v in (args.per_device_train_batch_size,
                                                      args.gradient_accumulation_steps))
        if per < 1 or accum < 1:
            raise common.DataError("--per_device_train_batch_size and --gradient_accumulation_steps must be >= 1")
        world = int(os.environ.get("WORLD_SIZE", "1"))  # set by deepspeed/torchrun before this process starts
        gbs = per * accum * world
        replaced = f" (replaces {args.global_batch_size})" if args.global_batch_size not in (None, gbs) else ""
        print(f"--global_batch_size {gbs} = per_device_train_batch_size {per} x gradient_accumulation_steps {accum} "
              f"x {world} ranks{replaced}", flush=True)
        args.global_batch_size = gbs
    src = common.paper_setting(Args, "train", args.preset) if args.preset else {}
    for k, v in BASE.items():
        if getattr(args, k) is None:
            setattr(args, k, src.get(k, v))
    if args.global_batch_size < 1 or args.micro_batch_tokens < 2 or args.max_len < 2 or args.epochs < 1:
        raise common.DataError("--global_batch_size, --epochs must be >= 1; --max_len, --micro_batch_tokens >= 2")
    if args.lr_scheduler not in SCHEDULERS:
        raise common.DataError(f"--lr_scheduler {args.lr_scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    checks = [("lr", args.lr > 0, "> 0"), ("warmup_ratio", 0 <= args.warmup_ratio <= 1, "in [0, 1]"),
              ("max_grad_norm", args.max_grad_norm >= 0, ">= 0 (0: no clipping)"),
              ("weight_decay", args.weight_decay >= 0, ">= 0"), ("adam_beta1", 0 <= args.adam_beta1 < 1, "in [0, 1)"),
              ("adam_beta2", 0 <= args.adam_beta2 < 1, "in [0, 1)"), ("adam_eps", args.adam_eps > 0, "> 0"),
              ("max_steps", args.max_steps >= 0, ">= 0"),
              ("save_steps", args.save_steps >= 0, ">= 0 (0: only at epoch ends)"),
              ("save_total_limit", args.save_total_limit >= 1, ">= 1"),
              ("stop_after_steps", args.stop_after_steps >= 0, ">= 0"), ("peak_tflops", args.peak_tflops >= 0, ">= 0")]
    for name, ok, rule in checks:
        if not ok:
            raise common.DataError(f"--{name} must be {rule}, got {getattr(args, name)}")
    if args.attn_implementation in ("packed_varlen", "packed_flex") and not args.packing:
        raise common.DataError(f"--attn_implementation {args.attn_implementation} needs packing (--no_packing pads: "
                               f"use sdpa)")
    if args.use_peft and (args.lora_r < 1 or args.lora_alpha <= 0 or not 0 <= args.lora_dropout < 1):
        raise common.DataError(f"--lora_r must be >= 1, --lora_alpha > 0 and --lora_dropout in [0, 1), got "
                               f"{args.lora_r}, {args.lora_alpha}, {args.lora_dropout}")
    if not 0 <= args.eval_ratio < 1 or args.eval_steps < 0:
        raise common.DataError(f"--eval_ratio must be in [0, 1) and --eval_steps >= 0, got {args.eval_ratio}, "
                               f"{args.eval_steps}")
    if args.eval_ratio and args.eval_data:
        raise common.DataError("--eval_data and --eval_ratio: give one of them")
    return args


@dataclass
class Example:
    ids: np.ndarray  # int32 token ids, prompt then completion
    n_prompt: int  # tokens of the prompt (no loss)

    @property
    def n_trained(self) -> int:
        """Positions whose next-token target is a completion token (the first token of a sequence is never a
        target: nothing precedes it)."""
        return len(self.ids) - max(self.n_prompt, 1)


def load_examples(tok, path: str, max_len: int, keep=None):
    """Tokenize prompt and completion separately, concatenate, cut at max_len. Returns (examples, stats).
    `keep(record)`: only the records it accepts (--eval_ratio's split)."""
    recs = list(common.iter_jsonl(path))
    if not recs:
        raise common.DataError(f"{path}: no records")
    if keep is not None:
        recs = [(n, r) for n, r in recs if keep(r)]
    for lineno, rec in recs:
        for f in ("prompt", "completion"):
            common.require(rec, f, f"{path}:{lineno}")
    examples, by_type, dropped, cut = [], {}, 0, 0
    chunk = 2048
    for i in range(0, len(recs), chunk):
        part = [r for _, r in recs[i:i + chunk]]
        # Prompt and completion tokenized separately, not their concatenation: the loss mask must fall exactly at the
        # boundary prepare.py wrote, and a BPE merge across it would blur which token is the first trained one.
        ps = models.encode(tok, [r["prompt"] for r in part]) if any(r["prompt"] for r in part) else [[]] * len(part)
        cs = models.encode(tok, [r["completion"] for r in part])
        for r, p, c in zip(part, ps, cs):
            p = p if r["prompt"] else []
            ids = (list(p) + list(c))
            cut += len(ids) > max_len
            # Cut at the end, as LLaMA-Factory's cutoff_len and OpenRLHF's max_len do: the prompt survives and the
            # completion loses its tail (prepare.py already cut to the same --max_len, so this is a safety net for other
            # data).
            ex = Example(np.asarray(ids[:max_len], dtype=np.int32), len(p))
            if ex.n_trained <= 0:
                dropped += 1
                continue
            examples.append(ex)
            t = str(r.get("type", "unknown"))
            by_type[t] = by_type.get(t, 0) + 1
    if not examples:
        raise common.DataError(f"{path}: all {len(recs)} examples have no completion tokens after truncation to "
                               f"--max_len {max_len}")
    stats = {"examples": len(examples), "dropped_no_completion_tokens": dropped, "truncated": cut,
             "by_type": by_type, "tokens": int(sum(len(e.ids) for e in examples)),
             "trained_tokens": int(sum(e.n_trained for e in examples))}
    return examples, stats


def example_group(rec: dict) -> str:
    """The question an example comes from (prepare.py's source_id): --eval_ratio holds out whole questions, so no
    held-out question is trained on through another of its responses or a UPFT prefix."""
    key = rec.get("source_id", rec.get("id"))
    return str(key) if key is not None else f"{rec.get('prompt')}\x00{rec.get('completion')}"


def held_out_groups(path: str, ratio: float, seed: int) -> set[str]:
    """round(ratio x questions) seeded questions of `path` (at least 1, never all)."""
    groups = list(dict.fromkeys(example_group(r) for r in common.read_jsonl(path)))
    k = max(1, round(ratio * len(groups)))
    if k >= len(groups):
        raise common.DataError(f"--eval_ratio {ratio}: {path} has {len(groups)} question(s), nothing would be left to "
                               f"train on")
    rng = np.random.default_rng([seed, 0xE7A1])
    return {groups[i] for i in rng.choice(len(groups), size=k, replace=False)}


def load_data(tok, args: Args):
    """(train examples, stats, eval examples or None): --data, and the eval set of --eval_data or --eval_ratio."""
    if not args.eval_ratio:
        examples, stats = load_examples(tok, args.data, args.max_len)
        if not args.eval_data:
            return examples, stats, None
        evals, estats = load_examples(tok, args.eval_data, args.max_len)
    else:
        held = held_out_groups(args.data, args.eval_ratio, args.seed)
        examples, stats = load_examples(tok, args.data, args.max_len, lambda r: example_group(r) not in held)
        evals, estats = load_examples(tok, args.data, args.max_len, lambda r: example_group(r) in held)
        estats["questions"] = len(held)
    stats["eval"] = {k: estats[k] for k in ("examples", "tokens", "trained_tokens", "truncated", "questions")
                     if k in estats}
    return examples, stats, evals


def prepared_by(data: str) -> dict:
    """What prepare.py decided for DATA, read from its DATA.meta.json: `chat_template` (the template text the prompts
    were rendered with) and `max_len`. {} for data that prepare.py did not make (no such sidecar)."""
    p = Path(f"{data}.meta.json")
    if not p.is_file():
        return {}
    meta = common.read_json(p, "metadata")
    made = meta.get("args") if isinstance(meta, dict) else None
    if not isinstance(made, dict) or "mode" not in made or "max_len" not in made:
        return {}  # another stage's sidecar (sample.py's): it decided nothing about training text
    out = {"meta": str(p), "max_len": made["max_len"] if isinstance(made["max_len"], int) else None}
    if "chat_template" in meta:  # None: question-free data, rendered with no template
        out["chat_template"] = meta["chat_template"]
    elif made.get("chat_template"):  # data prepared before prepare.py recorded the text: its --chat_template FILE
        try:
            out["chat_template"] = Path(made["chat_template"]).read_text()
        except OSError:
            print(f"warning: {data} was rendered with the chat template {made['chat_template']}, which cannot be "
                  f"read now: the checkpoint keeps the base model's template", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The data plan: every rank computes the whole plan (cheap, deterministic), so no collective is needed to agree
# on how many micro-batches a step has.
def step_seed(seed: int, step: int, rank: int) -> int:
    """torch's seed for one step on one rank: a function of (seed, step, rank) only, not of the steps before."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    # A fresh permutation per epoch from (seed, epoch), not a generator advanced through the epochs: a run resumed at
    # epoch 3 draws exactly the order the uninterrupted run drew, with no state to save.
    return np.random.default_rng([seed, epoch]).permutation(n)


def split_ranks(idx: list[int], lengths, world: int) -> list[list[int]]:
    """Longest first to the rank with the fewest tokens: balanced work per rank."""
    parts, load = [[] for _ in range(world)], [0] * world
    for i in sorted(idx, key=lambda i: (-lengths[i], i)):
        # Tokens, not examples, balance the ranks: attention and the MLP cost grow with tokens, and under ZeRO-3 every
        # rank waits for the slowest at each collective.
        r = min(range(world), key=lambda r: (load[r], r))
        parts[r].append(i)
        load[r] += lengths[i]
    return parts


def pack(idx: list[int], lengths, budget: int) -> list[list[int]]:
    """First-fit decreasing into micro-batches of <= budget tokens (an example longer than budget goes alone)."""
    bins, room = [], []
    for i in sorted(idx, key=lambda i: (-lengths[i], i)):
        # First-fit decreasing: close to the fewest micro-batches (at most 11/9 of the optimum, plus one),
        # deterministic, and fast for thousands of examples per step; the order of examples inside a micro-batch does
        # not change the loss.
        for b in range(len(bins)):
            if lengths[i] <= room[b]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(budget - lengths[i])
    return bins


def pad_groups(idx: list[int], lengths, budget: int) -> list[list[int]]:
    """--no_packing: consecutive examples while (count x longest) fits the budget."""
    groups, cur, longest = [], [], 0
    for i in idx:
        m = max(longest, lengths[i])
        # Padding costs (count x longest): a group grows while its padded size fits the budget, as a padded baseline
        # with a token budget would batch.
        if cur and (len(cur) + 1) * m > budget:
            groups.append(cur)
            cur, m = [], lengths[i]
        cur.append(i)
        longest = m
    return groups + ([cur] if cur else [])


def token_weights(batch: list[int], examples: list[Example], reduction: str) -> dict[int, float]:
    """Weight of each trained token of each example so that the sum over the global batch is the loss."""
    if reduction == "sample":
        # "sample": each example's mean token loss, averaged over the examples of the global batch, so a long trace and
        # a short answer weigh the same; "token": every trained token of the batch weighs the same. Either way the
        # weights depend on the whole global batch only, never on how it is split into ranks and micro-batches.
        return {i: 1.0 / (examples[i].n_trained * len(batch)) for i in batch}
    total = sum(examples[i].n_trained for i in batch)
    return {i: 1.0 / total for i in batch}


def plan_step(batch: list[int], examples: list[Example], args: Args, world: int, rank: int) -> list[list[int]]:
    """This rank's micro-batches for one optimizer step; all ranks get the same count (empty ones pad)."""
    lengths = {i: len(examples[i].ids) for i in batch}
    group = pack if args.packing else pad_groups
    per_rank = [group(p, lengths, args.micro_batch_tokens) for p in split_ranks(batch, lengths, world)]
    n = max(len(m) for m in per_rank)
    return per_rank[rank] + [[] for _ in range(n - len(per_rank[rank]))]


def collate(micro: list[int], examples: list[Example], weights: dict[int, float], packing: bool, pad_id: int):
    """Tensors for one micro-batch: input_ids, position_ids, targets (next token, -100 = none) and per-token
    loss weights. Packed: one row, segment ids for the block-diagonal mask. An empty micro-batch is a 2-token
    dummy with zero weight (every rank must run the same number of forward/backward passes under ZeRO-3)."""
    import torch
    rows = [(examples[i].ids.astype(np.int64), examples[i].n_prompt, weights[i]) for i in micro] or \
        [(np.array([pad_id, pad_id]), 0, 0.0)]
    tgts, ws = [], []
    for ids, n_prompt, w in rows:
        t = np.full(len(ids), -100, dtype=np.int64)
        t[:-1] = ids[1:]
        # Position j predicts token j + 1: the positions before the last prompt token predict prompt tokens and get no
        # loss; the last prompt position predicts the first completion token and does. With no prompt (QFFT), nothing
        # predicts the first token.
        t[:max(n_prompt, 1) - 1] = -100  # positions predicting a prompt token
        tgts.append(t)
        ws.append(np.where(t != -100, w, 0.0))
    if packing:
        # Packed: one row of the examples back to back, positions restarting at 0 per example (what RoPE needs to treat
        # each as its own sequence) and segment ids that keep attention apart (packing.py).
        out = {"input_ids": np.concatenate([r[0] for r in rows])[None],
               "position_ids": np.concatenate([np.arange(len(r[0])) for r in rows])[None],
               "targets": np.concatenate(tgts)[None], "weights": np.concatenate(ws)[None],
               "segments": np.concatenate([np.full(len(r[0]), k) for k, r in enumerate(rows)])}
    else:
        L = max(len(r[0]) for r in rows)
        padr = lambda a, v: np.concatenate([a, np.full(L - len(a), v, dtype=a.dtype)])  # noqa: E731
        out = {"input_ids": np.stack([padr(r[0], pad_id) for r in rows]),
               "attention_mask": np.stack([padr(np.ones(len(r[0]), dtype=np.int64), 0) for r in rows]),
               "targets": np.stack([padr(t, -100) for t in tgts]), "weights": np.stack([padr(w, 0.0) for w in ws])}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def micro_batch_loss(model, mb: dict, device, attn="sdpa", head: str = "logits"):
    """sum(weight x token cross-entropy) of one micro-batch, computed in fp32 on the completion positions only.
    attn: the attention implementation the model was loaded with (packing.py: how example boundaries reach it;
    a bool means flash_attention_2 varlen or not); head: packing.LOSS_HEADS (the same number, other memory)."""
    if isinstance(attn, bool):
        attn = "flash_attention_2" if attn else "sdpa"
    mb = {k: v.to(device) for k, v in mb.items()}
    targets, weights = mb["targets"], mb["weights"].float()
    if "segments" in mb:  # packed: one row
        # Logits only where a target exists: a 16k-token row of mostly prompt would otherwise compute (and keep for
        # backward) the vocabulary projection of every prompt position.
        keep = (targets[0] != -100).nonzero().squeeze(1)
        kw = {"position_ids": mb["position_ids"], **packing.attention_kwargs(attn, mb["segments"])}
        return packing.head_loss(model, dict(input_ids=mb["input_ids"], logits_to_keep=keep, use_cache=False, **kw),
                                 head, targets[0, keep], weights[0, keep])
    out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False)
    logits, t, w = out.logits.flatten(0, 1), targets.flatten(), weights.flatten()
    return packing.chunked_ce(logits, t.clamp(min=0), w)


# ----------------------------------------------------------------------------------------------------------------
def init_distributed():
    """Works under deepspeed/torchrun (env set) and as a plain `python train.py` (a 1-rank group)."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            # A free port from the OS, on loopback only: a plain `python train.py` must not collide with another run's
            # process group, nor listen on the network.
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(os.environ.get("MASTER_PORT", port)))
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())


def fill_ds_config(path: str, args: Args, world: int, bf16: bool, hidden: int) -> dict:
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise common.DataError(f"{path}: cannot read the DeepSpeed config ({e})") from None
    if not isinstance(cfg, dict):
        raise common.DataError(f"{path}: the DeepSpeed config must be a JSON object")
    auto = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world,
            "gradient_clipping": args.max_grad_norm, "enabled": bf16, "lr": args.lr,
            "betas": [args.adam_beta1, args.adam_beta2], "eps": args.adam_eps, "weight_decay": args.weight_decay,
            "reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden}

    def fill(d, where):
        for k, v in d.items():
            if isinstance(v, dict):
                fill(v, f"{where}.{k}")
            elif v == "auto":
                if k not in auto:
                    raise common.DataError(f"{path}: {where}.{k} = 'auto' has no value train.py can fill")
                d[k] = auto[k]
    fill(cfg, "config")
    # One micro-batch per backward; train.py owns the accumulation boundary (variable micro-batches per step).
    cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"] = 1, 1
    cfg["train_batch_size"] = world
    zero = cfg.get("zero_optimization")
    # ZeRO-3 only: save_hf gathers the 16-bit weights with the stage-3 call, and the model is built under
    # deepspeed.zero.Init; stages 1-2 would need other code for both.
    if not isinstance(zero, dict) or zero.get("stage") != 3:
        raise common.DataError(f"{path}: train.py expects ZeRO stage 3 (zero_optimization.stage)")
    return cfg


def peak_flops(args: Args, device) -> float:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if device.type == "cuda":
        import torch
        name = torch.cuda.get_device_name(device)
        table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}
        return next((v for k, v in table.items() if k in name), 312e12)
    return (os.cpu_count() or 1) * 2.5e9 * 32  # rough: AVX2 fp32, 2 FMA units x 8 lanes x 2 flops per cycle


def save_hf(engine, tok, args: Args, out_dir: Path, rank: int):
    """Gather the ZeRO-3 shards into one state dict on rank 0 and write a Hugging Face checkpoint."""
    from transformers import GenerationConfig
    sd = engine._zero3_consolidated_16bit_state_dict()  # collective: all ranks
    if rank == 0:
        # Written to DIR.tmp and moved in file by file: a kill during the (minutes long) save of a large model never
        # leaves a half-written safetensors file that vLLM would try to load.
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = engine.module
        if args.use_peft:  # the adapter beside the merged weights: evaluate.py and vLLM load DIR as any model
            model.save_pretrained(tmp / "adapter", state_dict=sd)
            sd = merge_lora(sd, args.lora_alpha / args.lora_r)
            model = model.get_base_model()
        # Training ran with use_cache False (no KV cache under gradient checkpointing); the saved config is for
        # inference.
        model.config.use_cache = True
        model.save_pretrained(tmp, state_dict=sd)
        tok.save_pretrained(tmp)
        try:
            # The base model's generation config (sampling defaults, EOS) carries over: sample.py and evaluate.py read
            # top-p/top-k from it, so a trained model samples as its base did unless a flag says otherwise.
            gen = GenerationConfig.from_pretrained(args.model)
        except Exception:
            gen = GenerationConfig.from_model_config(model.config)
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else \
            [gen.eos_token_id] if gen.eos_token_id is not None else []
        eot = models.end_of_turn(tok).strip()  # the chat template's end of turn ends generation (<|im_end|>)
        # The template's end of turn must stop generation: a model trained on "<|im_end|>" after each answer would
        # otherwise run on into a new turn whenever eos_token is another token (base models: <|endoftext|>).
        for t in (tok.eos_token, eot):
            tid = tok.convert_tokens_to_ids(t) if t else None
            if tid is not None and tid != tok.unk_token_id and tid not in eos:
                eos.append(tid)
        gen.eos_token_id = eos
        if gen.pad_token_id is None and tok.pad_token_id is not None:
            gen.pad_token_id = tok.pad_token_id
        gen.save_pretrained(tmp)
        # move the files into place (out_dir may hold train_log.jsonl, meta.json, checkpoints/)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            if f.is_dir():  # adapter/: a directory is not replaced by os.replace while it has files
                shutil.rmtree(out_dir / f.name, ignore_errors=True)
            os.replace(f, out_dir / f.name)
        tmp.rmdir()
    del sd


def plot_loss(log_path: Path, png: Path) -> Optional[Path]:
    """DIR/train_loss.png: loss and learning rate per step, from train_log.jsonl (LLaMA-Factory's plot_loss)."""
    recs = common.read_jsonl(log_path) if log_path.exists() else []
    if not recs:
        return None
    try:
        import matplotlib
    except ImportError:
        print(f"no {png.name}: matplotlib is not installed (pip install matplotlib)", flush=True)
        return None
    # Agg: no display on a GPU node or in CI; the figure is only written to a file.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in recs]
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    a.plot(steps, [r["loss"] for r in recs], lw=1, label="train")
    ev = [(r["step"], r["eval_loss"]) for r in recs if r.get("eval_loss") is not None]
    if ev:
        a.plot(*zip(*ev), marker="o", ms=3, lw=1, color="tab:green", label="eval")
        a.legend(frameon=False)
    a.set_ylabel("loss")
    a.set_title(f"training loss: {png.parent.name}")
    b.plot(steps, [r["lr"] for r in recs], lw=1, color="tab:orange")
    b.set_ylabel("learning rate")
    b.set_xlabel("step")
    fig.tight_layout()
    common.atomic_write(png, lambda f: fig.savefig(f, format="png"), binary=True)
    plt.close(fig)
    return png


def model_card(meta: dict, repo: str) -> str:
    """README.md for the hub: base model, preset and hyperparameters, data stats, the papers."""
    a, data = meta.get("args", {}), meta.get("data", {})
    hp = {k: a.get(k) for k in BASE}
    return (f"---\nbase_model: {a.get('model')}\nlibrary_name: transformers\ntags: [qfft-upft, sft]\n---\n\n"
            f"# {repo}\n\n{'LoRA (merged)' if a.get('use_peft') else 'Full-parameter'} SFT of `{a.get('model')}` with "
            f"[qfft-upft](https://github.com/) train.py (preset `{a.get('preset') or 'none'}`, git "
            f"`{meta.get('git_commit')}`), on `{a.get('data')}`.\n\n"
            "| hyperparameter | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in hp.items())
            + f"| loss_reduction | {a.get('loss_reduction')} |\n| steps | {meta.get('steps')} |\n\n"
            f"Training data: {data.get('examples')} examples, {data.get('tokens')} tokens "
            f"({data.get('trained_tokens')} trained), types {data.get('by_type')}.\n\n"
            + common.PAPERS_BIBTEX)


@dataclass
class Plan:
    """What is decided before any process group or model exists: paths, settings, resume or not."""
    out: Path
    ckdir: Path
    meta_path: Path
    log_path: Path
    settings: dict
    has_ck: bool


def plan_run(args: Args) -> Optional[Plan]:
    """Validate everything cheap (DeepSpeed config, model path, output dir), take the output lock, fingerprint the
    inputs and decide resume / refuse / start. None when this output is already trained with these settings."""
    fill_ds_config(args.deepspeed, args, 1, False, 1)  # a bad DeepSpeed config fails now, not after the model loads
    models.check_model_path(args.model)
    out = Path(args.output_dir)
    common.check_writable(out, "--output_dir", folder=True)
    ckdir = out / "checkpoints"
    meta_path, log_path = out / "meta.json", out / "train_log.jsonl"
    # One run per output dir: the global rank 0 holds the lock (a second launch's rank 0 is refused at once and
    # its launcher stops the other ranks); the other ranks of this run follow their rank 0.
    if int(os.environ.get("RANK", "0")) == 0:
        runs.lock_output(out, f"training output {out}")
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k not in NOT_SETTINGS}
    # flags newer than some outputs stay out at their defaults, so that those outputs still resume / are "done"
    for k in LORA_ARGS if not args.use_peft else ():
        settings.pop(k)
    if not args.eval_ratio:
        settings.pop("eval_ratio")
    if args.eval_data and not Path(args.eval_data).is_file():
        raise common.DataError(f"--eval_data {args.eval_data}: file not found")
    # the train data and a local base model, fingerprinted: a file rewritten or a model re-trained at the same
    # path is not "already trained" and is not resumed
    if not Path(args.data).is_file():
        raise common.DataError(f"{args.data}: file not found")
    settings.update(data_fingerprint=runs.file_fingerprint(args.data),
                    model_fingerprint=runs.model_fingerprint(args.model))
    # Every rank reads the same files; rank 0 writes. A meta.json with neither a checkpoint nor a finished model is
    # left by a run that failed before its first save: it protects nothing and does not block a corrected command.
    made = (ckdir / "latest").exists() or (out / "config.json").exists()
    meta_old = runs.claim_output(meta_path, settings, args.overwrite, f"training output {out}", made=made) or {}
    has_ck = (ckdir / "latest").exists() and not args.overwrite
    if meta_old.get("finished") and not args.overwrite:
        print(f"{out}: already trained with these settings (pass --overwrite to train again)")
        return None
    # A checkpoint without --resume is refused rather than overwritten or resumed silently: restarting would throw away
    # hours, resuming a run the user meant to restart would mix two runs.
    if has_ck and not args.resume:
        raise common.DataError(f"{out} holds a training checkpoint: pass --resume to continue it, or --overwrite")
    tracking.Tracker.check(args.report_to)
    if args.push_to_hub:
        common.check_push(args.push_to_hub)
    return Plan(out, ckdir, meta_path, log_path, settings, has_ck)


def setup_device(world: int):
    """(accelerator, on_gpu, device) for this rank; on CPU the cores are shared between the local ranks."""
    import torch
    from deepspeed.accelerator import get_accelerator
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    acc = get_accelerator()
    on_gpu = acc.device_name() == "cuda"
    device = torch.device(acc.device_name(local_rank) if on_gpu else "cpu")
    if on_gpu:
        acc.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks share the cores: each takes its share, or N ranks x all cores threads would oversubscribe the
        # machine and run slower than one rank.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return acc, on_gpu, device


def load_model(args: Args, world: int, on_gpu: bool, bf16: bool, device):
    """The model, constructed under ZeRO-3 (HfDeepSpeedConfig alive before from_pretrained -> deepspeed.zero.Init),
    so no rank ever holds the whole model. Returns (model, ds_config, attention, loss head, hidden size)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig
    mcfg = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    hidden = getattr(mcfg, "hidden_size", None) or getattr(mcfg.get_text_config(), "hidden_size", 1024)
    ds_config = fill_ds_config(args.deepspeed, args, world, bf16, hidden)
    try:  # packing.py: which attention keeps packed examples apart here, and which loss head
        attn = packing.choose_attention(args.attn_implementation, on_gpu, args.packing, device)
        head = packing.choose_loss_head(args.loss_head, on_gpu, device) if args.packing else "logits"
    except ValueError as e:
        raise common.DataError(str(e)) from None
    packing.register()
    dschf = HfDeepSpeedConfig(ds_config)  # noqa: F841  (must stay alive while loading)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                 attn_implementation=attn, trust_remote_code=args.trust_remote_code)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        # Non-reentrant checkpointing, as PyTorch recommends: the reentrant variant takes no keyword arguments
        # (position_ids, the packed attention kwargs) and needs an input that requires grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.use_peft:
        # LoRA's A matrices start random: seeded, so that the same command trains the same adapters (every rank draws
        # the same values, and a resumed run compares with an uninterrupted one)
        torch.manual_seed(args.seed)
        model = add_lora(model, args)
    return model, ds_config, attn, head, hidden


def add_lora(model, args: Args):
    """LoRA adapters (peft) on the model built under ZeRO-3: the base weights are frozen (still partitioned), the
    adapters are new small parameters that deepspeed.initialize partitions. Plain Linear LoRA only: that is what
    save_hf merges."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer, Linear
    targets = common.comma_list(args.lora_target_modules) or None
    cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, bias="none",
                     task_type="CAUSAL_LM", target_modules="all-linear" if targets == ["all-linear"] else targets)
    try:
        model = get_peft_model(model, cfg)
    except ValueError as e:  # no module matched, or an unsupported one
        raise common.DataError(f"--use_peft: {str(e).splitlines()[0]}") from None
    bad = sorted({type(m).__name__ for m in model.modules() if isinstance(m, LoraLayer)
                  and (type(m) is not Linear or m.fan_in_fan_out)})
    if bad:
        raise common.DataError(f"--lora_target_modules: only nn.Linear layers can be adapted and merged here, got "
                               f"{', '.join(bad)}")
    return model


def merge_lora(sd: dict, scaling: float) -> dict:
    """The plain model's state dict from a peft LoRA model's (ZeRO-3's consolidated one): W + scaling * B @ A for
    each adapted Linear (peft's merge for one 'default' adapter; computed in fp32, stored in W's dtype), peft's key
    prefixes removed, the adapters dropped."""
    out = {}
    for k, v in sd.items():
        if ".lora_A." in k or ".lora_B." in k:
            continue
        name = k.removeprefix("base_model.model.")
        if ".base_layer." in k:
            stem = k[:k.index(".base_layer.")]
            name = name.replace(".base_layer.", ".")
            if k.endswith(".weight"):
                a, b = sd[f"{stem}.lora_A.default.weight"].float(), sd[f"{stem}.lora_B.default.weight"].float()
                v = (v.float() + scaling * (b @ a)).to(v.dtype)
        out[name] = v
    return out


def make_engine(args: Args, model, ds_config: dict, total: int, warmup: int):
    """DeepSpeed engine with AdamW (no weight decay on biases and norm weights) and the learning-rate schedule."""
    import deepspeed
    from transformers import get_scheduler
    decay, no_decay, seen = [], [], set()
    for _, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:  # tied embeddings; frozen base weights (--use_peft)
                continue
            seen.add(id(p))
            # No weight decay on biases and norm weights, as transformers' Trainer (and so LLaMA-Factory) does: decaying
            # a norm's scale towards 0 shrinks activations, not complexity.
            (no_decay if pname == "bias" or "norm" in type(mod).__name__.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def sched(opt):
        return get_scheduler(args.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=total)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[g for g in groups if g["params"]],
                                      config=ds_config, lr_scheduler=sched)
    return engine


def train_step(engine, micro: list[list[int]], examples: list[Example], weights: dict, args: Args, pad_id: int,
               device, attn: str, head: str, world: int) -> tuple[float, float, float]:
    """One optimizer step over this rank's micro-batches: (global loss, tokens, sum of squared lengths) summed
    over ranks. The step is not applied when the loss is not finite (the caller stops)."""
    import torch
    import torch.distributed as dist
    local = torch.zeros(3, dtype=torch.float64)  # loss, tokens, attention flops
    engine.train()
    for k, mb in enumerate(micro):
        # The number of micro-batches varies per step (packing), so train.py, not DeepSpeed's fixed
        # gradient_accumulation_steps, says which backward ends the step: DeepSpeed reduces and applies gradients only
        # then.
        engine.set_gradient_accumulation_boundary(k == len(micro) - 1)
        loss = micro_batch_loss(engine, collate(mb, examples, weights, args.packing, pad_id), device, attn, head)
        # DeepSpeed averages gradients over ranks: scale by world so the result is the global-batch loss
        engine.backward(loss * world)
        local[0] += loss.item()
        local[1] += sum(len(examples[i].ids) for i in mb)
        local[2] += sum(len(examples[i].ids) ** 2 for i in mb)
    tot = local.to(device)
    dist.all_reduce(tot)
    return tuple(tot.tolist())


def eval_loss(engine, examples: list[Example], args: Args, pad_id: int, device, attn: str, head: str, world: int,
              rank: int) -> float:
    """The held-out loss, computed as the training loss of one global batch holding every eval example: the same
    collate (masks), token weights (--loss_reduction) and loss head, in eval mode and without gradient. Every rank
    takes its share and runs the same number of forward passes (ZeRO-3 gathers parameters collectively); the
    weighted sums are added over ranks."""
    import torch
    import torch.distributed as dist
    idx = list(range(len(examples)))
    weights = token_weights(idx, examples, args.loss_reduction)
    total = torch.zeros(1, dtype=torch.float64)
    engine.eval()
    with torch.no_grad():
        for mb in plan_step(idx, examples, args, world, rank):
            total += micro_batch_loss(engine, collate(mb, examples, weights, args.packing, pad_id), device, attn,
                                      head).item()
    engine.train()
    total = total.to(device)
    dist.all_reduce(total)
    return float(total.item())


def finish(args: Args, plan: Plan, engine, tok, rank: int, total: int, last_saved: int, tracker, log) -> None:
    """The final HF checkpoint, meta.json marked finished, the loss curve, and the optional hub upload."""
    import torch.distributed as dist
    save_hf(engine, tok, args, plan.out, rank)
    dist.barrier()
    if rank != 0:
        return
    if not args.keep_checkpoints:
        # The DeepSpeed checkpoint (fp32 weights and Adam states: several times the model's size) only served --resume;
        # a finished run keeps the HF model.
        shutil.rmtree(plan.ckdir, ignore_errors=True)
    meta = json.loads(plan.meta_path.read_text())
    meta.update(finished=True, steps=total, last_checkpoint_step=last_saved)
    common.write_json(plan.meta_path, meta)
    tracker.close()
    png = plot_loss(plan.log_path, plan.out / "train_loss.png")
    log(f"done: {total} steps; model in {plan.out}, log in {plan.log_path}, curve in {png}")
    if args.push_to_hub:
        common.push_to_hub(args.push_to_hub, plan.out, model_card(meta, args.push_to_hub), repo_type="model",
                           ignore=["checkpoints/**", "epoch_*/**", "tensorboard/**", "wandb/**"])


def main():
    warnings.filterwarnings("ignore", message=r".*is deprecated. Please use `torch.distributed")
    args = common.parse_args(Args, __doc__)
    runs.exit_with_launcher()  # under deepspeed/torchrun: this rank dies with its launcher, even on kill -9
    prepared = prepared_by(args.data)
    # prepare.py cut (or dropped) its examples at its --max_len: training at the same length keeps them as made,
    # so the data's value comes before the preset's
    max_len_from = "--max_len" if args.max_len is not None else None
    if args.max_len is None and prepared.get("max_len"):
        args.max_len, max_len_from = prepared["max_len"], prepared["meta"]
    args = resolve(args)
    plan = plan_run(args)  # everything that can be refused, before any process group or model
    if plan is None:
        return
    out, ckdir, meta_path, log_path = plan.out, plan.ckdir, plan.meta_path, plan.log_path

    # Data first: bad input fails fast, before any process group or model
    tok = models.load_tokenizer(args.model, args.trust_remote_code)
    # The checkpoint carries the chat template its training data was rendered with (save_hf saves `tok`), so that
    # apply_chat_template on the trained model (vLLM, evaluate.py) renders prompts exactly as training saw them,
    # with no --chat_template to repeat; its end of turn also becomes a stop token (save_hf).
    template_from = None
    if prepared.get("chat_template") is not None and prepared["chat_template"] != tok.chat_template:
        tok.chat_template, template_from = prepared["chat_template"], prepared["meta"]
    examples, stats, evals = load_data(tok, args)

    init_distributed()
    import torch
    import torch.distributed as dist
    rank, world = dist.get_rank(), dist.get_world_size()
    acc, on_gpu, device = setup_device(world)
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    if rank == 0:
        if args.overwrite:
            shutil.rmtree(ckdir, ignore_errors=True)
            log_path.unlink(missing_ok=True)
        hp = {k: getattr(args, k) for k in BASE}
        log(f"preset {args.preset or 'none'}: " + ", ".join(f"{k}={v}" for k, v in hp.items())
            + f", loss_reduction={args.loss_reduction}, packing={args.packing}, world_size={world}")
        if max_len_from != "--max_len":
            log(f"max_len {args.max_len}: from {max_len_from or ('the preset' if args.preset else 'the default')}")
        if template_from:
            log(f"chat template: the one the data was rendered with ({template_from}), not {args.model}'s own; "
                f"the checkpoint keeps it")
    if stats["dropped_no_completion_tokens"]:
        log(f"dropped {stats['dropped_no_completion_tokens']} examples with no completion tokens after truncation")
    log(f"{stats['examples']} examples, {stats['tokens']} tokens ({stats['trained_tokens']} trained), "
        f"{stats['truncated']} cut at --max_len {args.max_len}, types {stats['by_type']}"
        + (f"; eval set {stats['eval']['examples']} examples" if evals else ""))
    if args.use_peft and args.preset:
        log(f"note: --preset {args.preset} is the paper's full fine-tuning; with --use_peft only LoRA adapters train "
            f"(its lr was tuned for full fine-tuning)")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    # bf16 on GPU as both papers' trainers; fp32 on CPU, where DeepSpeed's CPU path and the tests' exact comparisons (1
    # process == 2 processes) need it.
    bf16 = on_gpu and acc.is_bf16_supported()
    if args.bf16 is not None:  # TRL's --bf16: asked for explicitly
        if args.bf16 and not bf16:
            raise common.DataError("--bf16: this device cannot train in bf16 (on CPU training runs in fp32; drop "
                                   "the flag)")
        bf16 = args.bf16
    model, ds_config, attn, head, hidden = load_model(args, world, on_gpu, bf16, device)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    if args.use_peft:
        n_train = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
        log(f"LoRA r={args.lora_r} alpha={args.lora_alpha} dropout={args.lora_dropout}: {n_train / 1e6:.2f}M "
            f"trainable parameters of {n_params / 1e6:.1f}M")
    n_layers = getattr(model.config.get_text_config(), "num_hidden_layers", 0)

    # Data plan and schedule: step s takes the next global batch of a seeded per-epoch permutation
    n, gbs = len(examples), args.global_batch_size
    steps_per_epoch = math.ceil(n / gbs)
    total = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.epochs
    # ceil, as transformers' get_warmup_steps: a warmup ratio of 0.03 on 10 steps is one warmup step, not zero.
    warmup = math.ceil(args.warmup_ratio * total)

    def batch_of(step: int) -> tuple[int, list[int]]:
        epoch, s = divmod(step, steps_per_epoch)
        return epoch, [int(i) for i in epoch_order(n, args.seed, epoch)[s * gbs:(s + 1) * gbs]]

    engine = make_engine(args, model, ds_config, total, warmup)
    log(f"model {args.model}: {n_params / 1e6:.1f}M parameters, attention {attn}, loss head {head}, "
        f"{'bf16' if bf16 else 'fp32'}, {total} steps ({steps_per_epoch} per epoch), warmup {warmup}")

    start = 0
    if args.resume and plan.has_ck:
        path, client = engine.load_checkpoint(str(ckdir))
        if path is None:
            raise common.DataError(f"{ckdir}: could not load the DeepSpeed checkpoint")
        start = int(client["step"])
        log(f"resumed from {path} at step {start}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        common.write_json(meta_path, runs.run_info(args, settings=plan.settings, data=stats, finished=False,
                                                     chat_template_from=template_from or args.model,
                                                     world_size=world, versions=runs.versions(
                                                         "torch", "transformers", "deepspeed")))
        if log_path.exists():  # drop lines of steps that a kill lost
            kept = [r for r in common.read_jsonl(log_path) if r["step"] <= start] if start else []
            common.write_jsonl(log_path, kept)
    tracker = tracking.Tracker(args.report_to if rank == 0 else "none", out,
                               {"args": dataclasses.asdict(args), "data": stats}, resume=start > 0, name=args.run_name)

    def save_ds(step: int):
        engine.save_checkpoint(str(ckdir), tag=f"step_{step}", client_state={"step": step})
        dist.barrier()
        if rank == 0:
            tags = sorted((p for p in ckdir.glob("step_*") if p.is_dir()), key=lambda p: int(p.name[5:]))
            for p in tags[:-max(1, args.save_total_limit)]:
                shutil.rmtree(p, ignore_errors=True)

    from tqdm import tqdm
    bar = tqdm(total=total, initial=start, desc="train", disable=rank != 0, dynamic_ncols=True)
    peak = peak_flops(args, device)
    last_saved = start
    for step in range(start, total):
        if args.stop_after_steps and step >= args.stop_after_steps:
            log(f"stopping after step {step} (--stop_after_steps), as a kill would")
            tracker.close()
            return
        epoch, batch = batch_of(step)
        weights = token_weights(batch, examples, args.loss_reduction)
        micro = plan_step(batch, examples, args, world, rank)
        # Dropout (--lora_dropout, a model's own) draws from torch's RNG, which a DeepSpeed checkpoint does not keep:
        # seeded per (seed, step, rank), step s draws the same masks whether or not the run was resumed before it.
        torch.manual_seed(step_seed(args.seed, step, rank))
        t0 = time.perf_counter()
        step_loss, tokens, attn_sq = train_step(engine, micro, examples, weights, args, pad_id, device, attn, head,
                                                world)
        # Checked before engine.step(): one NaN update would poison every weight, and the last checkpoint is still good.
        if not math.isfinite(step_loss):
            bar.close()
            good = (ckdir / "latest").read_text().strip() if (ckdir / "latest").exists() else "none"
            raise common.DataError(f"non-finite loss ({step_loss}) at step {step + 1} (epoch {epoch + 1}); stopped "
                                   f"without updating; last good checkpoint: {ckdir}/{good} (lower --lr and --resume)")
        engine.step()
        if on_gpu:
            acc.synchronize()
        dt = time.perf_counter() - t0
        gn = engine.get_global_grad_norm()
        end_of_epoch = (step + 1) % steps_per_epoch == 0 or step + 1 == total
        do_eval = evals is not None and (step + 1 == total or (
            (step + 1) % args.eval_steps == 0 if args.eval_steps else end_of_epoch))
        ev = eval_loss(engine, evals, args, pad_id, device, attn, head, world, rank) if do_eval else None
        flops = 6 * n_params * tokens + 6 * n_layers * hidden * attn_sq  # causal attention: half of 12*L*h*T^2
        rec = {"step": step + 1, "epoch": round(epoch + ((step % steps_per_epoch) * gbs + len(batch)) / n, 4),
               "loss": step_loss,
               "lr": engine.get_lr()[0], "grad_norm": None if gn is None else float(gn), "examples": len(batch),
               "micro_batches": len(micro), "tokens": int(tokens), "tokens_per_s": tokens / dt,
               "mfu": flops / dt / (peak * (world if on_gpu else 1)), "time_s": dt,  # CPU: one machine's peak
               "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None,
               **({"eval_loss": ev} if do_eval else {})}  # after this step's update
        if rank == 0:
            common.append_jsonl(log_path, [rec])
            tracker.log(rec)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens / dt:.0f}", mfu=f"{rec['mfu']:.1%}")
            bar.update(1)
        if end_of_epoch and args.save_every_epoch:
            save_hf(engine, tok, args, out / f"epoch_{(step + 1 + steps_per_epoch - 1) // steps_per_epoch}", rank)
        # A DeepSpeed checkpoint every --save_steps and at each epoch end but the last (the final HF save covers that):
        # --resume then loses at most save_steps steps.
        if (args.save_steps and (step + 1) % args.save_steps == 0) or (end_of_epoch and step + 1 < total):
            save_ds(step + 1)
            last_saved = step + 1
    bar.close()
    finish(args, plan, engine, tok, rank, total, last_saved, tracker, log)


if __name__ == "__main__":
    common.run_main(main)
