"""Sampling defaults follow the model wherever it lives: a hub name reads the same generation config as a path."""
import json
import subprocess
import sys

import models
from conftest import ROOT


def test_hub_name_and_local_copy_give_the_same_defaults(tmp_path):
    gen = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    local = tmp_path / "qwen-local"
    local.mkdir()
    (local / "generation_config.json").write_text(json.dumps(gen))
    # the same file as the hub's cached copy of Qwen/Fake-7B-Instruct (offline: read from the cache)
    cache = tmp_path / "hub"
    snap = cache / "models--Qwen--Fake-7B-Instruct" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "generation_config.json").write_text(json.dumps(gen))
    (cache / "models--Qwen--Fake-7B-Instruct" / "refs").mkdir()
    (cache / "models--Qwen--Fake-7B-Instruct" / "refs" / "main").write_text("a" * 40)
    code = "import models, json; print(json.dumps(models.generation_defaults('Qwen/Fake-7B-Instruct')))"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={"PATH": "", "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    from_hub = json.loads(p.stdout.strip().splitlines()[-1])
    assert from_hub == models.generation_defaults(str(local)) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20}


def test_sample_prints_the_chosen_sampling_and_its_source(tmp_path, capsys):
    import sample
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_p": 0.9}))
    s = sample.sampling_settings(sample.Args(model=str(tmp_path), data="d", output="o", top_k=5))
    assert (s["top_p"], s["top_k"]) == (0.9, 5)
    out = capsys.readouterr().out
    assert "top_p=0.9 (model's generation config)" in out and "top_k=5 (flag)" in out
