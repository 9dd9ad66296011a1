"""rak.py: RAK / AES by hand-computed cases, and the tables and figures on synthetic evaluate.py outputs."""
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest

import common
import rak
import sources
from conftest import run_script


def write_bench(d, bench, recs):
    """An evaluate.py output file DIR/<bench>.jsonl from {"id", "correct", "long_cot", "num_tokens", ["level"]}."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{bench}.jsonl", "w") as f:
        for r in recs:
            n = len(r["correct"])
            full = {"question": "q", "gold": "1", "responses": ["r"] * n, "preds": ["1"] * n,
                    "finish_reasons": ["stop"] * n, **r}
            f.write(json.dumps(full) + "\n")


def recs(correct, long_cot, tokens, levels=None, ids=None):
    correct, long_cot, tokens = np.asarray(correct, bool), np.asarray(long_cot, bool), np.asarray(tokens)
    out = []
    for q in range(correct.shape[0]):
        r = {"id": ids[q] if ids else f"q{q}", "correct": correct[q].tolist(), "long_cot": long_cot[q].tolist(),
             "num_tokens": [int(x) for x in tokens[q]]}
        if levels is not None:
            r["level"] = levels[q]
        out.append(r)
    return out


def bench_from(tmp_path, name, correct, long_cot, tokens=None, ids=None):
    correct = np.asarray(correct, bool)
    tokens = np.full(correct.shape, 100) if tokens is None else tokens
    write_bench(tmp_path / name, "gsm8k", recs(correct, long_cot, tokens, ids=ids))
    return rak.load_benchmark(tmp_path / name / "gsm8k.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# κ by hand
def test_kappa_hand_computed():
    k = rak.kappa([1, 1, 1, 0, 0], [1, 1, 0, 0, 1])
    assert (k["TP"], k["FN"], k["FP"], k["TN"]) == (2, 1, 1, 1)
    assert k["p_o"] == pytest.approx(3 / 5)
    assert k["p_e"] == pytest.approx((3 * 3 + 2 * 2) / 25)  # (TP+FP)(TP+FN) + (FN+TN)(FP+TN)
    assert k["kappa"] == pytest.approx((0.6 - 0.52) / 0.48)
    # perfect disagreement: long CoT exactly on the solvable questions
    k = rak.kappa([1, 0, 1, 0], [0, 1, 0, 1])
    assert (k["TP"], k["FN"], k["FP"], k["TN"]) == (0, 2, 2, 0) and k["kappa"] == pytest.approx(-1.0)
    # perfect agreement
    assert rak.kappa([1, 0, 0], [1, 0, 0])["kappa"] == pytest.approx(1.0)


def test_kappa_all_long_all_short_and_pe_one():
    # all long-CoT, mixed solvability: p_o = p_e = share unsolvable -> κ = 0
    k = rak.kappa([1, 1, 0, 0], [0, 0, 0, 0])
    assert (k["TP"], k["FN"], k["FP"], k["TN"]) == (0, 2, 0, 2)
    assert k["p_o"] == pytest.approx(0.5) and k["p_e"] == pytest.approx(0.5) and k["kappa"] == 0
    # all short-CoT, 3 of 4 solvable
    k = rak.kappa([1, 1, 1, 0], [1, 1, 1, 1])
    assert (k["TP"], k["FN"], k["FP"], k["TN"]) == (3, 0, 1, 0)
    assert k["p_o"] == pytest.approx(0.75) and k["p_e"] == pytest.approx(0.75) and k["kappa"] == pytest.approx(0)
    # p_e = 1: every question solvable and short (or unsolvable and long) -> κ = 0, flagged
    for s, sh in (([1, 1, 1], [1, 1, 1]), ([0, 0], [0, 0])):
        k = rak.kappa(s, sh)
        assert k["p_e"] == pytest.approx(1.0) and k["kappa"] == 0 and k["degenerate"]


def test_pe_one_warns(tmp_path, capsys):
    ref = bench_from(tmp_path, "ref", [[1, 1], [1, 1]], [[0, 0], [0, 0]])
    model = bench_from(tmp_path, "m", [[1, 1], [1, 1]], [[0, 0], [0, 0]])  # all short, all solvable
    value, det = rak.rak(ref, model, "index", "ref", "m", "gsm8k")
    assert value == 0 and all(d["degenerate"] for d in det)
    assert "p_e = 1" in capsys.readouterr().err


def test_rak_100_when_long_exactly_on_reference_failures(tmp_path):
    rng = np.random.default_rng(0)
    correct = rng.random((12, 4)) < 0.5
    correct[0], correct[1] = True, False  # every sample index has both solvable and unsolvable questions
    ref = bench_from(tmp_path, "ref", correct, np.zeros_like(correct))
    model = bench_from(tmp_path, "m", rng.random((12, 4)) < 0.5, ~correct)
    value, det = rak.rak(ref, model, "index", "ref", "m", "gsm8k")
    assert value == pytest.approx(100.0)
    assert [d["FN"] + d["FP"] for d in det] == [0] * 4
    # the opposite policy (long exactly where the reference is right): p_o = 0, κ_i = -p_e / (1 - p_e) < 0
    model = bench_from(tmp_path, "m2", correct, correct)
    value, det = rak.rak(ref, model, "index", "ref", "m2", "gsm8k")
    assert [d["TP"] + d["TN"] for d in det] == [0] * 4
    assert [d["kappa"] for d in det] == pytest.approx([-d["p_e"] / (1 - d["p_e"]) for d in det]) and value < 0


def test_rak_matches_ids_not_order(tmp_path):
    correct = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], bool)
    ref = bench_from(tmp_path, "ref", correct, np.zeros_like(correct))
    perm = [2, 0, 3, 1]
    model = bench_from(tmp_path, "m", correct[perm], ~correct[perm], ids=[f"q{i}" for i in perm])
    assert rak.rak(ref, model, "index", "ref", "m", "gsm8k")[0] == pytest.approx(100.0)


def test_n_mismatch_error_and_solvable_mean(tmp_path):
    ref = bench_from(tmp_path, "ref", [[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]], np.zeros((4, 4)))
    model = bench_from(tmp_path, "m", np.ones((4, 2)), [[0, 0], [0, 1], [1, 1], [1, 0]])
    with pytest.raises(common.DataError, match=r"2 samples per question.*has 4.*--solvable mean"):
        rak.rak(ref, model, "index", "ref", "m", "gsm8k")
    # mean accuracy >= 0.5: q0 (0.5) and q1 (0.75) solvable; q2, q3 (0.25) not
    # sample 0: short = [1, 1, 0, 0] -> perfect agreement, κ = 1
    # sample 1: short = [1, 0, 0, 1] -> TP=1 FN=1 FP=1 TN=1: p_o = .5, p_e = .5, κ = 0
    value, det = rak.rak(ref, model, "mean", "ref", "m", "gsm8k")
    assert [d["kappa"] for d in det] == pytest.approx([1.0, 0.0])
    assert value == pytest.approx(50.0)


def test_id_mismatch_lists_ids(tmp_path):
    ref = bench_from(tmp_path, "ref", np.ones((8, 1)), np.zeros((8, 1)), ids=[f"a{i}" for i in range(8)])
    model = bench_from(tmp_path, "m", np.ones((8, 1)), np.zeros((8, 1)), ids=[f"a{i}" for i in range(1)] +
                       [f"b{i}" for i in range(7)])
    with pytest.raises(common.DataError) as e:
        rak.rak(ref, model, "index", "ref", "m", "gsm8k")
    msg = str(e.value)
    assert "7 only in 'ref'" in msg and "'a1'" in msg and "and 2 more" in msg and "7 only in 'm'" in msg
    assert "'b0'" in msg and "\n" not in msg


def test_aes_paper_check():
    # QFFT Table 3, GSM8K: base 88.2% / 1.8K tokens, QFFT 88.0% / 0.7K tokens -> AES 5.9
    assert round(rak.aes(88.2, 1800, 88.0, 700), 1) == 5.9
    # accuracy gain: beta branch; accuracy loss with no length gain: gamma branch
    assert rak.aes(50, 1000, 55, 500) == pytest.approx(100 * (0.1 * 0.5 + 0.1 * 0.1))
    assert rak.aes(50, 1000, 45, 1000, gamma=1.0) == pytest.approx(-10.0)
    assert rak.aes(50, 1000, 50, 1000) == 0
    # a base at 0% accuracy: 0% -> 0% is no accuracy change (length term only); 0% -> 10% is undefined (empty cell)
    assert rak.aes(0, 1000, 0, 500) == pytest.approx(5.0)
    assert math.isnan(rak.aes(0, 1000, 10, 500))


def test_delta_average_is_mean_of_per_benchmark_deltas(tmp_path):
    """QFFT Table 2, LIMO 7B: tokens 1.8K/5.8K/17.1K (SFT) vs 0.7K/4.1K/15.6K (QFFT) -> Δ Avg -33.1%, not the
    relative change of the average tokens (8.2K -> 6.8K, -17%)."""
    sft = {"gsm8k": 1775, "math500": 5800, "aime25": 17100}
    qfft = {"gsm8k": 690, "math500": 4100, "aime25": 15600}
    dirs = {}
    for name, toks in (("sft", sft), ("qfft", qfft)):
        for b, t in toks.items():
            write_bench(tmp_path / name, b, recs(np.ones((2, 1)), np.ones((2, 1)), np.full((2, 1), t)))
        dirs[name] = tmp_path / name
    rak.main(["--runs", *[f"{k}={v}" for k, v in dirs.items()], "--baseline", "sft", "--out",
              str(tmp_path / "o"), "--format", "csv"])
    row = pd.read_csv(tmp_path / "o" / "table_qfft.csv").set_index("run").loc["Δ qfft"]
    assert round(row["gsm8k_tokens"], 1) == -61.1 and round(row["avg_tokens"], 1) == -33.1


def test_bad_records_name_file_line_field(tmp_path):
    write_bench(tmp_path / "r", "gsm8k", [{"id": "a", "correct": [True], "long_cot": [False], "num_tokens": [3]},
                                          {"id": "b", "correct": [True], "num_tokens": [3]}])
    with pytest.raises(common.DataError, match=r"gsm8k.jsonl:2: missing field 'long_cot'"):
        rak.load_benchmark(tmp_path / "r" / "gsm8k.jsonl")
    write_bench(tmp_path / "s", "gsm8k", [{"id": "a", "correct": [1], "long_cot": [False], "num_tokens": [3]}])
    with pytest.raises(common.DataError, match=r"gsm8k.jsonl:1: field 'correct' must be a list of true/false"):
        rak.load_benchmark(tmp_path / "s" / "gsm8k.jsonl")
    write_bench(tmp_path / "t", "gsm8k", [{"id": "a", "correct": [True, False], "long_cot": [False],
                                           "num_tokens": [3, 4]}])
    with pytest.raises(common.DataError, match=r":1: fields .* different lengths"):
        rak.load_benchmark(tmp_path / "t" / "gsm8k.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# Tables on a synthetic 3-run setup
Q, N = 10, 4


def three_runs(tmp_path, drop=None):
    """base (short CoT, 1 token in 2 right), sft (always long, accurate), qfft (long exactly where base fails)."""
    rng = np.random.default_rng(1)
    base_c = rng.random((Q, N)) < 0.5
    base_c[0], base_c[1] = True, False
    levels = [1 + q % 5 for q in range(Q)]
    runs = {
        "base": (base_c, np.zeros((Q, N), bool), np.full((Q, N), 200)),
        "sft": (np.ones((Q, N), bool), np.ones((Q, N), bool), np.full((Q, N), 2000)),
        "qfft": (base_c | (rng.random((Q, N)) < 0.5), ~base_c, np.where(base_c, 300, 1500)),
    }
    dirs = {}
    for name, (c, lc, t) in runs.items():
        d = tmp_path / name
        for bench in ("gsm8k", "math500", "aime25"):
            if (name, bench) == drop:
                continue
            write_bench(d, bench, recs(c, lc, t, levels=levels if bench == "math500" else None))
        dirs[name] = d
    return dirs, runs


def run_main(dirs, out, *extra):
    argv = ["--runs", *[f"{k}={v}" for k, v in dirs.items()], "--reference", "base", "--out", str(out), *extra]
    rak.main(argv)


def test_tables_three_runs(tmp_path, capsys):
    dirs, runs = three_runs(tmp_path)
    out = tmp_path / "res"
    run_main(dirs, out, "--baseline", "sft")
    md = capsys.readouterr().out
    assert "QFFT Table 2" in md and "Δ qfft" in md and "| GSM8K Acc" in md
    aes_md = md.split("QFFT Table 3")[1].split("###")[0]
    sft_row = next(line for line in aes_md.splitlines() if line.startswith("| sft "))
    assert [x.strip() for x in sft_row.split("|")[1:-1]][3::3] == ["-"] * 4  # the AES base's own cells, as in the paper

    t2 = pd.read_csv(out / "table_qfft.csv")
    cols = ["run"] + [f"{b}_{m}" for b in ("gsm8k", "math500", "aime25") for m in ("acc", "tokens", "rak")] + \
        ["avg_acc", "avg_tokens", "avg_rak"]
    assert list(t2.columns) == cols
    assert list(t2.run) == ["base", "Δ base", "sft", "qfft", "Δ qfft"]
    row = t2.set_index("run")
    c, lc, t = runs["qfft"]
    assert row.loc["qfft", "gsm8k_acc"] == pytest.approx(100 * c.mean())
    assert row.loc["qfft", "gsm8k_tokens"] == pytest.approx(t.mean())  # raw tokens, not K
    assert row.loc["qfft", "math500_rak"] == pytest.approx(100.0)
    assert row.loc["sft", "gsm8k_acc"] == 100 and row.loc["sft", "gsm8k_tokens"] == 2000
    assert row.loc["sft", "gsm8k_rak"] == pytest.approx(0.0)  # always long: no agreement beyond chance
    assert row.loc["Δ qfft", "gsm8k_acc"] == pytest.approx(100 * c.mean() - 100)
    assert row.loc["Δ qfft", "gsm8k_tokens"] == pytest.approx(100 * (t.mean() - 2000) / 2000)
    assert row.loc["Δ qfft", "avg_rak"] == pytest.approx(100.0)
    assert row.loc["Δ qfft", "avg_tokens"] == pytest.approx(np.mean([row.loc["Δ qfft", f"{b}_tokens"]
                                                                   for b in ("gsm8k", "math500", "aime25")]))
    assert row.loc["qfft", "avg_acc"] == pytest.approx(100 * c.mean())

    t3 = pd.read_csv(out / "table_aes.csv").set_index("run")
    assert list(t3.columns)[:3] == ["gsm8k_acc", "gsm8k_tokens", "gsm8k_aes"] and "avg_aes" in t3.columns
    assert t3.loc["qfft", "gsm8k_aes"] == pytest.approx(rak.aes(100, 2000, 100 * c.mean(), t.mean()))
    assert math.isnan(t3.loc["sft", "avg_aes"]) and math.isnan(t3.loc["sft", "gsm8k_aes"])  # the AES base: '-'
    assert t3.loc["qfft", "avg_aes"] == pytest.approx(np.mean([t3.loc["qfft", f"{b}_aes"]
                                                               for b in ("gsm8k", "math500", "aime25")]))

    t1 = pd.read_csv(out / "table_upft.csv")
    assert list(t1.columns) == ["run", "gsm8k_acc", "math500_acc", "aime25_acc", "avg_acc"]
    lcr = pd.read_csv(out / "long_cot.csv").set_index("run")
    assert list(lcr.columns) == ["gsm8k_long_cot", "math500_long_cot", "aime25_long_cot", "avg_long_cot"]
    assert lcr.loc["sft", "avg_long_cot"] == 100 and lcr.loc["base", "gsm8k_long_cot"] == 0
    for name in ("table_qfft", "table_aes", "table_upft", "long_cot"):
        tex = (out / f"{name}.tex").read_text()
        assert "\\begin{tabular}" in tex and "\\bottomrule" in tex
    assert "$\\Delta$ qfft" in (out / "table_qfft.tex").read_text()
    det = pd.read_csv(out / "rak_detail.csv")
    assert len(det) == 3 * 3 * N and {"TP", "FN", "FP", "TN", "p_o", "p_e", "kappa"} <= set(det.columns)
    assert json.loads((out / "meta.json").read_text())["settings"]["reference"] == "base"
    # the same command again recomputes; other settings into the same OUT need --overwrite
    run_main(dirs, out, "--baseline", "sft")
    with pytest.raises(common.DataError, match="other settings.*--overwrite"):
        run_main(dirs, out, "--baseline", "qfft")
    run_main(dirs, out, "--baseline", "qfft", "--overwrite")
    assert list(pd.read_csv(out / "table_qfft.csv").run) == ["base", "Δ base", "sft", "Δ sft", "qfft"]


def test_missing_benchmark_is_an_empty_cell(tmp_path, capsys):
    dirs, _ = three_runs(tmp_path, drop=("sft", "aime25"))
    out = tmp_path / "res"
    run_main(dirs, out, "--format", "csv")
    captured = capsys.readouterr()
    assert "no aime25.jsonl" in captured.err
    assert "empty: no results for sft/aime25" in captured.out
    t2 = pd.read_csv(out / "table_qfft.csv").set_index("run")
    assert math.isnan(t2.loc["sft", "aime25_acc"]) and math.isnan(t2.loc["sft", "avg_acc"])
    assert not math.isnan(t2.loc["sft", "gsm8k_acc"]) and not math.isnan(t2.loc["qfft", "avg_acc"])
    assert not (out / "table_qfft.tex").exists()  # --format csv only
    # the reference missing a benchmark: no RAK there, the rest still computed
    dirs, _ = three_runs(tmp_path / "b", drop=("base", "gsm8k"))
    run_main(dirs, tmp_path / "res2", "--format", "csv")
    assert "RAK empty for gsm8k" in capsys.readouterr().out
    t2 = pd.read_csv(tmp_path / "res2" / "table_qfft.csv").set_index("run")
    assert math.isnan(t2.loc["qfft", "gsm8k_rak"]) and t2.loc["qfft", "math500_rak"] == pytest.approx(100)


def test_train_stats_and_plots(tmp_path, capsys):
    dirs, _ = three_runs(tmp_path)
    # prepare.py's keys (total_tokens there includes the prompts: not used), and other spellings
    (tmp_path / "upft.stats.json").write_text(json.dumps({"examples": 4, "trained_tokens": 1000, "total_tokens": 9000,
                                                         "completion_tokens_mean": 250.01}))
    (tmp_path / "sft.stats.json").write_text(json.dumps({"n_examples": 10, "avg_completion_tokens": 300.0}))
    out = tmp_path / "res"
    run_main(dirs, out, "--train_stats", f"qfft={tmp_path / 'upft.stats.json'}",
             f"sft={tmp_path / 'sft.stats.json'}", "--plots", "--benchmarks", "math500,gsm8k")
    t1 = pd.read_csv(out / "table_upft.csv").set_index("run")
    assert list(t1.columns) == ["math500_acc", "gsm8k_acc", "avg_acc", "train_avg_tokens", "train_total_tokens"]
    assert t1.loc["qfft", "train_avg_tokens"] == 250 and t1.loc["qfft", "train_total_tokens"] == 1000
    assert t1.loc["sft", "train_total_tokens"] == 3000 and math.isnan(t1.loc["base", "train_avg_tokens"])
    upft_md = capsys.readouterr().out.split("UPFT Table 1")[1].split("###")[0]
    base_row = next(line for line in upft_md.splitlines() if line.startswith("| base "))
    assert [x.strip() for x in base_row.split("|")[1:-1]][-2:] == ["-", "-"]  # untuned: not applicable, not empty
    for png in ("long_cot_by_level.png", "acc_vs_tokens.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000
    (tmp_path / "bad.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(common.DataError, match="cannot find the trained-token counts.*foo"):
        run_main(dirs, out, "--train_stats", f"qfft={tmp_path / 'bad.json'}")


def test_pe_one_note_and_plots_without_matplotlib(tmp_path, capsys, monkeypatch):
    dirs, _ = three_runs(tmp_path)
    # sft is long-CoT everywhere; make the reference fail everywhere on aime25 -> p_e = 1 at every index
    write_bench(dirs["base"], "aime25", recs(np.zeros((Q, N)), np.zeros((Q, N)), np.full((Q, N), 50)))
    run_main(dirs, tmp_path / "o", "--format", "csv", "--benchmarks", "aime25")
    cap = capsys.readouterr()
    assert "κ_i set to 0 where p_e = 1" in cap.out and f"sft/aime25 ({N} of {N})" in cap.out
    assert cap.err.count("p_e = 1") == 1  # one warning per run and benchmark, not per sample index
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(common.DataError, match="--plots needs matplotlib"):
        run_main(dirs, tmp_path / "o2", "--plots")
    assert not (tmp_path / "o2").exists()


def test_bad_directories(tmp_path):
    dirs, _ = three_runs(tmp_path)
    with pytest.raises(common.DataError, match="run 'x': .*nope is not a directory"):
        run_main({**dirs, "x": tmp_path / "nope"}, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.DataError, match="has no <benchmark>.jsonl files"):
        run_main({**dirs, "e": tmp_path / "empty"}, tmp_path / "o")
    with pytest.raises(common.DataError, match="--baseline zzz: not one of the runs"):
        run_main(dirs, tmp_path / "o", "--baseline", "zzz")
    with pytest.raises(common.DataError, match="--benchmarks: no run has gpqa"):
        run_main(dirs, tmp_path / "o", "--benchmarks", "gsm8k,gpqa")


def test_cli_subprocess(tmp_path):
    dirs, _ = three_runs(tmp_path)
    out = tmp_path / "res"
    p = run_script("rak.py", "--runs", *[f"{k}={v}" for k, v in dirs.items()], "--baseline", "sft",
                   "--out", out, timeout=120)
    assert "Δ qfft" in p.stdout and "AES" in p.stdout
    assert {f.name for f in out.iterdir()} >= {"table_qfft.csv", "table_aes.csv", "table_upft.csv", "long_cot.csv",
                                               "tables.md", "table_qfft.tex", "meta.json"}
    p = run_script("rak.py", "--runs", f"base={dirs['base']}", f"bad={tmp_path / 'nope'}", "--out", out,
                   check=False, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "is not a directory" in p.stderr


def test_counted_tokens_win_over_num_tokens(tmp_path):
    """evaluate.py --count_tokenizer stores counted_tokens (one tokenizer for every model): rak uses them."""
    import rak
    p = tmp_path / "gsm8k.jsonl"
    common.write_jsonl(p, [{"id": "a", "correct": [True], "long_cot": [False], "num_tokens": [10],
                            "counted_tokens": [7]}])
    assert rak.load_benchmark(p).tokens.tolist() == [[7.0]]
    assert sources.label("gpqa_open") == "GPQA (open)"


def test_long_cot_rule_recomputes_from_responses(tmp_path, capsys):
    """--long_cot_rule paper|qfft_code: long_cot recomputed from the responses (paper: the run's reflect words);
    default: what each run's evaluate.py stored, with a warning when the runs used different rules."""
    p = tmp_path / "a" / "gsm8k.jsonl"
    p.parent.mkdir()
    common.write_jsonl(p, [{"id": "a", "correct": [True, True, False], "long_cot": [True, True, True],
                            "num_tokens": [1, 1, 1],
                            "responses": ["Wait, no.", "wait wait wait wait", "Hmm, alternatively x"]}])
    assert rak.load_benchmark(p).long_cot.tolist() == [[True, True, True]]  # stored
    assert rak.load_benchmark(p, "qfft_code").long_cot.tolist() == [[False, True, False]]
    assert rak.load_benchmark(p, "paper", "hmm").long_cot.tolist() == [[False, False, True]]
    common.write_json(tmp_path / "a" / "meta.json", {"reflect_words": "hmm", "settings": {"long_cot_rule": "paper"}})
    (tmp_path / "b").mkdir()
    common.write_jsonl(tmp_path / "b" / "gsm8k.jsonl", common.read_jsonl(p))
    common.write_json(tmp_path / "b" / "meta.json", {"settings": {"long_cot_rule": "qfft_code"}})
    rak.main(["--runs", f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--out", str(tmp_path / "o1")])
    assert "runs were evaluated with different long-CoT rules (a: paper, b: qfft_code)" in capsys.readouterr().err
    rak.main(["--runs", f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--out", str(tmp_path / "o2"),
              "--long_cot_rule", "paper"])
    meta = json.loads((tmp_path / "o2" / "meta.json").read_text())
    assert meta["settings"]["long_cot_rule"] == "paper"
    assert meta["metrics"]["a"]["gsm8k"]["long_cot"] == pytest.approx(100 / 3)   # a's reflect words: hmm
    assert meta["metrics"]["b"]["gsm8k"]["long_cot"] == pytest.approx(200 / 3)   # b's: wait (the default)
    with pytest.raises(common.DataError, match="gsm8k.jsonl:1: missing field 'responses'"):
        q = tmp_path / "c" / "gsm8k.jsonl"
        q.parent.mkdir()
        common.write_jsonl(q, [{"id": "a", "correct": [True], "long_cot": [True], "num_tokens": [1]}])
        rak.load_benchmark(q, "qfft_code")
# ----------------------------------------------------------------------------------------------------------------
# --ci, bootstrap intervals over questions
def noisy_runs(tmp_path, q, seed=3, n=4):
    """base (short, ~60% right), sft (long, ~75%, longer), qfft (long mostly where base fails): q questions."""
    rng = np.random.default_rng(seed)
    base_c = rng.random((q, n)) < 0.6
    runs = {"base": (base_c, rng.random((q, n)) < 0.1, rng.integers(100, 400, (q, n))),
            "sft": (rng.random((q, n)) < 0.75, rng.random((q, n)) < 0.9, rng.integers(800, 3000, (q, n))),
            "qfft": (base_c | (rng.random((q, n)) < 0.3), ~base_c ^ (rng.random((q, n)) < 0.2),
                     rng.integers(200, 1500, (q, n)))}
    dirs = {}
    for name, (c, lc, t) in runs.items():
        for bench in ("gsm8k", "math500"):
            write_bench(tmp_path / name, bench, recs(c, lc, t))
        dirs[name] = tmp_path / name
    return dirs


def test_bootstrap_with_unit_weights_is_the_point_estimate(tmp_path, monkeypatch):
    """Every question drawn once: each resample reproduces the tables' own numbers (acc, tokens, long-CoT, RAK,
    averages and Δ rows), so the bootstrap recomputes exactly the published metrics."""
    dirs = noisy_runs(tmp_path, 30)
    names, benches = list(dirs), ["gsm8k", "math500"]
    data = {r: {b: rak.load_benchmark(dirs[r] / f"{b}.jsonl") for b in benches} for r in names}
    monkeypatch.setattr(rak, "question_weights", lambda ids, k, seed, b: np.ones((k, len(ids)), np.float32))
    boot = rak.bootstrap(data, names, benches, "base", "sft", "index", 3, 0)
    for r in names:
        for b in benches:
            s = rak.summarize(data[r][b])
            point = {"acc": s["acc"], "tokens": s["tokens"], "long_cot": s["long_cot"],
                     "rak": rak.rak(data["base"][b], data[r][b], "index", "base", r, b)[0]}
            for m, v in point.items():
                assert np.allclose(boot[r][f"{b}_{m}"], v), (r, b, m, boot[r][f"{b}_{m}"][0], v)
    assert np.allclose(boot["Δ qfft"]["avg_acc"], np.mean([rak.summarize(data["qfft"][b])["acc"]
                                                           - rak.summarize(data["sft"][b])["acc"] for b in benches]))
    k = rak.kappa_counts([3, 0], [1, 0], [2, 5], [4, 0])
    assert k[0] == pytest.approx(rak.kappa(*_cells(3, 1, 2, 4))["kappa"]) and k[1] == 0.0  # p_e = 1 -> 0


def _cells(tp, fn, fp, tn):
    solvable = [True] * (tp + fn) + [False] * (fp + tn)
    short = [True] * tp + [False] * fn + [True] * fp + [False] * tn
    return np.array(solvable), np.array(short)


def ci_widths(tmp_path, q, *extra):
    dirs = noisy_runs(tmp_path / f"q{q}", q)
    out = tmp_path / f"res{q}"
    run_main(dirs, out, "--baseline", "sft", "--ci", "0.95", "--ci_resamples", "400", *extra)
    return pd.read_csv(out / "table_qfft.csv").set_index("run"), out


def test_ci_contains_the_point_estimate_and_shrinks_with_more_questions(tmp_path, capsys):
    small, out = ci_widths(tmp_path, 25)
    big, _ = ci_widths(tmp_path, 400)
    cols = [c for c in small.columns if not c.endswith(("_lower", "_upper")) and f"{c}_lower" in small.columns]
    assert {"gsm8k_acc", "gsm8k_tokens", "gsm8k_rak", "avg_acc", "avg_tokens", "avg_rak"} <= set(cols)
    checked = 0
    for t in (small, big):
        for run in t.index:
            for c in cols:
                if np.isnan(t.loc[run, c]):
                    continue
                lo, v, hi = t.loc[run, f"{c}_lower"], t.loc[run, c], t.loc[run, f"{c}_upper"]
                assert lo <= v + 1e-9 and v <= hi + 1e-9, (run, c, lo, v, hi)
                checked += 1
    assert checked >= 2 * 5 * len(cols) - 2 * len(cols) // 2, checked  # rows: 3 runs + 2 Δ rows
    shrink = []
    for run in ("base", "sft", "qfft", "Δ qfft"):
        for c in ("gsm8k_acc", "gsm8k_tokens", "math500_rak", "avg_acc"):
            w_small = small.loc[run, f"{c}_upper"] - small.loc[run, f"{c}_lower"]
            w_big = big.loc[run, f"{c}_upper"] - big.loc[run, f"{c}_lower"]
            shrink.append(w_big / w_small)
            assert w_big < 0.6 * w_small, (run, c, w_small, w_big)  # 16x the questions: ~1/4 of the width
    assert np.median(shrink) < 0.4, shrink
    md = (out / "tables.md").read_text()
    assert " ± " in md and "95% percentile bootstrap interval over questions (400 resamples, seed 0" in md
    assert "$\\pm$" in (out / "table_qfft.tex").read_text()
    assert "gsm8k_acc_lower" in (out / "table_upft.csv").read_text()
    assert json.loads((out / "meta.json").read_text())["settings"]["ci"] == 0.95
    capsys.readouterr()


def test_ci_is_seeded(tmp_path, capsys):
    dirs = noisy_runs(tmp_path, 20)
    for name, extra in (("a", []), ("b", []), ("c", ["--seed", "1"])):
        run_main(dirs, tmp_path / name, "--ci", "0.9", "--ci_resamples", "200", *extra)
    a, b, c = ((tmp_path / x / "table_qfft.csv").read_text() for x in "abc")
    assert a == b and a != c
    with pytest.raises(common.DataError, match="--ci must be a confidence level"):
        run_main(dirs, tmp_path / "d", "--ci", "95")
    p = tmp_path / "a" / "table_qfft.csv"
    assert "_lower" in p.read_text()
    run_main(dirs, tmp_path / "e")  # without --ci: no interval columns, no ±
    assert "_lower" not in (tmp_path / "e" / "table_qfft.csv").read_text()
    assert "±" not in (tmp_path / "e" / "tables.md").read_text()
    capsys.readouterr()


def test_benchmark_names_and_order_come_from_the_registry():
    """Table columns: registry benchmarks in registry order (the papers' column order), then other files sorted;
    each printed with its registry label."""
    import rak
    assert rak.order_benchmarks(["mmlu_pro", "zz", "gpqa", "aa", "gsm8k", "aime24"]) == \
        ["gsm8k", "aime24", "gpqa", "mmlu_pro", "aa", "zz"]
    assert all(sources.REGISTRY[b].label for b in sources.BENCHMARKS)
    assert sources.label("gpqa_open") == "GPQA (open)" and sources.label("my_file") == "my_file"
