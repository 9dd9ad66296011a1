"""Every recipe's commands, checked fast (no engine, no training): each recipe runs with DRY_RUN=FILE
(recipes/lib.sh records every stage command instead of running it), then every recorded command is parsed by its
stage's own argument parser and argument checks (--config files included), and the settings each command runs
with are compared with tests/recipe_settings.txt. Also pins the per-family prompts and per-data settings the recipes
choose."""
import dataclasses
import importlib
import json
import os
import shlex
import subprocess

import pytest

import common
from conftest import ROOT

RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.sh") if p.name != "lib.sh")
STAGES = ("sample.py", "prepare.py", "train.py", "evaluate.py", "rak.py")
LLAMA, QMATH, R1 = "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-Math-7B-Instruct", \
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"


def dry_run(tmp_path, recipe, **env):
    log = tmp_path / f"{recipe}-{len(list(tmp_path.iterdir()))}.cmds"
    e = {k: v for k, v in os.environ.items() if k not in ("MODEL", "DATA", "OUT", "CHAT_TEMPLATE", "SYSTEM_PROMPT")}
    e.update(DRY_RUN=str(log), OUT=str(tmp_path / "out" / recipe), **{k: str(v) for k, v in env.items()})
    p = subprocess.run(["bash", f"recipes/{recipe}"], cwd=ROOT, env=e, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return [shlex.split(line) for line in log.read_text().splitlines()]


def check(cmd):
    """One recorded command through its stage's parser (and check_args where the stage has one)."""
    assert cmd[0] == "python", cmd
    if cmd[1] == "-":  # an inline helper (qfft_low_resource.sh's question picker)
        return None
    assert cmd[1] in STAGES, cmd
    mod = importlib.import_module(cmd[1][:-3])
    try:
        args = common.parse_args(mod.Args, None, cmd[2:])  # --config files included
    except SystemExit:
        pytest.fail(f"does not parse: {shlex.join(cmd)}")
    if hasattr(mod, "check_args"):
        mod.check_args(args)
    for flag in ("--chat_template", "--deepspeed"):
        if flag in cmd:
            assert (ROOT / cmd[cmd.index(flag) + 1]).is_file(), cmd
    return cmd[1], args


PINNED = ROOT / "tests" / "recipe_settings.txt"
# fields that do not act in a prepare.py mode (recorded with the output, but it does not depend on them)
MODE_FIELDS = {"upft": {"prefix_len", "full_ratio", "prefix_rule", "full_pick"}, "mix": {"alpha", "mix_render"},
               "rft": {"select", "pairs"}, "noise": {"level", "noise_form"}}


def envs_for(recipe):
    """The scales every recipe is checked at: the paper's (per model family for UPFT, LIMO) and `make demo`'s."""
    tiny = dict(MODEL="models/smollm2-135m-instruct", NUM_QUESTIONS=8, SAMPLE_MAX_TOKENS=48, EPOCHS=1, GLOBAL_BATCH=8,
                MAX_LEN=512, NUM_GPUS=1, EVAL_LIMIT=4, EVAL_N=2, EVAL_MAX_TOKENS=32, BENCHMARKS="gsm8k", GRAD_CKPT="")
    if recipe.startswith("qfft"):  # `make demo`'s QFFT form: the tiny model is its own teacher
        tiny.update(DATA="teacher", TEACHER=tiny["MODEL"], QUESTIONS="gsm8k_train", BASE=tiny["MODEL"],
                    RELEASED=f"s1={tiny['MODEL']}")
    envs = {"paper": {}, "llama": {"MODEL": LLAMA}, "qmath-limo": {"MODEL": QMATH, "DATA": "limo"}, "r1": {"MODEL": R1},
            "tiny": tiny}
    return {k: v for k, v in envs.items() if "upft" in recipe or k not in ("llama", "r1")}


def effective(stage, a) -> dict:
    """What a stage will run with: presets and protocols filled in (train.resolve, evaluate.resolve_protocol), the
    system prompt prepare.py renders with, samples per benchmark; fields at their dataclass default left out."""
    mod = importlib.import_module(stage[:-3])
    if stage == "train.py":
        a = mod.resolve(a)
    if stage == "evaluate.py":
        a = mod.resolve_protocol(a)
        n = {b: mod.bench_n(a, b) for b in mod.parse_benchmarks(a.benchmarks)}
        a = dataclasses.replace(a, n_by_benchmark=json.dumps(n))
    d = dataclasses.asdict(a)
    if stage == "prepare.py":
        d["system_prompt"] = mod.resolve_system(a)
        for f in set().union(*(fs for m, fs in MODE_FIELDS.items() if m != a.mode)):
            d.pop(f, None)
    required = {f.name: None for f in dataclasses.fields(mod.Args)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    default = dataclasses.asdict(mod.Args(**required))
    return {k: v for k, v in d.items() if v != default.get(k) or k == "system_prompt"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_command_parses_to_its_pinned_settings(tmp_path, recipe):
    """Every command of every recipe, at every scale, parses (--config files included), and runs with exactly the
    settings pinned in tests/recipe_settings.txt: moving a value between a recipe, a configs/ file and the code
    must not change what runs. A deliberate change: UPDATE_RECIPE_SETTINGS=1 pytest tests/test_recipes_dry.py,
    and the diff of the pinned file shows it."""
    seen, lines = set(), []
    for scale, env in envs_for(recipe).items():
        for i, cmd in enumerate(dry_run(tmp_path, recipe, **env)):
            got = check(cmd)
            if got:
                seen.add(got[0])
                eff = json.dumps(effective(*got), sort_keys=True)
                lines.append(f"{recipe} {scale} {i} {got[0]} " + eff.replace(str(tmp_path / "out" / recipe), "$OUT")
                             .replace(str(tmp_path), "$TMP"))
    assert "rak.py" in seen and "evaluate.py" in seen  # every recipe ends with the paper's table
    pinned = [x for x in PINNED.read_text().splitlines() if x.startswith(recipe + " ")] if PINNED.exists() else []
    if os.environ.get("UPDATE_RECIPE_SETTINGS"):
        other = [x for x in PINNED.read_text().splitlines() if not x.startswith(recipe + " ")] \
            if PINNED.exists() else []
        PINNED.write_text("\n".join(sorted(other + lines, key=lambda x: RECIPES.index(x.split()[0]))) + "\n")
        return
    changed = [(p, x) for p, x in zip(pinned, lines) if p != x]
    assert len(pinned) == len(lines) and not changed, (
        f"{recipe}: {len(lines)} commands ({len(pinned)} pinned), {len(changed)} with other settings; first:\n"
        + ("\n".join(changed[0]) if changed else ""))


def args_of(cmds, stage, **match):
    out = []
    for cmd in cmds:
        if cmd[1] == stage:
            _, a = check(cmd)
            if all(getattr(a, k) == v for k, v in match.items()):
                out.append(a)
    return out


def test_upft_recipes_choose_prompt_per_model_family(tmp_path):
    for recipe in ("upft_table1.sh", "upft_rft.sh", "upft_prefix_sweep.sh"):
        for model, template, system in ((LLAMA, "configs/upft_llama31.jinja", "none"), (QMATH, None, "eval"),
                                        (R1, "configs/upft_deepseek_r1.jinja", "none")):
            cmds = dry_run(tmp_path, recipe, MODEL=model)
            staged = [a for s in ("sample.py", "prepare.py") for a in args_of(cmds, s)] + \
                args_of(cmds, "evaluate.py", model=model)
            assert len(staged) >= 3
            # sampling, training data and evaluation see the same prompt
            assert {(a.chat_template, a.system_prompt) for a in staged} == {(template, system)}, (recipe, model)
            # a trained model is evaluated with the template its checkpoint carries (train.py saves its data's)
            trained = [a for a in args_of(cmds, "evaluate.py") if a.model != model]
            assert trained and {(a.chat_template, a.system_prompt) for a in trained} == {(None, system)}
    # UPFT App. B: max length 16384 for LIMO and R1-distill, 4096 for PRM-12K
    assert {a.max_len for a in args_of(dry_run(tmp_path, "upft_table1.sh", MODEL=QMATH, DATA="limo"), "prepare.py")} \
        == {16384}
    assert {a.max_len for a in args_of(dry_run(tmp_path, "upft_table1.sh", MODEL=QMATH), "prepare.py")} == {4096}
    assert {a.max_len for a in args_of(dry_run(tmp_path, "upft_table1.sh", MODEL=R1), "train.py")} == {16384}
    rft = args_of(dry_run(tmp_path, "upft_rft.sh"), "prepare.py")
    assert [(a.mode, a.select) for a in rft] == [("rft", "first")]
    assert [a.n for a in args_of(dry_run(tmp_path, "upft_rft.sh"), "sample.py")] == [16]


def test_qfft_sft_system_prompt_per_data_set(tmp_path):
    for data, system in (("limo", "eval"), ("s1k", "default")):
        for recipe in ("qfft_table2.sh", "qfft_noise.sh", "qfft_mix_alpha.sh"):
            sft = [a for a in args_of(dry_run(tmp_path, recipe, DATA=data), "prepare.py") if a.mode != "qfft"]
            assert sft and {a.system_prompt for a in sft} == {system}, (recipe, data)


def test_low_resource_recipe_makes_the_papers_100_examples(tmp_path):
    cmds = dry_run(tmp_path, "qfft_low_resource.sh")
    assert [(a.n, a.data.endswith("questions.jsonl")) for a in args_of(cmds, "sample.py")] == [(10, True)]
    prep = args_of(cmds, "prepare.py")
    assert [(a.mode, a.max_questions, a.responses) for a in prep] == [("sft", 10, "all"), ("qfft", 10, "all")]
    assert {a.epochs for a in args_of(cmds, "train.py")} == {50}


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith("upft")])
def test_upft_recipes_judge_every_evaluation_and_gpqa_is_open(tmp_path, recipe):
    """UPFT judges every benchmark behind every published number (its eval parses --llm_judge with type=bool), its
    GPQA is the open-ended one, and its sampler's top-k is transformers' default 50 where a model sets none."""
    for env in ({}, {"MODEL": R1}, {"MODEL": QMATH, "DATA": "limo"}):
        cmds = dry_run(tmp_path, recipe, **env)
        evals = [c for c in cmds if c[1] == "evaluate.py"]
        assert evals, recipe
        for cmd in evals:
            _, a = check(cmd)
            benches = {b for x in a.benchmarks for b in x.split(",")}
            assert "gpqa" not in benches, (recipe, a.benchmarks)  # multiple-choice GPQA is not UPFT's
            assert a.judge == "KbsdJames/Omni-Judge" and a.judge_trust_remote_code, (recipe, cmd)
            assert not a.trust_remote_code  # the judge's remote code only, never the evaluated model's
        if recipe != "upft_prefix_sweep.sh":  # the sweep is MATH500 only
            assert all("gpqa_open" in ",".join(check(c)[1].benchmarks) for c in evals), recipe
        assert {check(c)[1].top_k_default for c in cmds if c[1] == "sample.py"} == {50}, recipe
    off = [check(c)[1] for c in dry_run(tmp_path, recipe, JUDGE="") if c[1] == "evaluate.py"]
    assert off and all(a.judge is None and not a.judge_trust_remote_code for a in off)
    bare = [check(c)[1] for c in dry_run(tmp_path, recipe, TRUST_JUDGE=0) if c[1] == "evaluate.py"]
    assert all(a.judge == "KbsdJames/Omni-Judge" and not a.judge_trust_remote_code for a in bare)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith("qfft")])
