"""The paper recipes run unchanged at tiny scale (so they cannot rot): UPFT Table 1 end to end on the tiny model
through sample.py (vLLM CPU) -> prepare.py -> train.py (DeepSpeed ZeRO-3 CPU) -> evaluate.py -> rak.py, then a
second run that resumes (every stage skipped) and a run with other settings that is refused."""
import csv
import os
import subprocess
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def run_recipe(name, out, **env):
    e = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "DS_ACCELERATOR": "cpu",
         "VLLM_CPU_KV_GB": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "OUT": str(out),
         **{k: str(v) for k, v in env.items()}}
    return subprocess.run(["bash", f"recipes/{name}"], cwd=ROOT, env=e, capture_output=True, text=True, timeout=1500)


def test_upft_recipe_at_tiny_scale(tmp_path, tiny_model):
    out = tmp_path / "upft"
    tiny = dict(MODEL=tiny_model, DATA="prm12k", NUM_QUESTIONS=8, SAMPLE_MAX_TOKENS=48, EPOCHS=1, GLOBAL_BATCH=8,
                LR="2e-5", MAX_LEN=512, NUM_GPUS=1, EVAL_LIMIT=4, EVAL_MAX_TOKENS=32, BENCHMARKS="gsm8k", JUDGE="")
    p = run_recipe("upft_table1.sh", out, **tiny)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # every stage left its product
    assert len((out / "self.jsonl").read_text().splitlines()) == 8
    for m in ("upft", "sft"):
        assert (out / f"{m}.jsonl.stats.json").exists()
        assert (out / f"{m}-model" / "model.safetensors").exists()
    for r in ("base", "sft", "upft"):
        assert (out / f"eval-{r}" / "gsm8k.jsonl").exists()
    rows = {r["run"]: r for r in csv.DictReader(open(out / "tables" / "table_upft.csv"))}
    assert {"base", "sft", "upft"} <= set(rows)
    # UPFT trains far fewer tokens than SFT on the same samples (prefixes of 8 tokens + EOS)
    assert float(rows["upft"]["train_total_tokens"]) < float(rows["sft"]["train_total_tokens"])
    assert "UPFT Table 1" in p.stdout

    # the same command again resumes: every stage is already done
    t0 = time.time()
    p2 = run_recipe("upft_table1.sh", out, **tiny)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "already trained" in p2.stdout and time.time() - t0 < 120

    # other settings are refused, not silently mixed with the old outputs
    p3 = run_recipe("upft_table1.sh", out, **{**tiny, "PREFIX_LEN": 16})
    assert p3.returncode != 0 and "--overwrite" in (p3.stdout + p3.stderr)


def test_qfft_released_recipe_at_tiny_scale(tmp_path, tiny_model):
    """Evaluation only (no training): the cheapest real run of a new recipe. The tiny model stands in for both the
    Instruct reference and a released QFFT checkpoint; RAK of the reference against itself is 100."""
    out = tmp_path / "released"
    p = run_recipe("qfft_released.sh", out, BASE=tiny_model, RELEASED=f"s1={tiny_model}", EVAL_LIMIT=3, EVAL_N=2,
                   EVAL_MAX_TOKENS=24, BENCHMARKS="gsm8k")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {r["run"]: r for r in csv.DictReader(open(out / "tables" / "table_qfft.csv"))}
    assert {"base", "s1"} <= set(rows) and "gsm8k_rak" in rows["s1"]
    assert "QFFT Table 2" in p.stdout
