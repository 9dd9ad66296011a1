"""Bad input gets one line `error: ...` and exit code 2 from every stage, before any engine or model loads.
Runs the stages' main() in-process (no subprocess start per case) with the expensive starts replaced by
tripwires: reaching vLLM's engine, DeepSpeed's process group, or the hub's download code fails the test. The table
of these inputs and their messages is docs/bad_inputs.md."""
import gzip
import json
import os
import sys
from pathlib import Path

import pytest

import common
import models
import evaluate
import prepare
import rak
import sample
import train

STAGES = {"sample": sample, "prepare": prepare, "train": train, "evaluate": evaluate, "rak": rak}


class Tripwire(Exception):
    """An expensive start was reached."""


@pytest.fixture
def stage(monkeypatch, capsys):
    """run(stage_name, *argv) -> (exit code, stderr); expensive starts raise Tripwire."""
    def boom(*a, **k):
        raise Tripwire("expensive start reached")
    monkeypatch.setattr(models, "make_llm", boom)
    monkeypatch.setattr(train, "init_distributed", boom)
    monkeypatch.setattr(models, "_HUB_CHECKED", {}, raising=False)

    def run(name, *argv):
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, argv)])
        with pytest.raises(SystemExit) as e:
            common.run_main(STAGES[name].main)
        return e.value.code, capsys.readouterr().err
    return run


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def files(tmp_path):
    """Bad files: latin-1 bytes, a truncated and a fake .gz, broken JSON, a file where a folder should be."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9 1+1?", "answer": "2", "prompt": "p", "completion": "c"}\n')
    (d / "latin1.csv").write_bytes(b"question,answer\ncaf\xe9,2\n")
    gz = gzip.compress(b'{"question": "1+1?", "answer": "2"}\n' * 50)
    (d / "trunc.jsonl.gz").write_bytes(gz[:len(gz) // 2])
    (d / "fake.jsonl.gz").write_bytes(b'{"question": "1+1?"}\n')
    (d / "broken.json").write_text("{not json")
    (d / "good.jsonl").write_text('{"question": "1+1?", "answer": "2", "prompt": "p", "completion": "c"}\n')
    (d / "afile").write_text("x")
    for name, text in EXTRA_FILES.items():
        (d / name).write_text(text)
    return d


def _jsonl(*recs) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


U, A = {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}
# --config files, chat records and custom benchmarks refused as written (docs/bad_inputs.md shows each one)
EXTRA_FILES = {
    "not_yaml.yaml": "lr: [1e-5\n",
    "list.yaml": "- lr\n- 1e-5\n",
    "unknown_key.yaml": "no_such_flag: 3\n",
    "same_flag.yaml": "lr: 1e-5\nlearning_rate: 2e-5\n",
    "bad_int.yaml": "epochs: three\n",
    "bad_choice.yaml": "lr_scheduler: cosine_typo\n",
    "dict_value.yaml": "lr: {a: 1}\n",
    "nested.yaml": "benchmarks: [[gsm8k, math500]]\n",
    "null.yaml": "seed: null\n",
    "chat_role.jsonl": _jsonl({"messages": [U, {"role": "bot", "content": "2"}]}),
    "chat_assistant_first.jsonl": _jsonl({"messages": [A, U]}),
    "chat_no_assistant.jsonl": _jsonl({"messages": [U]}),
    "chat_two_users.jsonl": _jsonl({"messages": [U, A, U, A]}),
    "chat_generations.jsonl": _jsonl({"problem": "1+1?", "messages": [U, A], "generations": ["2", "two"],
                                      "solution": "2"}),
    "bench_answer_type.jsonl": _jsonl({"id": 1, "question": "1+1?", "answer": "2", "answer_type": "open"}),
    "bench_options.jsonl": _jsonl({"id": 1, "question": "1+1?", "answer": "A", "options": ["2", "3"]}),
    "bench_mc_answer.jsonl": _jsonl({"id": 1, "question": "1+1?", "answer": "Z", "answer_type": "mc",
                                     "options": ["2", "3"]}),
    "bench_dup.jsonl": _jsonl({"id": 1, "question": "1+1?", "answer": "2"},
                              {"id": 1, "question": "2+2?", "answer": "4"}),
}


def _cases():
    M = "TINY"  # replaced by the tiny model's path
    S = ["--model", M, "--data", "math500", "--limit", "2"]
    P = ["--model", M, "--input", "IN/good.jsonl"]
    T = ["--model", M, "--data", "IN/good.jsonl"]
    E = ["--model", M, "--benchmarks", "gsm8k"]
    return {
        # data that is not UTF-8, corrupt or truncated .gz
        "sample_not_utf8": (["sample", "--model", M, "--data", "IN/latin1.jsonl", "--output", "OUT/s.jsonl"],
                            "latin1.jsonl:1: not UTF-8 text (byte 0xe9"),
        "sample_not_utf8_csv": (["sample", "--model", M, "--data", "IN/latin1.csv", "--output", "OUT/s.jsonl"],
                                "latin1.csv: not UTF-8 text"),
        "sample_truncated_gz": (["sample", "--model", M, "--data", "IN/trunc.jsonl.gz", "--output", "OUT/s.jsonl"],
                                "corrupt or truncated gzip file"),
        "sample_fake_gz": (["sample", "--model", M, "--data", "IN/fake.jsonl.gz", "--output", "OUT/s.jsonl"],
                           "fake.jsonl.gz:1: corrupt or truncated gzip file"),
        "prepare_not_utf8": (["prepare", "--model", M, "--input", "IN/latin1.jsonl", "--output", "OUT/p.jsonl"],
                             "latin1.jsonl:1: not UTF-8 text"),
        "prepare_truncated_gz": (["prepare", "--model", M, "--input", "IN/trunc.jsonl.gz", "--output", "OUT/p.jsonl"],
                                 "corrupt or truncated gzip file"),
        "train_not_utf8": (["train", "--model", M, "--data", "IN/latin1.jsonl", "--output_dir", "OUT/t"],
                           "latin1.jsonl:1: not UTF-8 text"),
        "train_truncated_gz": (["train", "--model", M, "--data", "IN/trunc.jsonl.gz", "--output_dir", "OUT/t"],
                               "corrupt or truncated gzip file"),
        "evaluate_gsm8k_file_not_utf8": (["evaluate", *E, "--data", "IN/latin1.jsonl", "--output_dir", "OUT/e"],
                                         "not UTF-8 text"),
        # an output that cannot be written (a file where a folder should be)
        "sample_unwritable_output": (["sample", *S, "--output", "IN/afile/s.jsonl"], "afile is a file, not a folder"),
        "prepare_unwritable_output": (["prepare", *P, "--output", "IN/afile/p.jsonl"], "afile is a file"),
        "train_unwritable_output": (["train", *T, "--output_dir", "IN/afile/t"], "afile is a file"),
        "evaluate_unwritable_output": (["evaluate", *E, "--limit", "1", "--output_dir", "IN/afile/e"],
                                       "afile is a file"),
        "rak_unwritable_output": (["rak", "--runs", "a=IN", "--out", "IN/afile/r"], "afile is a file"),
        # out-of-range values, refused before anything loads
        "evaluate_limit_0": (["evaluate", *E, "--limit", "0", "--output_dir", "OUT/e"], "--limit must be >= 1, got 0"),
        "evaluate_limit_neg": (["evaluate", *E, "--limit", "-1", "--output_dir", "OUT/e"], "--limit must be >= 1"),
        "evaluate_grade_workers_neg": (["evaluate", *E, "--grade_workers", "-1", "--output_dir", "OUT/e"],
                                       "--grade_workers must be >= 0"),
        "evaluate_grade_timeout_0": (["evaluate", *E, "--grade_timeout", "0", "--output_dir", "OUT/e"],
                                     "--grade_timeout must be >= 1"),
        "evaluate_tp_0": (["evaluate", *E, "--tensor_parallel_size", "0", "--output_dir", "OUT/e"],
                          "--tensor_parallel_size must be >= 1"),
        "sample_top_k_neg": (["sample", *S, "--top_k", "-5", "--output", "OUT/s.jsonl"], "--top_k must be >= 1"),
        "sample_max_model_len_0": (["sample", *S, "--max_model_len", "0", "--output", "OUT/s.jsonl"],
                                   "--max_model_len must be >= 2"),
        "sample_replicas_3_2": (["sample", *S, "--backend", "ray", "--replicas", "3:2", "--output", "OUT/s.jsonl"],
                                "--replicas '3:2': give N or MIN:MAX with 1 <= MIN <= MAX"),
        "evaluate_ray_address_local": (["evaluate", *E, "--ray_address", "auto", "--output_dir", "OUT/e"],
                                       "--ray_address and --replicas need --backend ray"),
        "evaluate_block_size_0": (["evaluate", *E, "--backend", "ray", "--block_size", "0", "--output_dir", "OUT/e"],
                                  "--block_size must be >= 1, got 0"),
        "train_lr_neg": (["train", *T, "--lr", "-1", "--output_dir", "OUT/t"], "--lr must be > 0"),
        "train_warmup_ratio_5": (["train", *T, "--warmup_ratio", "5", "--output_dir", "OUT/t"],
                                 "--warmup_ratio must be in [0, 1]"),
        "train_max_grad_norm_neg": (["train", *T, "--max_grad_norm", "-1", "--output_dir", "OUT/t"],
                                    "--max_grad_norm must be >= 0"),
        "train_adam_beta2_1": (["train", *T, "--adam_beta2", "1", "--output_dir", "OUT/t"], "--adam_beta2 must be"),
        "train_save_steps_neg": (["train", *T, "--save_steps", "-1", "--output_dir", "OUT/t"], "--save_steps must be"),
        "train_ds_config_not_json": (["train", *T, "--deepspeed", "IN/broken.json", "--output_dir", "OUT/t"],
                                     "broken.json: cannot read the DeepSpeed config"),
        "train_ds_config_not_zero3": (["train", *T, "--deepspeed", "DSZ2", "--output_dir", "OUT/t"],
                                      "expects ZeRO stage 3"),
        "rak_alpha_neg": (["rak", "--runs", "a=IN", "--alpha", "-5", "--out", "OUT/r"], "--alpha must be >= 0"),
        "rak_gamma_neg": (["rak", "--runs", "a=IN", "--gamma", "-1", "--out", "OUT/r"], "--gamma must be >= 0"),
        "prepare_grade_workers_neg": (["prepare", *P, "--mode", "rft", "--grade_workers", "-1", "--output",
                                       "OUT/p.jsonl"], "--grade_workers must be >= 0"),
        "prepare_max_questions_0": (["prepare", *P, "--max_questions", "0", "--output", "OUT/p.jsonl"],
                                    "--max_questions must be >= 1"),
        # metadata that is not JSON
        "evaluate_grade_only_meta_not_json": (["evaluate", "--grade_only", "--output_dir", "BADMETA"],
                                              "meta.json: metadata is not valid JSON"),
        "sample_generation_config_not_json": (["sample", "--model", "BADGEN", "--data", "math500", "--limit", "1",
                                               "--output", "OUT/s.jsonl"], "generation config is not valid JSON"),
        # --config FILE.yaml (common.read_config, in common.parse_args): checked as the flags would be
        "config_not_yaml": (["train", *T, "--config", "IN/not_yaml.yaml", "--output_dir", "OUT/t"],
                            "not_yaml.yaml:2: not valid YAML ("),
        "config_not_mapping": (["train", *T, "--config", "IN/list.yaml", "--output_dir", "OUT/t"],
                               "list.yaml: expected `flag: value` lines (a YAML mapping), got list"),
        "config_unknown_key": (["train", *T, "--config", "IN/unknown_key.yaml", "--output_dir", "OUT/t"],
                               "unknown_key.yaml: key 'no_such_flag': not a flag of train.py (see --help)"),
        "config_same_flag_twice": (["train", *T, "--config", "IN/same_flag.yaml", "--output_dir", "OUT/t"],
                                   "same_flag.yaml: key 'learning_rate': the same flag as 'lr'"),
        "config_bad_int": (["train", *T, "--config", "IN/bad_int.yaml", "--output_dir", "OUT/t"],
                           "bad_int.yaml: key 'epochs': 'three' is not a valid int"),
        "config_bad_choice": (["train", *T, "--config", "IN/bad_choice.yaml", "--output_dir", "OUT/t"],
                              "bad_choice.yaml: key 'lr_scheduler': 'cosine_typo' is not one of 'cosine'"),
        "config_dict_value": (["train", *T, "--config", "IN/dict_value.yaml", "--output_dir", "OUT/t"],
                              "dict_value.yaml: key 'lr': expected one value, got a YAML dict"),
        "config_nested": (["evaluate", "--model", M, "--config", "IN/nested.yaml", "--output_dir", "OUT/e"],
                          "nested.yaml: key 'benchmarks': expected plain values, got a nested YAML list"),
        "config_null": (["train", *T, "--config", "IN/null.yaml", "--output_dir", "OUT/t"],
                        "null.yaml: key 'seed': null is not allowed (default: 42)"),
        # chat datasets (sources.chat_turns / chat_exchanges / chat_question, prepare.py)
        "prepare_chat_bad_role": (["prepare", "--model", M, "--input", "IN/chat_role.jsonl", "--format", "chat",
                                   "--output", "OUT/p.jsonl"],
                                  "chat_role.jsonl:1: field 'messages[1]' has role 'bot' (expected user/human, "
                                  "assistant/gpt or system)"),
        "prepare_chat_assistant_first": (["prepare", "--model", M, "--input", "IN/chat_assistant_first.jsonl",
                                          "--format", "chat", "--output", "OUT/p.jsonl"],
                                         "field 'messages': an assistant turn comes before any user turn"),
        "prepare_chat_no_assistant": (["prepare", "--model", M, "--input", "IN/chat_no_assistant.jsonl", "--format",
                                       "chat", "--output", "OUT/p.jsonl"],
                                      "field 'messages': user turn 1 has no assistant turn after it"),
        "prepare_chat_two_exchanges": (["prepare", "--model", M, "--input", "IN/chat_two_users.jsonl", "--format",
                                        "chat", "--output", "OUT/p.jsonl"],
                                       "field 'messages' has 2 user and 2 assistant turns, expected one of each"),
        "prepare_chat_missing": (["prepare", *P, "--format", "chat", "--output", "OUT/p.jsonl"],
                                 "good.jsonl:1: missing field 'messages' or 'conversations' (--format chat)"),
        "sample_chat_two_users": (["sample", "--model", M, "--data", "IN/chat_two_users.jsonl", "--output",
                                   "OUT/s.jsonl"], "field 'messages' has 2 user turns; a question is one user turn"),
        "prepare_several_response_fields": (["prepare", "--model", M, "--input", "IN/chat_generations.jsonl",
                                             "--output", "OUT/p.jsonl"],
                                            "several fields could be the response (messages, generations, solution)"),
        # custom benchmarks: evaluate.py --benchmarks NAME=FILE.jsonl (sources.load_custom_benchmark)
        "evaluate_custom_missing_file": (["evaluate", "--model", M, "--benchmarks", "mine=IN/nope.jsonl",
                                          "--output_dir", "OUT/e"], "/nope.jsonl: file not found"),
        "evaluate_custom_bad_name": (["evaluate", "--model", M, "--benchmarks", "my.bench=IN/bench_dup.jsonl",
                                      "--output_dir", "OUT/e"],
                                     "expected NAME=FILE with NAME made of letters, digits, _ or - and not a "
                                     "registry benchmark"),
        "evaluate_custom_two_files": (["evaluate", "--model", M, "--benchmarks",
                                       "mine=IN/bench_dup.jsonl,mine=IN/good.jsonl", "--output_dir", "OUT/e"],
                                      "--benchmarks: 'mine' given with two files"),
        "evaluate_custom_answer_type": (["evaluate", "--model", M, "--benchmarks", "mine=IN/bench_answer_type.jsonl",
                                         "--output_dir", "OUT/e"],
                                        "bench_answer_type.jsonl:1: field 'answer_type' must be 'math' or 'mc', "
                                        "got 'open'"),
        "evaluate_custom_options_not_mc": (["evaluate", "--model", M, "--benchmarks", "mine=IN/bench_options.jsonl",
                                            "--output_dir", "OUT/e"],
                                           "bench_options.jsonl:1: field 'options' needs \"answer_type\": \"mc\""),
        "evaluate_custom_mc_answer": (["evaluate", "--model", M, "--benchmarks", "mine=IN/bench_mc_answer.jsonl",
                                       "--output_dir", "OUT/e"],
                                      "field 'answer' 'Z' is neither a letter A-B nor one of the options"),
        "evaluate_custom_duplicate_id": (["evaluate", "--model", M, "--benchmarks", "mine=IN/bench_dup.jsonl",
                                          "--output_dir", "OUT/e"], "bench_dup.jsonl:2: duplicate id '1' (first at "),
        # train.py: LoRA, the eval split, TRL's batch flags and --push_to_hub
        "train_lora_r_0": (["train", *T, "--use_peft", "--lora_r", "0", "--output_dir", "OUT/t"],
                           "--lora_r must be >= 1, --lora_alpha > 0 and --lora_dropout in [0, 1), got 0"),
        "train_eval_ratio_1_5": (["train", *T, "--eval_ratio", "1.5", "--output_dir", "OUT/t"],
                                 "--eval_ratio must be in [0, 1) and --eval_steps >= 0, got 1.5"),
        "train_eval_data_and_ratio": (["train", *T, "--eval_data", "IN/good.jsonl", "--eval_ratio", "0.1",
                                       "--output_dir", "OUT/t"], "--eval_data and --eval_ratio: give one of them"),
        "train_eval_data_missing": (["train", *T, "--eval_data", "IN/nope.jsonl", "--output_dir", "OUT/t"],
                                    "/nope.jsonl: file not found"),
        "train_eval_ratio_nothing_left": (["train", *T, "--eval_ratio", "0.5", "--output_dir", "OUT/t"],
                                          "has 1 question(s), nothing would be left to train on"),
        "train_per_device_batch_0": (["train", *T, "--per_device_train_batch_size", "0", "--output_dir", "OUT/t"],
                                     "--per_device_train_batch_size and --gradient_accumulation_steps must be >= 1"),
        "train_push_to_hub_no_repo": (["train", *T, "--push_to_hub", "--output_dir", "OUT/t"],
                                      "--push_to_hub: give the repository as --hub_model_id USER/NAME"),
        "train_push_to_hub_two_repos": (["train", *T, "--push_to_hub", "me/a", "--hub_model_id", "me/b",
                                         "--output_dir", "OUT/t"], "two repositories; give one"),
        # rak.py --ci
        "rak_ci_1_5": (["rak", "--runs", "a=IN", "--ci", "1.5", "--out", "OUT/r"],
                       "--ci must be a confidence level in (0, 1), e.g. 0.95, got 1.5"),
        "rak_ci_resamples_0": (["rak", "--runs", "a=IN", "--ci", "0.95", "--ci_resamples", "0", "--out", "OUT/r"],
                               "--ci_resamples must be >= 1, got 0"),
    }


CASES = _cases()


def _fill(argv, tmp_path, files, tiny_model):
    out = []
    for a in argv:
        a = a.replace("TINY", tiny_model).replace("IN/", f"{files}/").replace("OUT/", f"{tmp_path}/out/")
        if a == "IN":
            a = str(files)
        if a == "DSZ2":
            cfg = json.loads((common.ROOT / "configs" / "ds_z3.json").read_text())
            cfg["zero_optimization"]["stage"] = 2
            a = str(tmp_path / "ds_z2.json")
            Path(a).write_text(json.dumps(cfg))
        if a == "BADMETA":
            d = tmp_path / "badmeta"
            d.mkdir()
            (d / "gsm8k.jsonl").write_text(json.dumps({"id": "0", "gold": "2", "responses": ["\\boxed{2}"],
                                                      "num_tokens": [3], "finish_reasons": ["stop"]}) + "\n")
            (d / "meta.json").write_text("{truncated")
            a = str(d)
        if a == "BADGEN":
            d = tmp_path / "badgen"
            d.mkdir()
            for f in Path(tiny_model).iterdir():
                if f.name != "generation_config.json":
                    (d / f.name).symlink_to(f)
            (d / "generation_config.json").write_text("{")
            a = str(d)
        out.append(a)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_before_any_load(stage, tmp_path, files, tiny_model, case):
    argv, message = CASES[case]
    name, *rest = _fill(argv, tmp_path, files, tiny_model)
    code, err = stage(name, *rest)
    assert code == 2 and "Traceback" not in err
    assert message in one_line(err), err


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(_has("wandb"), reason="wandb is installed: --report_to wandb is accepted")
@pytest.mark.parametrize("name", ["evaluate", "rak", "train"])
def test_report_to_wandb_not_installed(stage, tmp_path, files, tiny_model, name):
    argv = {"evaluate": ["--model", tiny_model, "--benchmarks", "gsm8k", "--output_dir", tmp_path / "e"],
            "rak": ["--runs", f"a={files}", "--out", tmp_path / "r"],
            "train": ["--model", tiny_model, "--data", files / "good.jsonl", "--output_dir", tmp_path / "t"]}[name]
    code, err = stage(name, *argv, "--report_to", "wandb")
    assert code == 2 and "Traceback" not in err
    assert one_line(err) == "error: --report_to wandb: the package is not installed (pip install wandb)"


REQUIRED = {"train": ["--model", "m", "--data", "d", "--output_dir", "o"],
            "prepare": ["--model", "m", "--input", "i", "--output", "o"]}


@pytest.mark.parametrize("name", list(STAGES))
def test_unknown_flag_is_refused_like_argparse(stage, name):
    code, err = stage(name, *REQUIRED.get(name, []), "--no_such_flag", "3")
    assert code == 2
    assert err.startswith("usage: ") and err.strip().endswith("error: unrecognized arguments: --no_such_flag 3")


def test_bad_choice_is_refused_by_the_parser(stage):
    """A value outside a Literal's choices: argparse's usage + 'invalid choice', exit 2, before anything loads."""
    code, err = stage("train", *REQUIRED["train"], "--lr_scheduler", "cosine_typo")
    assert code == 2 and err.startswith("usage: ")
    assert "invalid choice: 'cosine_typo' (choose from 'cosine', 'constant_with_warmup'" in err.strip().splitlines()[-1]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir(stage, tmp_path, tiny_model):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = stage("sample", "--model", tiny_model, "--data", "math500", "--limit", "1", "--output",
                          ro / "s.jsonl")
        assert code == 2 and "cannot write in" in one_line(err)
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("name", ["sample", "evaluate", "train", "prepare"])
def test_hub_name_offline_fails_at_once(stage, tmp_path, files, monkeypatch, name):
    """HF_HUB_OFFLINE=1 and a hub name not in the cache: one line naming the cause, no download attempt."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "nobody-here/no-such-model-15"
    argv = {"sample": ["--data", "math500", "--output", tmp_path / "s.jsonl"],
            "evaluate": ["--benchmarks", "gsm8k", "--output_dir", tmp_path / "e"],
            "train": ["--data", files / "good.jsonl", "--output_dir", tmp_path / "t"],
            "prepare": ["--input", files / "good.jsonl", "--output", tmp_path / "p.jsonl"]}[name]
    code, err = stage(name, "--model", model, *argv)
    assert code == 2 and "HF_HUB_OFFLINE is set" in one_line(err)


