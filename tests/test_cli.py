"""The command line is the manual: every flag of every stage has help, choices are refused by the parser."""
import dataclasses
import importlib

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
        assert f"--{f.name}" in out


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
