"""bench/gpu_check.py: `--tiny` runs every check on CPU and passes; a failing check makes the verdict FAIL and the
exit status non-zero."""
import json
import sys

import pytest

from conftest import ROOT, run_script

sys.path.insert(0, str(ROOT / "bench"))


def test_a_failing_check_fails_the_verdict(tmp_path, tiny_model, monkeypatch):
    import gpu_check
    import packing
    real = packing.linear_ce_chunked
    monkeypatch.setattr(packing, "linear_ce_chunked", lambda *a, **k: real(*a, **k) * 1.01)  # a wrong loss head
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    rc = gpu_check.main(["--tiny", "--only", "loss_head", "--out", str(tmp_path / "gc.json")])
    r = json.loads((tmp_path / "gc.json").read_text())
    assert rc == 1 and r["verdict"] == "FAIL"
    assert [row["status"] for row in r["rows"] if row["case"].startswith("chunked")] == ["fail"]


@pytest.mark.slow
def test_gpu_check_tiny_passes_on_cpu(tmp_path, tiny_model):
    """What CI runs: every check, tiny sizes (one train.py per data mix, one vLLM engine)."""
    p = run_script("bench/gpu_check.py", "--tiny", "--out", tmp_path / "gc.json",
                   env={"DS_ACCELERATOR": "cpu", "VLLM_CPU_KV_GB": "1"}, timeout=900)
    r = json.loads((tmp_path / "gc.json").read_text())
    assert r["verdict"] == "PASS" and "verdict: PASS" in p.stdout, p.stdout[-3000:]
    by = {}
    for row in r["rows"]:
        by.setdefault(row["check"], []).append(row)
    assert {"attention", "loss_head", "train", "round_trip", "sampling"} <= set(by)
    assert any(row["case"].startswith("packed_varlen") and row["status"] == "pass" for row in by["attention"])
    assert any(row["case"].startswith("control") and row["status"] == "pass" for row in by["attention"])
    assert [row["status"] for row in by["round_trip"]] == ["pass"]
    assert r["results"]["train_1gpu"]["upft"]["train_py"]["tokens_per_s"] > 0
