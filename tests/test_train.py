"""train.py: labels on completion tokens only, packing == separate passes, the data plan, loss reduction across
accumulation and ranks, resume, and a ZeRO-3 run of the real tiny model whose checkpoint vLLM loads."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script

import common
import models
import packing
import tracking
import train

DS_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
WORDS = "the cat sat on a mat and then we add two plus three to get five wait let me check again".split()


def write_data(path, tok, n=16, seed=0, long=40):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))
        prompt = models.render_prompt(tok, q, None) if i % 3 else ""  # every third: question-free (QFFT)
        comp = " ".join(rng.choice(WORDS, size=int(rng.integers(2, long)))) + models.end_of_turn(tok)
        recs.append({"id": str(i), "type": "sft" if prompt else "qfft", "prompt": prompt, "completion": comp})
    common.write_jsonl(path, recs)
    return recs


def args_for(**kw):
    a = train.Args(model="m", data="d", output_dir="o", **kw)
    return train.resolve(a)


# ------------------------------------------------------------------------------------------------ unit tests
def test_labels_are_exactly_the_completion_tokens(tmp_path, tokenizer):
    prompt = models.render_prompt(tokenizer, "What is 2+3?", models.EVAL_SYSTEM_PROMPT)
    completion = "2+3 = 5, so \\boxed{5}." + models.end_of_turn(tokenizer)
    common.write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "type": "sft", "prompt": prompt, "completion": completion},
                                              {"id": "b", "type": "qfft", "prompt": "", "completion": completion}])
    examples, stats = train.load_examples(tokenizer, str(tmp_path / "d.jsonl"), max_len=4096)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert examples[0].ids.tolist() == p_ids + c_ids and examples[0].n_prompt == len(p_ids)
    assert c_ids[-2] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # the end of turn is trained
    w = train.token_weights([0, 1], examples, "sample")
    for packed in (True, False):
        mb = train.collate([0, 1], examples, w, packed, tokenizer.pad_token_id)
        t = mb["targets"].flatten()
        tgt = t[t != -100].tolist()
        # example a: every completion token; example b (no prompt): all but the first, which nothing precedes
        assert tgt == c_ids + c_ids[1:]
        # weights: each example's tokens sum to 1/2 (sample reduction over 2 examples)
        assert mb["weights"].sum().item() == pytest.approx(1.0)
    assert stats["trained_tokens"] == len(c_ids) + len(c_ids) - 1


def test_truncation_drops_and_counts(tmp_path, tokenizer):
    prompt = models.render_prompt(tokenizer, "a long question " * 10, None)
    n_p = len(models.encode(tokenizer, [prompt])[0])
    common.write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": prompt, "completion": "yes<|im_end|>"},
                                              {"id": "b", "prompt": "", "completion": "one two three"}])
    ex, stats = train.load_examples(tokenizer, str(tmp_path / "d.jsonl"), max_len=n_p)
    assert stats["dropped_no_completion_tokens"] == 1 and len(ex) == 1 and stats["truncated"] == 1
    ex, stats = train.load_examples(tokenizer, str(tmp_path / "d.jsonl"), max_len=n_p + 1)
    assert stats["dropped_no_completion_tokens"] == 0 and ex[0].n_trained == 1
    with pytest.raises(common.DataError, match="no completion tokens"):
        train.load_examples(tokenizer, str(tmp_path / "d.jsonl"), max_len=1)
    common.write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "x"}])
    with pytest.raises(common.DataError, match=r"bad.jsonl:1: missing field 'completion'"):
        train.load_examples(tokenizer, str(tmp_path / "bad.jsonl"), max_len=10)


def test_prepared_by_reads_what_prepare_decided(tmp_path, capsys):
    """train.py takes the chat template and --max_len from prepare.py's DATA.meta.json; other sidecars decide
    nothing; data prepared before the template text was recorded falls back to its --chat_template file."""
    d = tmp_path / "d.jsonl"
    meta = tmp_path / "d.jsonl.meta.json"
    assert train.prepared_by(str(d)) == {}
    common.write_json(meta, {"args": {"mode": "sft", "max_len": 300, "chat_template": None}, "chat_template": "T"})
    assert train.prepared_by(str(d)) == {"meta": str(meta), "max_len": 300, "chat_template": "T"}
    common.write_json(meta, {"args": {"mode": "qfft", "max_len": 300}, "chat_template": None})  # question-free
    assert train.prepared_by(str(d)) == {"meta": str(meta), "max_len": 300, "chat_template": None}
    common.write_json(meta, {"args": {"model": "m", "max_tokens": 5}, "settings": {}})  # sample.py's
    assert train.prepared_by(str(d)) == {}
    f = tmp_path / "t.jinja"
    f.write_text("F")
    common.write_json(meta, {"args": {"mode": "sft", "max_len": 9, "chat_template": str(f)}})
    assert train.prepared_by(str(d)) == {"meta": str(meta), "max_len": 9, "chat_template": "F"}
    f.unlink()
    assert train.prepared_by(str(d)) == {"meta": str(meta), "max_len": 9}
    assert f"rendered with the chat template {f}, which cannot be read now" in capsys.readouterr().err


def test_bad_input_exits_2(tmp_path, random_qwen2):
    (tmp_path / "empty.jsonl").write_text("")
    p = run_script("train.py", "--model", random_qwen2, "--data", tmp_path / "empty.jsonl", "--output_dir",
                   tmp_path / "o", env=DS_ENV, check=False, timeout=120)
    assert p.returncode == 2 and "no records" in p.stderr and "Traceback" not in p.stderr


def test_presets_and_overrides():
    a = args_for(preset="upft", lr=2e-6, epochs=3)
    assert (a.lr, a.epochs, a.adam_beta2, a.global_batch_size, a.lr_scheduler, a.max_len) == \
        (2e-6, 3, 0.95, 64, "constant_with_warmup", 4096)
    q = args_for(preset="qfft")
    assert (q.lr, q.epochs, q.global_batch_size, q.lr_scheduler, q.warmup_ratio, q.weight_decay, q.max_len) == \
        (1e-5, 6, 8, "cosine", 0.1, 1e-4, 16384)
    # an unknown --preset is refused by the parser (Literal choices): tests/test_cli.py


@pytest.mark.parametrize("cfg", ["configs/ds_z3.json", "configs/ds_z3_offload.json"])
def test_ds_configs_fill(cfg):
    a = args_for(preset="upft")
    c = train.fill_ds_config(str(ROOT / cfg), a, world=8, bf16=True, hidden=64)
    assert "auto" not in json.dumps(c)
    assert c["zero_optimization"]["stage"] == 3 and c["bf16"]["enabled"] is True
    assert c["optimizer"]["params"]["betas"] == [0.9, 0.95] and c["gradient_clipping"] == 1.0
    assert c["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_plan_covers_each_example_once_and_weights_normalize(reduction):
    rng = np.random.default_rng(1)
    examples = [train.Example(np.zeros(int(n), np.int32), int(p)) for n, p in
                zip(rng.integers(5, 300, 50), rng.integers(0, 5, 50))]
    batch = list(range(37))
    a = args_for(micro_batch_tokens=400, loss_reduction=reduction)
    plans = [train.plan_step(batch, examples, a, 3, r) for r in range(3)]
    assert len({len(p) for p in plans}) == 1  # same number of micro-batches on every rank (ZeRO-3 collectives)
    seen = sorted(i for p in plans for mb in p for i in mb)
    assert seen == batch
    assert all(sum(len(examples[i].ids) for i in mb) <= 400 for p in plans for mb in p)
    w = train.token_weights(batch, examples, reduction)
    assert sum(w[i] * examples[i].n_trained for i in batch) == pytest.approx(1.0)
    if reduction == "token":
        assert len(set(w.values())) == 1
    a.packing = False
    assert sorted(i for mb in train.plan_step(batch, examples, a, 1, 0) for i in mb) == batch


@pytest.mark.parametrize("which", ["random_qwen2", "random_llama"])
def test_packed_loss_equals_separate_and_padded(which, request, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM
    path = request.getfixturevalue(which)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    write_data(tmp_path / "d.jsonl", tokenizer, n=4, seed=3)
    examples, _ = train.load_examples(tokenizer, str(tmp_path / "d.jsonl"), 4096)
    idx = list(range(len(examples)))
    pad = tokenizer.pad_token_id

    def per_example(packing, varlen=False):
        out = []
        for j in idx:  # weight only example j: its mean token loss
            w = {i: (1.0 / examples[i].n_trained if i == j else 0.0) for i in idx}
            with torch.no_grad():
                out.append(train.micro_batch_loss(model, train.collate(idx, examples, w, packing, pad), "cpu",
                                                  varlen).item())
        return np.array(out)

    separate = []
    for j in idx:
        with torch.no_grad():
            separate.append(train.micro_batch_loss(
                model, train.collate([j], examples, {j: 1.0 / examples[j].n_trained}, True, pad), "cpu",
                False).item())
    separate = np.array(separate)
    assert np.abs(per_example(True) - separate).max() < 1e-4
    assert np.abs(per_example(False) - separate).max() < 1e-4
    # a plain causal mask over the packed row lets attention cross examples: the test can tell
    real = packing.dense_block_causal_mask
    try:
        packing.dense_block_causal_mask = lambda seg: real(torch.zeros_like(seg))
        assert np.abs(per_example(True) - separate).max() > 1e-3
    finally:
        packing.dense_block_causal_mask = real


# ------------------------------------------------------------------------------------- DeepSpeed subprocesses
def read_log(d):
    return common.read_jsonl(os.path.join(d, "train_log.jsonl"))


def weights(d):
    from safetensors.torch import load_file
    return load_file(os.path.join(d, "model.safetensors"))


def deepspeed_run(nproc, *args, port):
    ds = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or "deepspeed"
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **DS_ENV}
    p = subprocess.run([ds, "--num_gpus", str(nproc), "--master_port", str(port), "train.py", *map(str, args)],
                       cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def assert_same_run(a, b, tol=1e-5):
    la, lb = read_log(a), read_log(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
        for k in ("loss", "grad_norm", "lr"):
            assert ra[k] == pytest.approx(rb[k], rel=tol, abs=1e-9), (k, ra, rb)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=tol, atol=1e-6), k


@pytest.mark.slow
def test_accumulation_equals_data_parallel_and_resume(tmp_path, tokenizer, random_qwen2):
    """1 process x 2+ micro-batches == 2 ZeRO-3 processes x 1 micro-batch; a stopped-and-resumed run == both."""
    write_data(tmp_path / "d.jsonl", tokenizer, n=16)
    common_args = ["--model", random_qwen2, "--data", tmp_path / "d.jsonl", "--global_batch_size", 4,
                   "--epochs", 1, "--lr", 1e-3, "--save_steps", 2, "--lr_scheduler", "cosine"]
    one = tmp_path / "one"
    run_script("train.py", *common_args, "--output_dir", one, "--micro_batch_tokens", 64, "--save_every_epoch",
               env=DS_ENV)
    assert (one / "epoch_1" / "model.safetensors").exists() and (one / "epoch_1" / "generation_config.json").exists()
    assert all(r["micro_batches"] >= 2 for r in read_log(one)) and len(read_log(one)) == 4
    assert read_log(one)[-1]["loss"] < read_log(one)[0]["loss"]

    two = tmp_path / "two"
    deepspeed_run(2, *common_args, "--output_dir", two, "--micro_batch_tokens", 4096, port=29631)
    assert all(r["micro_batches"] == 1 for r in read_log(two))
    assert_same_run(one, two)

    res = tmp_path / "res"
    p = run_script("train.py", *common_args, "--output_dir", res, "--micro_batch_tokens", 64,
                   "--stop_after_steps", 3, "--report_to", "tensorboard", env=DS_ENV)
    assert "stopping after step 3" in p.stdout and not (res / "model.safetensors").exists()
    assert len(read_log(res)) == 3 and (res / "checkpoints" / "step_2").is_dir()
    p = run_script("train.py", *common_args, "--output_dir", res, "--micro_batch_tokens", 64, env=DS_ENV,
                   check=False)
    assert p.returncode == 2 and "--resume" in p.stderr  # refuses to silently restart over a checkpoint
    run_script("train.py", *common_args, "--output_dir", res, "--micro_batch_tokens", 64, "--resume",
               "--report_to", "tensorboard", env=DS_ENV)
    assert (res / "train_loss.png").read_bytes()[:4] == b"\x89PNG" and (one / "train_loss.png").exists()
    assert len(list((res / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the stopped run, the resumed one
    assert_same_run(one, res)  # step 3 was lost with the "kill" and redone from the step-2 checkpoint
    assert not (res / "checkpoints").exists() and json.loads((res / "meta.json").read_text())["finished"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tokenizer, random_qwen2):
    write_data(tmp_path / "d.jsonl", tokenizer, n=12)
    out = tmp_path / "o"
    p = run_script("train.py", "--model", random_qwen2, "--data", tmp_path / "d.jsonl", "--output_dir", out,
                   "--global_batch_size", 4, "--epochs", 1, "--lr", 1e30, "--warmup_ratio", 0, "--save_steps", 1,
                   # Adam's first step moves Qwen2's q/k biases by ~lr: attention scores overflow -> NaN
                   "--lr_scheduler", "constant", env=DS_ENV, check=False)
    assert p.returncode == 2 and "non-finite loss" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    step = int(p.stderr.split("at step ")[1].split()[0])
    assert step >= 2 and f"step_{step - 1}" in p.stderr
    assert (out / "checkpoints" / f"step_{step - 1}").is_dir() and len(read_log(out)) == step - 1
    assert not (out / "model.safetensors").exists()


VLLM_SNIPPET = """
import sys, json
sys.path.insert(0, {root!r})
import models
if __name__ == "__main__":
    from vllm import SamplingParams
    llm = models.make_llm({model!r}, seed=0, max_model_len=512)
    tok = llm.get_tokenizer()
    prompt = models.render_prompt(tok, "What is 2+3?", None)
    ids = models.encode(tok, [prompt])[0]
    out = llm.generate([{{"prompt_token_ids": ids}}], SamplingParams(max_tokens=8, temperature=0))
    print("RENDERED", json.dumps(prompt))
    print("GENERATED", json.dumps(len(out[0].outputs[0].token_ids)))