def test_hub_unreachable_fails_at_once(stage, tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE, but the hub does not answer (a closed port): one line, no retries."""
    from huggingface_hub import constants
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    code, err = stage("sample", "--model", "nobody-here/no-such-model-15", "--data", "math500", "--output",
                      tmp_path / "s.jsonl")
    assert code == 2 and "cannot be reached" in one_line(err)


def test_failed_start_leaves_no_blocking_meta(stage, tmp_path, files, tiny_model):
    """A meta.json left by a run that failed before its first result does not refuse the corrected command."""
    out = tmp_path / "s.jsonl"
    Path(f"{out}.meta.json").write_text(json.dumps({"settings": {"n": 99}}))  # output never written
    with pytest.raises(Tripwire):  # gets as far as the engine start
        stage("sample", "--model", tiny_model, "--data", "math500", "--limit", "1", "--output", out)
    t = tmp_path / "t"
    t.mkdir()
    (t / "meta.json").write_text(json.dumps({"settings": {"lr": 99}, "finished": False}))  # no checkpoint
    with pytest.raises(Tripwire):
        stage("train", "--model", tiny_model, "--data", files / "good.jsonl", "--output_dir", t)


def test_readme_upft_evaluate_example_is_accepted(stage, tmp_path, monkeypatch, capsys):
    """README: `--benchmarks gsm8k,math500,aime24,gpqa --data GPQA_FILE` (the --data names the GPQA file)."""
    gpqa = tmp_path / "gpqa.jsonl"
    gpqa.write_text(json.dumps({"id": "g1", "question": "Which?", "correct_answer": "x",
                                "incorrect_answers": ["y", "z", "w"]}) + "\n")
    seen = {}
    monkeypatch.setattr(evaluate, "check_model", lambda a: (_ for _ in ()).throw(Tripwire("model check")),
                        raising=False)
    monkeypatch.setattr(models, "load_tokenizer", lambda *a: (_ for _ in ()).throw(Tripwire("tokenizer")))
    orig = evaluate.load_benchmark

    def spy(b, *a):
        seen[b] = orig(b, *a)
        return seen[b]
    monkeypatch.setattr(evaluate, "load_benchmark", spy)
    model = tmp_path / "m"
    model.mkdir()
    with pytest.raises(Tripwire):
        stage("evaluate", "--model", model, "--protocol", "upft", "--benchmarks", "gsm8k,math500,aime24,gpqa",
              "--data", gpqa, "--limit", "1", "--output_dir", tmp_path / "e")
    assert [q["id"] for q in seen["gpqa"]] == ["g1"] and len(seen["gsm8k"]) == 1
