"""Training you can watch and share: train_loss.png, TensorBoard events, --push_to_hub against a local hub mock."""

import pytest

import common
import tracking
import train
from conftest import run_script
from hub_mock import HubMock


@pytest.fixture
def hub(monkeypatch):
    """The hub API on localhost: HF_ENDPOINT for subprocesses, huggingface_hub.constants for this process."""
    from huggingface_hub import constants
    m = HubMock()
    monkeypatch.setenv("HF_ENDPOINT", m.url)
    monkeypatch.setenv("HF_TOKEN", "hf_mock")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", m.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield m
    m.close()


def fake_log(d, n=5):
    common.write_jsonl(d / "train_log.jsonl", [{"step": i + 1, "epoch": (i + 1) / n, "loss": 2.0 / (i + 1),
                                               "lr": 1e-5 * (i + 1) / n, "grad_norm": 1.0, "tokens": 100,
                                               "mfu": 0.1} for i in range(n)])


def test_plot_loss_writes_a_png_of_loss_and_lr(tmp_path):
    fake_log(tmp_path)
    png = train.plot_loss(tmp_path / "train_log.jsonl", tmp_path / "train_loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert train.plot_loss(tmp_path / "missing.jsonl", tmp_path / "x.png") is None


def test_tensorboard_gets_every_numeric_field_per_step_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    t = tracking.Tracker("tensorboard", tmp_path, {"args": {"lr": 1e-5}, "data": {"examples": 3}}, resume=False)
    fake_log(tmp_path)
    for r in common.read_jsonl(tmp_path / "train_log.jsonl"):
        t.log(r)
    t.close()
    ea = EventAccumulator(str(tmp_path / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert tags == {"train/epoch", "train/loss", "train/lr", "train/grad_norm", "train/tokens", "train/mfu"}
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert ea.Scalars("train/loss")[-1].value == pytest.approx(0.4)
    assert "config" in " ".join(ea.Tags()["tensors"])


def test_report_to_a_missing_package_fails_before_training(monkeypatch):
    import builtins
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "wandb"
                        else real(name, *a, **k))
    with pytest.raises(common.DataError, match="pip install wandb"):
        tracking.Tracker.check("wandb")


def test_model_card_from_meta():
    meta = {"args": {"model": "Qwen/Qwen2.5-7B-Instruct", "preset": "qfft", "data": "d.jsonl", "lr": 1e-5,
                     "loss_reduction": "sample"},
            "data": {"examples": 1000, "tokens": 5, "trained_tokens": 4, "by_type": {"qfft": 1000}},
            "steps": 750, "git_commit": "abc"}
    card = train.model_card(meta, "me/qfft-7b")
    assert card.startswith("---\nbase_model: Qwen/Qwen2.5-7B-Instruct\n")
    assert "preset `qfft`" in card and "| lr | 1e-05 |" in card and "1000 examples" in card
    assert "2506.12860" in card and "2503.02875" in card


def test_push_checkpoint_dir_to_mock_hub(hub, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "checkpoints" / "step_2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_2" / "optim.pt").write_bytes(b"big")
    common.check_push("me/m")
    url = common.push_to_hub("me/m", tmp_path, "card", ignore=["checkpoints/**"])
    assert url.endswith("me/m") and hub.repos == [("model", "me/m")]
    assert hub.files["me/m"] == {"README.md": b"card", "model.safetensors": b"weights"}


def test_push_to_hub_offline_is_a_clear_error_not_a_no_op(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(common.DataError, match="HF_HUB_OFFLINE"):
        common.check_push("me/m")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(common.DataError, match="cannot reach"):
        common.check_push("me/m")
    with pytest.raises(common.DataError, match="USER/NAME"):
        common.check_push("not a repo")


def test_prepare_push_to_hub_uploads_the_dataset(hub, tmp_path, tiny_model):
    src = tmp_path / "s.jsonl"
    common.write_jsonl(src, [{"id": "a", "question": "1+1?", "responses": ["2"]}])
    out = tmp_path / "p.jsonl"
    run_script("prepare.py", "--input", src, "--output", out, "--model", tiny_model, "--mode", "qfft",
               "--push_to_hub", "me/p")
    files = hub.files["me/p"]
    assert set(files) == {"README.md", "p.jsonl", "p.jsonl.meta.json", "p.jsonl.stats.json"}
    assert files["p.jsonl"] == out.read_bytes() and "prepare.py" in files["README.md"].decode()
    assert hub.repos == [("dataset", "me/p")]
    p = run_script("prepare.py", "--input", src, "--output", out, "--model", tiny_model, "--mode", "qfft",
                   "--push_to_hub", "me/p", env={"HF_HUB_OFFLINE": "1"}, check=False)
    assert p.returncode == 2 and "HF_HUB_OFFLINE" in p.stderr


def scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(folder))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_evaluate_and_rak_report_their_metrics_to_tensorboard(tmp_path):
    """--report_to on the stages after training: evaluate.py's per-benchmark metrics, rak.py's table cells, read
    back from the event files (offline)."""
    ev = tmp_path / "eval"
    ev.mkdir()
    common.write_jsonl(ev / "gsm8k.jsonl", [
        {"id": f"q{i}", "question": "1+1?", "gold": "2", "answer_type": "math", "responses": [r"\boxed{2}", "Wait, 3"],
         "num_tokens": [4, 8], "finish_reasons": ["stop", "stop"]} for i in range(3)])
    run_script("evaluate.py", "--grade_only", "--output", ev, "--grade_workers", 1, "--report_to", "tensorboard")
    got = scalars(ev / "tensorboard")
    assert got["eval/gsm8k/acc"] == [(0, 50.0)] and got["eval/gsm8k/tokens"] == [(0, 6.0)]
    assert got["eval/gsm8k/long_cot_ratio"] == [(0, 50.0)] and len(got) >= 8, sorted(got)
    out = tmp_path / "tables"
    import rak
    rak.main(["--input", f"base={ev}", f"again={ev}", "--output", str(out), "--report_to", "tensorboard",
              "--run_name", "cmp"])
    got = scalars(out / "tensorboard" / "cmp")
    assert got["rak/again/gsm8k/acc"] == [(0, 50.0)] and got["rak/base/gsm8k/tokens"] == [(0, 6.0)]
    assert "rak/again/gsm8k/rak" in got and "rak/again/gsm8k/aes" in got, sorted(got)


def test_tracker_flattens_nested_metrics_to_numbers_only():
    m = {"gsm8k": {"acc": 50.0, "n": 2, "by_level": {"1": {"acc": None, "num_questions": 0}}, "note": "x", "ok": True}}
    assert tracking.flatten(m) == {"gsm8k/acc": 50.0, "gsm8k/n": 2, "gsm8k/by_level/1/num_questions": 0}