"""
# A ChatML variant unlike SmolLM2's own template (no default system turn, a "Problem: " label): data rendered with it
# must give a checkpoint that renders with it.
CUSTOM_TEMPLATE = ("{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'user' %}Problem: "
                   "{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                   "<|im_start|>assistant\n{% endif %}")


def prepare_data(tmp_path, tok, n=4, seed=5, long=24):
    """Training data made by prepare.py (sft, --chat_template CUSTOM_TEMPLATE, --max_len 256) from random-word
    answers: the sidecar train.py reads its template and max_len from."""
    import prepare
    rng = np.random.default_rng(seed)
    samples = [{"id": str(i), "question": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))),
                "responses": [" ".join(rng.choice(WORDS, size=int(rng.integers(2, long))))]} for i in range(n)]
    common.write_jsonl(tmp_path / "s.jsonl", samples)
    (tmp_path / "t.jinja").write_text(CUSTOM_TEMPLATE)
    argv = ["prepare.py", "--mode", "sft", "--input", str(tmp_path / "s.jsonl"), "--output", str(tmp_path / "d.jsonl"),
            "--model", ROOT / "models" / "smollm2-135m-instruct", "--chat_template", str(tmp_path / "t.jinja"),
            "--max_len", "256"]
    old, sys.argv = sys.argv, [str(a) for a in argv]
    try:
        prepare.main()
    finally:
        sys.argv = old
    return common.read_jsonl(tmp_path / "d.jsonl"), samples


@pytest.mark.slow
def test_zero3_two_processes_tiny_model_learns_and_vllm_loads(tmp_path, tokenizer, tiny_model):
    """Two ZeRO-3 ranks train the tiny model on data prepared with a custom chat template: the loss falls, the
    checkpoint renders prompts with the data's template (transformers and vLLM), train.py took --max_len from the
    data, and vLLM generates from it."""
    recs, samples = prepare_data(tmp_path, tokenizer)
    out = tmp_path / "o"
    p = deepspeed_run(2, "--model", tiny_model, "--data", tmp_path / "d.jsonl", "--output_dir", out,
                      "--global_batch_size", 4, "--epochs", 4, "--lr", 1e-4, "--warmup_ratio", 0,
                      "--lr_scheduler", "constant", "--gradient_checkpointing", "--eval_data", tmp_path / "d.jsonl",
                      "--eval_steps", 2, port=29641)
    log = read_log(out)
    assert len(log) == 4 and log[-1]["loss"] < 0.8 * log[0]["loss"], [r["loss"] for r in log]
    assert [r["step"] for r in log if "eval_loss" in r] == [2, 4]  # --eval_steps 2 (and the last step)
    assert all(0 < r["mfu"] < 1 and r["tokens_per_s"] > 0 for r in log)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["finished"] and meta["world_size"] == 2 and "git_commit" in meta
    assert meta["args"]["max_len"] == 256 and "max_len 256: from" in p.stdout  # prepare.py's, not the default
    assert meta["chat_template_from"].endswith("d.jsonl.meta.json")
    gen = json.loads((out / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]
    assert (out / "chat_template.jinja").read_text() == CUSTOM_TEMPLATE
    from transformers import AutoTokenizer
    trained_tok = AutoTokenizer.from_pretrained(out)
    for r, q in zip(recs, samples):  # the trained model renders exactly as its training data was rendered
        assert models.render_prompt(trained_tok, q["question"], None) == r["prompt"]
        assert r["prompt"].startswith("<|im_start|>user\nProblem: ")
    assert models.render_prompt(tokenizer, samples[0]["question"], None) != recs[0]["prompt"]  # not SmolLM2's own
    # the written checkpoint is the trained one: transformers reproduces the logged loss trend
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    examples, _ = train.load_examples(tokenizer, str(tmp_path / "d.jsonl"), 4096)
    idx = list(range(len(examples)))
    with torch.no_grad():
        final = train.micro_batch_loss(m, train.collate(idx, examples, train.token_weights(idx, examples, "sample"),
                                                        True, tokenizer.pad_token_id), "cpu", False).item()
    assert final < log[-1]["loss"]  # one more update than the last logged (pre-update) loss
    # the eval loss (after the last update, 2 ranks, no gradient) is this loss: computed like the training loss
    assert log[-1]["eval_loss"] == pytest.approx(final, rel=1e-4), (log[-1]["eval_loss"], final)
    # vLLM (CPU) loads it and generates
    p = subprocess.run([sys.executable, "-c", VLLM_SNIPPET.format(root=str(ROOT), model=str(out))], cwd=tmp_path,
                       env={**os.environ, "VLLM_CPU_KV_GB": "1", "TOKENIZERS_PARALLELISM": "false"},
                       capture_output=True, text=True, timeout=400)
    assert p.returncode == 0 and "GENERATED" in p.stdout, p.stderr[-3000:]
    rendered = json.loads(p.stdout.split("RENDERED ", 1)[1].splitlines()[0])
    assert rendered == "<|im_start|>user\nProblem: What is 2+3?<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------------------------------------ LoRA, eval split
def test_lora_merge_equals_peft_and_adapter_round_trip(tmp_path, random_qwen2):
    """--use_peft: add_lora wraps the model; merge_lora (what save_hf writes) gives the same logits as the LoRA
    model, and as peft's own merge; the adapter saved beside it loads with peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(random_qwen2, dtype=torch.float32)
    a = args_for(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["all-linear"])
    pm = train.add_lora(base, a).eval()
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable), sorted(trainable)[:4]
    torch.manual_seed(0)
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)  # B starts at 0: make the update visible
    ids = torch.tensor([[1, 5, 7, 9, 100, 200, 3]])
    sd = pm.state_dict()
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
        pm.save_pretrained(tmp_path / "adapter", state_dict=sd)
        merged = train.merge_lora(sd, a.lora_alpha / a.lora_r)
        plain = AutoModelForCausalLM.from_pretrained(random_qwen2, dtype=torch.float32).eval()
        assert set(merged) == set(plain.state_dict()) - {"lm_head.weight"} | ({"lm_head.weight"} & set(merged))
        plain.load_state_dict(merged, strict=False)
        got = plain(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(random_qwen2, dtype=torch.float32)(input_ids=ids).logits
        peft_merged = pm.merge_and_unload()(input_ids=ids).logits
        again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(random_qwen2, dtype=torch.float32),
                                          tmp_path / "adapter").eval()(input_ids=ids).logits
    assert (ref - base_logits).abs().max() > 1e-2  # the adapters change the model
    for x in (got, peft_merged, again):
        assert torch.allclose(x, ref, atol=1e-5), (x - ref).abs().max()
    with pytest.raises(common.DataError, match="--use_peft: "):
        train.add_lora(AutoModelForCausalLM.from_pretrained(random_qwen2),
                       args_for(use_peft=True, lora_target_modules=["no_such_module"]))