def test_qfft_recipes_keep_n_4_for_gpqa_and_mmlu_pro(tmp_path, recipe):
    """QFFT App. A.3 samples GPQA and MMLU-Pro 4 times whatever n the other benchmarks get."""
    import evaluate
    for env in ({"BENCHMARKS": "gsm8k,gpqa,mmlu_pro"}, {"BENCHMARKS": "gsm8k,gpqa,mmlu_pro", "EVAL_N": 8}):
        for cmd in dry_run(tmp_path, recipe, **env):
            if cmd[1] == "evaluate.py":
                a = evaluate.resolve_protocol(check(cmd)[1])
                assert [evaluate.bench_n(a, b) for b in ("gsm8k", "gpqa", "mmlu_pro")] == [a.n, 4, 4], (recipe, env)


def test_recipes_keep_every_gpu_busy(tmp_path):
    """BACKEND=ray (the default where nvidia-smi lists 2+ GPUs): every sample.py/evaluate.py command of every recipe
    runs GPUS/TP engine replicas on Ray, on the cluster of RAY_ADDRESS when given; BACKEND=local: one engine."""
    for recipe in RECIPES:
        staged = [a for cmd in dry_run(tmp_path, recipe, BACKEND="ray", GPUS=8, TP=2, RAY_ADDRESS="auto")
                  for a in [check(cmd)] if a and a[0] in ("sample.py", "evaluate.py")]
        assert staged, recipe
        got = {(a.backend, a.replicas, a.ray_address, a.tensor_parallel_size) for _, a in staged}
        assert got == {("ray", "4", "auto", 2)}, (recipe, got)
        local = [a for cmd in dry_run(tmp_path, recipe, BACKEND="local") for a in [check(cmd)]
                 if a and a[0] in ("sample.py", "evaluate.py")]
        assert {(a.backend, a.replicas, a.ray_address) for _, a in local} == {("local", None, None)}, recipe


