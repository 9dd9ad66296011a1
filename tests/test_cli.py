"""The command line is the manual: every flag of every stage has help, choices are refused by the parser; --config
files, the names TRL/HF users type, and the papers' settings files."""
import argparse
import dataclasses
import importlib
import re
import sys

import pytest

import common

STAGES = ["sample", "prepare", "train", "evaluate", "rak"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_flag_has_help(stage):
    args = importlib.import_module(stage).Args
    missing = [f.name for f in dataclasses.fields(args) if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"{stage}.py: flags without help: {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_help_shows_the_docstring_and_every_flag(stage, capsys):
    mod = importlib.import_module(stage)
    with pytest.raises(SystemExit) as e:
        common.parse_args(mod.Args, mod.__doc__, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert mod.__doc__.strip().splitlines()[0] in out
    for f in dataclasses.fields(mod.Args):
        if f.metadata["help"] != argparse.SUPPRESS:  # test-only flags are hidden
            assert f"--{f.name}" in out
    assert "--config FILE.yaml" in out


@pytest.mark.parametrize("stage,argv,choices", [
    ("prepare", ["--input", "i", "--output", "o", "--model", "m", "--mode", "bogus"],
     "'sft', 'qfft', 'mix', 'upft', 'rft', 'noise'"),
    ("prepare", ["--input", "i", "--output", "o", "--model", "m", "--level", "5"], "2, 3, 4"),
    ("train", ["--model", "m", "--data", "d", "--output_dir", "o", "--loss_reduction", "mean"], "'sample', 'token'"),
    ("train", ["--model", "m", "--data", "d", "--output_dir", "o", "--preset", "lima"], "'qfft', 'upft'"),
    ("train", ["--model", "m", "--data", "d", "--output_dir", "o", "--report_to", "mlflow"],
     "'none', 'tensorboard', 'wandb'"),
    ("evaluate", ["--protocol", "nope"], "'qfft', 'upft'"),
    ("rak", ["--runs", "a", "--solvable", "median"], "'index', 'mean'"),
])
def test_a_bad_choice_is_refused_with_the_choices_listed(stage, argv, choices, capsys):
    mod = importlib.import_module(stage)
    with pytest.raises(SystemExit) as e:
        common.parse_args(mod.Args, mod.__doc__, argv)
    assert e.value.code == 2
    assert choices in capsys.readouterr().err


def test_literal_choices_parse_to_their_type():
    import prepare
    a = common.parse_args(prepare.Args, None, ["--input", "i", "--output", "o", "--model", "m", "--mode", "noise",
                                               "--level", "3"])
    assert (a.mode, a.level) == ("noise", 3)


def test_hf_trl_aliases():
    import train
    a = common.parse_args(train.Args, None, ["--model", "m", "--data", "d", "--output_dir", "o", "--learning_rate",
                                             "2e-6", "--num_train_epochs", "3", "--max_length", "4096",
                                             "--lr_scheduler_type", "linear"])
    assert (a.lr, a.epochs, a.max_len, a.lr_scheduler) == (2e-6, 3, 4096, "linear")


def test_lists_take_spaces_or_commas_and_output_dirs_share_a_name():
    import evaluate
    import rak
    for argv in (["--benchmarks", "gsm8k", "math500"], ["--benchmarks", "gsm8k,math500"]):
        a = common.parse_args(evaluate.Args, None, argv)
        assert evaluate.parse_benchmarks(a.benchmarks) == ["gsm8k", "math500"]
    assert evaluate.parse_benchmarks(evaluate.Args().benchmarks) == ["gsm8k", "math500"]
    r = common.parse_args(rak.Args, None, ["--runs", "a", "--format", "md", "csv", "--output_dir", "res"])
    assert common.comma_list(r.format) == ["md", "csv"] and r.out == "res"
    assert common.comma_list(rak.Args().show) == ["qfft", "aes", "upft", "long_cot"]


# ----------------------------------------------------------------------------------------------------------------
# The manual renders cleanly
def help_problems(text: str) -> list[str]:
    """What is wrong with a --help text: control characters (a '\\b' in a docstring prints as a backspace), and a
    flag whose help says its default twice (the text's own 'default ...' plus argparse's '(default: ...)')."""
    bad = [f"control character {c!r}" for c in sorted(set(text)) if ord(c) < 32 and c != "\n"]
    opts = text.split("\noptions:\n", 1)[-1]
    for block in re.split(r"\n(?=  -)", opts):  # one block per flag
        said = re.findall(r"\bdefault\s*:|\(default\b", block, re.I)  # "(default: X)", "default: X"
        if len(said) > 1:
            bad.append(f"default said {len(said)} times: {' '.join(block.split())[:120]}")
    return bad


def help_text(stage, capsys) -> str:
    mod = importlib.import_module(stage)
    with pytest.raises(SystemExit):
        common.parse_args(mod.Args, mod.__doc__, ["--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("stage", STAGES)
def test_help_has_no_duplicated_default_or_control_character(stage, capsys):
    out = help_text(stage, capsys)
    assert help_problems(out) == []
    mod = importlib.import_module(stage)
    # the docstring's commands keep their line continuations
    assert out.count(" \\\n") == mod.__doc__.count(" \\\n") > 0 or " \\\n" not in mod.__doc__


def test_the_help_check_can_fail():
    assert help_problems("x\noptions:\n  --a A  the size (default: the preset's) (default: None)\n") != []
    assert help_problems("oxed: \x08oxed\noptions:\n") == ["control character '\\x08'"]
    assert help_problems("x\noptions:\n  --a A  'default' or eval, the default one (default: eval)\n") == []
    assert help_problems("x\noptions:\n  --b B  size (default: 3, else 4)\n  --c C  (default: 2)\n") == []


def test_test_only_flags_are_hidden_but_accepted(capsys):
    import train
    out = help_text("train", capsys)
    assert "--stop_after_steps" not in out and "--local_rank" not in out
    a = common.parse_args(train.Args, None, ["--model", "m", "--data", "d", "--output_dir", "o",
                                             "--stop_after_steps", "3", "--local_rank", "1"])
    assert (a.stop_after_steps, a.local_rank) == (3, 1)


# ----------------------------------------------------------------------------------------------------------------
# Names users already type: every alias parses to the same settings as its canonical flag
REQUIRED = {"prepare": {"input": "i", "output": "o", "model": "m"}, "train": {"model": "m", "data": "d",
                                                                             "output_dir": "o"}}
MAIN_IO = {"sample": ("data", "output"), "prepare": ("input", "output"), "train": ("data", "output_dir"),
           "evaluate": ("benchmarks", "output_dir"), "rak": ("runs", "out")}


def sample_value(action) -> list[str]:
    """A valid command-line value for a flag (not its default)."""
    if action.choices:
        return [str(action.choices[-1])]
    if action.nargs == "+":
        return ["aime24", "amc23"]
    name = getattr(action.type, "__name__", "")
    return {"int": ["7"], "float": ["0.5"], "string_to_bool": ["true"]}.get(name, ["x/y"])


@pytest.mark.parametrize("stage", STAGES)
def test_every_alias_parses_to_the_same_settings_as_its_canonical_flag(stage):
    from transformers import HfArgumentParser
    mod = importlib.import_module(stage)
    parser = HfArgumentParser(mod.Args)
    checked = 0
    for f in dataclasses.fields(mod.Args):
        aliases = f.metadata.get("aliases", [])
        if not aliases:
            continue
        action = parser._option_string_actions[f"--{f.name}"]
        value = sample_value(action)
        base = [x for k, v in REQUIRED.get(stage, {}).items() if k != f.name for x in (f"--{k}", v)]
        want = common.parse_args(mod.Args, None, base + [f"--{f.name}", *value])
        assert getattr(want, f.name) != getattr(mod.Args(**REQUIRED.get(stage, {})), f.name), f.name
        for alias in aliases:
            assert common.parse_args(mod.Args, None, base + [alias, *value]) == want, (stage, alias)
            checked += 1
    assert checked >= 3, f"{stage}.py: only {checked} aliases"
    # one name per concept: --input and --output are every stage's main input and output
    inp, out = MAIN_IO[stage]
    a = common.parse_args(mod.Args, None, [x for k, v in REQUIRED.get(stage, {}).items() if k not in (inp, out)
                                           for x in (f"--{k}", v)] + ["--input", "gsm8k", "--output", "o"])
    assert common.comma_list(getattr(a, inp)) == ["gsm8k"] and getattr(a, out) == "o"


def test_trl_names_map_onto_ours(monkeypatch, capsys):
    import train
    req = ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o"]
    monkeypatch.setenv("WORLD_SIZE", "8")
    a = train.resolve(common.parse_args(train.Args, None, req + ["--per_device_train_batch_size", "2",
                                                                 "--gradient_accumulation_steps", "4",
                                                                 "--preset", "upft"]))
    assert a.global_batch_size == 64 and "= per_device_train_batch_size 2 x gradient_accumulation_steps 4 x 8" \
        in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "1")
    a = train.resolve(common.parse_args(train.Args, None, req + ["--per_device_train_batch_size", "4",
                                                                 "--global_batch_size", "32"]))
    assert a.global_batch_size == 4 and "(replaces 32)" in capsys.readouterr().out
    with pytest.raises(common.DataError, match="must be >= 1"):
        train.resolve(common.parse_args(train.Args, None, req + ["--gradient_accumulation_steps", "0"]))
    a = common.parse_args(train.Args, None, req + ["--resume_from_checkpoint", "--bf16", "--run_name", "r1"])
    assert (a.resume, a.bf16, a.run_name, a.model, a.data) == (True, True, "r1", "m", "d")
    assert common.parse_args(train.Args, None, req + ["--bf16", "false"]).bf16 is False
    assert common.parse_args(train.Args, None, req).bf16 is None  # unset: bf16 where the GPU has it


@pytest.mark.parametrize("argv,repo", [
    ([], None), (["--push_to_hub", "me/m"], "me/m"), (["--push_to_hub", "--hub_model_id", "me/m"], "me/m"),
    (["--push_to_hub", "yes", "--hub_model_id", "me/m"], "me/m"), (["--push_to_hub", "no", "--hub_model_id", "me/m"],
                                                                   None),
    (["--push_to_hub", "false"], None), (["--push_to_hub", "me/m", "--hub_model_id", "me/m"], "me/m")])
def test_push_to_hub_as_a_repository_or_trls_yes_no(argv, repo):
    import prepare
    import sample
    import train
    for mod, req in ((train, REQUIRED["train"]), (prepare, REQUIRED["prepare"]), (sample, {})):
        base = [x for k, v in req.items() for x in (f"--{k}", v)]
        assert common.parse_args(mod.Args, None, base + argv).push_to_hub == repo, (mod.__name__, argv)


def test_push_to_hub_yes_needs_one_repository():
    import train
    base = ["--model", "m", "--data", "d", "--output_dir", "o"]
    with pytest.raises(common.DataError, match="--hub_model_id USER/NAME"):
        common.parse_args(train.Args, None, base + ["--push_to_hub"])
    with pytest.raises(common.DataError, match="two repositories"):
        common.parse_args(train.Args, None, base + ["--push_to_hub", "me/a", "--hub_model_id", "me/b"])


# ----------------------------------------------------------------------------------------------------------------
# --config FILE.yaml
def test_config_file_with_a_command_line_override(tmp_path):
    import evaluate
    import train
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model_name_or_path: m\ndata: d.jsonl\noutput_dir: o\nlearning_rate: 2e-6\nepochs: 3\n"
                   "no_packing: true\nlr_scheduler: linear\ngradient_checkpointing: true\n", encoding="utf-8")
    a = common.parse_args(train.Args, None, ["--config", str(cfg), "--epochs", "5"])  # the flag wins
    assert (a.model, a.lr, a.epochs, a.packing, a.lr_scheduler, a.gradient_checkpointing) == \
        ("m", 2e-6, 5, False, "linear", True)
    later = tmp_path / "later.yaml"
    later.write_text("epochs: 4\npacking: true\n", encoding="utf-8")
    a = common.parse_args(train.Args, None, ["--config", str(cfg), str(later)])  # later files win
    assert (a.epochs, a.packing, a.lr) == (4, True, 2e-6)
    ev = tmp_path / "ev.yaml"
    ev.write_text("benchmarks: [gsm8k, math500]\nn: 4\ntemperature: 0\nsystem_prompt: null\n", encoding="utf-8")
    e = common.parse_args(evaluate.Args, None, ["--config", str(ev)])
    assert (e.benchmarks, e.n, e.temperature, e.system_prompt) == (["gsm8k", "math500"], 4, 0.0, None)


@pytest.mark.parametrize("text,message", [
    ("lrr: 1e-5\n", "key 'lrr': not a flag of"),
    ("lr: fast\n", "key 'lr': 'fast' is not a valid float"),
    ("epochs: 2.5\n", "key 'epochs': 2.5 is not a valid int"),
    ("lr_scheduler: cosine_restarts\n", "key 'lr_scheduler': 'cosine_restarts' is not one of 'cosine'"),
    ("lr: 1e-5\nlearning_rate: 2e-5\n", "key 'learning_rate': the same flag as 'lr'"),
    ("epochs: [1, 2]\n", "key 'epochs': expected one value, got a YAML list"),
    ("packing: maybe\n", "key 'packing': 'maybe' is not a valid"),
    ("seed: null\n", "key 'seed': null is not allowed"),
    ("config: other.yaml\n", "key 'config': not a flag"),
    ("- lr\n- 1e-5\n", "expected `flag: value` lines (a YAML mapping), got list"),
    ("lr: [1e-5\n", "not valid YAML"),
])
def test_config_refuses_bad_keys_and_values_naming_the_file_and_key(tmp_path, text, message):
    import train
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(common.DataError) as e:
        common.parse_args(train.Args, None, ["--model", "m", "--data", "d", "--output_dir", "o", "--config", str(cfg)])
    assert message in str(e.value) and str(cfg) in str(e.value) and "\n" not in str(e.value)


def test_config_errors_are_one_line_from_the_command_line(tmp_path):
    from conftest import run_script
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: m\ndata: d\noutput_dir: o\nwarmup: 0.1\n", encoding="utf-8")
    p = run_script("train.py", "--config", cfg, check=False)
    assert p.returncode == 2 and p.stderr.strip() == f"error: {cfg}: key 'warmup': not a flag of train.py (see --help)"
    p = run_script("train.py", "--config", tmp_path / "missing.yaml", check=False)
    assert p.returncode == 2 and "missing.yaml: file not found" in p.stderr and "Traceback" not in p.stderr


# ----------------------------------------------------------------------------------------------------------------
# One place for each paper setting: configs/<paper>/<stage>.yaml
SETTINGS_FILES = sorted(str(p.relative_to(common.ROOT)) for p in (common.ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SETTINGS_FILES)
def test_every_settings_file_is_valid_for_its_stage(path):
    from transformers import HfArgumentParser
    p = common.ROOT / path
    mod = importlib.import_module(p.stem)
    values = {a.dest: v for a, v in common.read_config(HfArgumentParser(mod.Args), p).items()}
    assert values, path
    for key in ("preset", "protocol"):  # configs/<paper>/: the setting it names is its folder's
        if key in values:
            assert values[key] == p.parent.name, path


def test_preset_and_protocol_are_their_settings_files():
    import evaluate
    import train
    req = ["--model", "Qwen/Qwen2.5-Math-7B-Instruct", "--data", "d", "--output_dir", "o"]
    for paper in ("qfft", "upft"):
        by_name = train.resolve(common.parse_args(train.Args, None, req + ["--preset", paper]))
        by_file = train.resolve(common.parse_args(train.Args, None, req + ["--config", f"configs/{paper}/train.yaml"]))
        assert by_name == by_file and by_name.preset == paper
        ev = ["--model", "Qwen/Qwen2.5-Math-7B-Instruct"]
        by_name = evaluate.resolve_protocol(common.parse_args(evaluate.Args, None, ev + ["--protocol", paper]))
        by_file = evaluate.resolve_protocol(common.parse_args(evaluate.Args, None, ev + [
            "--config", f"configs/{paper}/evaluate.yaml"]))
        assert by_name == by_file and by_name.protocol == paper
    # the values the published numbers were made with (QFFT Table 5 / §4.1, UPFT App. B / eval.py)
    q = train.resolve(common.parse_args(train.Args, None, req + ["--preset", "qfft"]))
    assert (q.lr, q.epochs, q.global_batch_size, q.warmup_ratio, q.weight_decay, q.max_len) == \
        (1e-5, 6, 8, 0.1, 1e-4, 16384)
    u = train.resolve(common.parse_args(train.Args, None, req + ["--preset", "upft"]))
    assert (u.lr, u.epochs, u.global_batch_size, u.lr_scheduler, u.adam_beta2, u.max_len) == \
        (1e-6, 2, 64, "constant_with_warmup", 0.95, 4096)
    e = evaluate.resolve_protocol(common.parse_args(evaluate.Args, None, ["--model", "M", "--protocol", "upft"]))
    assert (e.n, e.temperature, e.max_tokens, e.extraction, e.max_model_len, e.n_by_benchmark) == \
        (1, 0.0, 16384, "box_or_answer_is", 8192, "")
    e = evaluate.resolve_protocol(common.parse_args(evaluate.Args, None, ["--model", "M"]))
    assert (e.n, e.temperature, e.top_p, e.max_tokens, e.system_prompt, e.n_by_benchmark, e.max_model_len) == \
        (16, 0.6, 1.0, 32768, "eval", "gpqa=4,mmlu_pro=4", None)


BENCH_WITH_ARGS = ["cpu_speed", "grading_speed", "sample_overhead", "scaleout"]


@pytest.mark.parametrize("name", BENCH_WITH_ARGS)
def test_benchmark_help_renders(name, capsys):
    """The benchmarks' --help goes through the same parser (a bare % in a help text crashes argparse's formatting)."""
    sys.path.insert(0, str(common.ROOT / "bench"))
    try:
        mod = importlib.import_module(name)
    finally:
        sys.path.remove(str(common.ROOT / "bench"))
    with pytest.raises(SystemExit) as e:
        common.parse_args(mod.Args, mod.__doc__, ["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and help_problems(out) == [], out[-2000:]