def test_eval_split_holds_out_whole_questions(tmp_path, tokenizer):
    recs = write_data(tmp_path / "d.jsonl", tokenizer, n=20)
    for i, r in enumerate(recs):
        r["source_id"] = f"q{i // 2}"  # two examples per question (e.g. a UPFT prefix and a full response)
    common.write_jsonl(tmp_path / "d.jsonl", recs)
    a = args_for(eval_ratio=0.3, seed=1)
    a.data = str(tmp_path / "d.jsonl")
    tr, stats, ev = train.load_data(tokenizer, a)
    held = train.held_out_groups(a.data, 0.3, 1)
    assert len(held) == 3 and len(ev) == 6 and len(tr) == 14 and stats["examples"] == 14
    assert stats["eval"] == {"examples": 6, "tokens": int(sum(len(e.ids) for e in ev)),
                             "trained_tokens": int(sum(e.n_trained for e in ev)), "truncated": 0, "questions": 3}
    assert held == train.held_out_groups(a.data, 0.3, 1) != train.held_out_groups(a.data, 0.3, 2)
    a.eval_ratio = 0.99
    with pytest.raises(common.DataError, match="nothing would be left to train on"):
        train.load_data(tokenizer, a)
    for kw, match in [({"eval_ratio": 0.1, "eval_data": "x"}, "give one of them"), ({"eval_ratio": 1.0}, r"\[0, 1\)"),
                      ({"use_peft": True, "lora_r": 0}, "--lora_r")]:
        with pytest.raises(common.DataError, match=match):
            args_for(**kw)