SLURM = sorted(p.name for p in (ROOT / "recipes" / "slurm").glob("*.sbatch"))


def dry_slurm(tmp_path, template, *args, **env):
    log = tmp_path / f"{template}-{len(list(tmp_path.iterdir()))}.cmds"
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_", "BACKEND", "GPUS"))}
    e.update(DRY_RUN=str(log), OUT=str(tmp_path / "out"), **{k: str(v) for k, v in env.items()})
    p = subprocess.run(["bash", f"recipes/slurm/{template}", *map(str, args)], cwd=ROOT, env=e, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return [shlex.split(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("template", SLURM)
def test_slurm_template_parses(template):
    p = subprocess.run(["bash", "-n", f"recipes/slurm/{template}"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    head = (ROOT / "recipes" / "slurm" / template).read_text().splitlines()
    assert head[0] == "#!/usr/bin/env bash" and "#SBATCH --requeue" in head, template  # preempted jobs come back


def test_slurm_templates_commands_parse(tmp_path):
    """Each template's stage commands, recorded with DRY_RUN, through the stages' own parsers."""
    # the Ray cluster template around one stage, and around a whole recipe (which then samples and evaluates on it)
    cmds = dry_slurm(tmp_path, "ray.sbatch", "python", "sample.py", "--model", QMATH, "--data", "prm12k",
                     "--output", "runs/s.jsonl", "--backend", "ray", "--ray_address", "auto")
    assert [(c[1], a.backend, a.ray_address) for c in cmds for a in [check(c)[1]]] == [("sample.py", "ray", "auto")]
    staged = [a for c in dry_slurm(tmp_path, "ray.sbatch", "bash", "recipes/upft_table1.sh", MODEL=QMATH)
              for s, a in [check(c) or (None, None)] if s in ("sample.py", "evaluate.py")]
    assert len(staged) == 4 and {(a.backend, a.ray_address) for a in staged} == {("ray", "127.0.0.1:6379")}
    # multi-node training: train.py with --resume always
    (cmd,) = dry_slurm(tmp_path, "train.sbatch", "--model", QMATH, "--data", "d.jsonl", "--output_dir", "o",
                       "--preset", "qfft", "--deepspeed", "configs/ds_z3.json")
    stage, a = check(cmd)
    assert stage == "train.py" and a.resume and a.deepspeed == "configs/ds_z3.json"
    # the job array over shards, then the merge
    shard, merge = dry_slurm(tmp_path, "shards.sbatch", "--model", QMATH, "--data", "prm12k", "--output",
                             "runs/s.jsonl", SLURM_ARRAY_TASK_COUNT=16, SLURM_ARRAY_TASK_ID=3)
    (_, a), (_, m) = check(shard), check(merge)
    assert (a.num_shards, a.shard_index, a.output) == (16, 3, "runs/s.jsonl")
    assert m.merge_shards and (m.num_shards, m.output) == (16, "runs/s.jsonl")