def test_tracker_and_plot_show_the_eval_loss(tmp_path, monkeypatch):
    logged = []

    class Run:
        def add_scalar(self, k, v, step):
            logged.append((k, v, step))
    t = tracking.Tracker("none", tmp_path, {}, False)
    t.kind, t.run = "tensorboard", Run()
    t.log({"step": 3, "loss": 1.5, "eval_loss": 1.25, "grad_norm": None})
    assert logged == [("train/loss", 1.5, 3), ("eval/loss", 1.25, 3)]
    log = tmp_path / "train_log.jsonl"
    common.write_jsonl(log, [{"step": 1, "loss": 2.0, "lr": 1e-3}, {"step": 2, "loss": 1.0, "lr": 1e-3,
                                                                      "eval_loss": 1.5}])
    assert train.plot_loss(log, tmp_path / "train_loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_lora_stopped_and_resumed_equals_uninterrupted(tmp_path, tokenizer, random_qwen2):
    """--use_peft --resume: the DeepSpeed checkpoint of a LoRA run (frozen base, trainable adapters, Adam states) brings
    the run back to where it stopped; the resumed run's losses and merged weights equal an uninterrupted run's. Needs
    LoRA's initial adapters seeded and dropout masks seeded per step (a checkpoint keeps no RNG state)."""
    write_data(tmp_path / "d.jsonl", tokenizer, n=16)
    lora = ["--model", random_qwen2, "--data", tmp_path / "d.jsonl", "--global_batch_size", 4, "--epochs", 1,
            "--lr", 1e-2, "--save_steps", 2, "--lr_scheduler", "cosine", "--micro_batch_tokens", 64, "--use_peft",
            "--lora_r", 4, "--lora_alpha", 8, "--lora_dropout", 0.1, "--lora_target_modules", "all-linear"]
    one = tmp_path / "one"
    run_script("train.py", *lora, "--output_dir", one, env=DS_ENV)
    res = tmp_path / "res"
    p = run_script("train.py", *lora, "--output_dir", res, "--stop_after_steps", 3, env=DS_ENV)
    assert "stopping after step 3" in p.stdout and (res / "checkpoints" / "step_2").is_dir()
    assert not (res / "adapter").exists() and len(read_log(res)) == 3
    p = run_script("train.py", *lora, "--output_dir", res, "--resume", env=DS_ENV)
    assert "resumed from" in p.stdout + p.stderr
    assert len(read_log(one)) == 4 and read_log(one)[-1]["loss"] < read_log(one)[0]["loss"]
    assert_same_run(one, res)  # losses, grad norms, lr of steps 1-4 and the merged weights
    base = weights(random_qwen2)
    changed = {k for k, v in weights(one).items() if not torch.equal(v, base[k])}
    assert changed, "LoRA trained nothing into the merged weights"
    assert (res / "adapter" / "adapter_config.json").exists() and not (res / "checkpoints").exists()


@pytest.mark.slow
def test_lora_zero3_two_processes_merged_output_evaluates(tmp_path, tokenizer, tiny_model):
    """--use_peft under ZeRO-3 (2 processes) on SmolLM2-135M with a held-out split; DIR is a plain merged checkpoint
    (what peft's adapter in DIR/adapter/ gives) that evaluate.py loads in vLLM, on a benchmark of its own."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    write_data(tmp_path / "d.jsonl", tokenizer, n=8, seed=5, long=24)
    out = tmp_path / "lora"
    deepspeed_run(2, "--model", tiny_model, "--data", tmp_path / "d.jsonl", "--output_dir", out, "--use_peft",
                  "--lora_r", 8, "--lora_alpha", 16, "--lora_target_modules", "q_proj,v_proj,down_proj",
                  "--global_batch_size", 6, "--epochs", 3, "--lr", 5e-3, "--warmup_ratio", 0,
                  "--lr_scheduler", "constant", "--eval_ratio", 0.25, port=29651)
    log = read_log(out)
    assert len(log) == 3 and log[-1]["loss"] < log[0]["loss"], [r["loss"] for r in log]
    assert [r["step"] for r in log if "eval_loss" in r] == [1, 2, 3]  # every epoch end (one step per epoch)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["finished"] and meta["settings"]["use_peft"] and meta["data"]["examples"] == 6
    assert meta["data"]["eval"]["examples"] == 2
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and set(cfg["target_modules"]) == {"q_proj", "v_proj", "down_proj"}
    merged, base = weights(out), weights(tiny_model)
    assert merged.keys() == base.keys()  # a plain checkpoint: no LoRA keys
    changed = {k for k in base if not torch.equal(merged[k].float(), base[k].float())}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight")) for k in changed), \
        sorted(changed)[:5]
    ids = torch.tensor([tokenizer("What is 2+3? Wait, let me check.")["input_ids"]])
    with torch.no_grad():
        m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(input_ids=ids).logits
        pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                       out / "adapter").eval()(input_ids=ids).logits
    assert torch.allclose(m, pm, atol=2e-3), (m - pm).abs().max()  # fp32 on CPU: merge vs peft rounding only
    # evaluate.py loads DIR as it is (vLLM), on a benchmark of its own (NAME=FILE: no registry edit)
    bench = tmp_path / "mine.jsonl"
    common.write_jsonl(bench, [{"id": "a", "question": "What is 2+3?", "answer": "5"},
                               {"id": "b", "question": "Which is even?", "answer_type": "mc", "options": ["3", "4"],
                                "answer": "4"}])
    ev = tmp_path / "ev"
    p = run_script("evaluate.py", "--model", out, "--benchmarks", f"mine={bench}", "--n", 1, "--temperature", 0,
                   "--max_tokens", 16, "--output_dir", ev, env={"VLLM_CPU_KV_GB": "1"})
    recs = common.read_jsonl(ev / "mine.jsonl")
    assert [(r["id"], r["gold"], r["answer_type"]) for r in recs] == [("a", "5", "math"), ("b", "B", "mc")]
    # loaded and generated (3 steps at lr 5e-3 teach this tiny model to end its turn at once: 0 tokens is fine)
    assert all(len(r["responses"]) == 1 and r["num_tokens"][0] <= 16 and r["finish_reasons"][0] in ("stop", "length")
               for r in recs), recs
    assert "| mine" in p.stdout and json.loads((ev / "meta.json").read_text())["model"] == str(out)
