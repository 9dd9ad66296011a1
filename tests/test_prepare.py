"""prepare.py: every training-text rule of QFFT and UPFT pinned on the tiny model's tokenizer, plus the ablations
(mix, rft, noise), the length rules, the stats sidecar, determinism, the settings guard and bad input."""
import json
import random
import sys
from collections import Counter

import pytest

import common
import grading
import models
import sources
import prepare
from conftest import run_script

EOT = "<|im_end|>\n"  # SmolLM2's ChatML end of turn
EOS = "<|im_end|>"


def sentence(i: int) -> str:
    return (f"First we note that {i} plus {i} is {2 * i}. Wait, let me double check the sum once more. "
            f"Adding again gives {2 * i}! So the final answer is \\boxed{{{2 * i}}}.")


def write_sample(path, n=20, responses=None):
    """A sample.py-style file: n questions with 2 responses each (one correct, one wrong) and an empty one."""
    with open(path, "w") as f:
        for i in range(n):
            resp = responses(i) if responses else [sentence(i), f"It is \\boxed{{{2 * i + 1}}}.", ""]
            f.write(json.dumps({"id": f"q{i}", "question": f"What is {i}+{i}?", "answer": str(2 * i),
                                "responses": resp, "num_tokens": [0] * len(resp),
                                "finish_reasons": ["stop"] * len(resp)}) + "\n")
    return str(path)


def make_args(tiny_model, input, **kw):
    return prepare.Args(input=str(input), output="unused.jsonl", model=tiny_model, **kw)


def run(tokenizer, args):
    groups, dropped, _ = prepare.load_groups(args)
    groups = prepare.take_questions(groups, args.max_questions, args.seed)
    return prepare.build(args, tokenizer, groups, dropped)


def enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture
def sample(tmp_path):
    return write_sample(tmp_path / "s.jsonl")


# ---------------------------------------------------------------------------------------------------------------
# The rules
def test_qfft_rule_is_the_bare_response(tokenizer, tiny_model, sample):
    recs, stats = run(tokenizer, make_args(tiny_model, sample, mode="qfft"))
    assert len(recs) == 20 and stats["types"] == {"qfft": 20}
    for i, r in enumerate(recs):
        assert r == {"id": f"q{i}", "type": "qfft", "prompt": "", "completion": sentence(i), "source_id": f"q{i}"}
    recs, _ = run(tokenizer, make_args(tiny_model, sample, mode="qfft", qfft_eos=True))
    assert all(r["completion"] == sentence(i) + EOS for i, r in enumerate(recs))


def test_sft_rule_and_system_prompt_presets(tokenizer, tiny_model, sample):
    cases = {(None, None): None, ("qfft", None): None, ("upft", None): models.EVAL_SYSTEM_PROMPT,
             (None, "eval"): models.EVAL_SYSTEM_PROMPT, ("upft", "none"): None, (None, "Be brief."): "Be brief."}
    for (preset, sp), system in cases.items():
        recs, _ = run(tokenizer, make_args(tiny_model, sample, mode="sft", preset=preset, system_prompt=sp))
        for i, r in enumerate(recs):
            assert r["type"] == "sft"
            assert r["prompt"] == models.render_prompt(tokenizer, f"What is {i}+{i}?", system)
            # UPFT's code ends its SFT examples at the end of turn without the newline (train_utils/sft_dataset.py)
            assert r["completion"] == sentence(i) + (EOS if preset == "upft" else EOT)
    assert "SmolLM" in recs[0]["prompt"] or "Be brief." in recs[0]["prompt"]


def test_upft_prefix_and_full_examples(tokenizer, tiny_model, tmp_path):
    path = write_sample(tmp_path / "u.jsonl", n=23, responses=lambda i: ["Short." if i == 5 else sentence(i)])
    L, p = 8, 0.3
    args = make_args(tiny_model, path, mode="upft", prefix_len=L, full_ratio=p, preset="upft")
    recs, stats = run(tokenizer, args)
    full = [r for r in recs if r["type"] == "full"]
    prefix = [r for r in recs if r["type"] == "prefix"]
    assert len(recs) == 23 and len(full) == round(p * 23) == 7 and len(prefix) == 16
    eos_ids = enc(tokenizer, EOS)
    by_id = {f"q{i}": ("Short." if i == 5 else sentence(i)) for i in range(23)}
    for r in prefix:
        resp = by_id[r["id"]]
        q = f"What is {r['id'][1:]}+{r['id'][1:]}?"
        assert r["prompt"] == models.render_prompt(tokenizer, q + models.UPFT_PREFIX_INSTRUCTION,
                                                   models.EVAL_SYSTEM_PROMPT)
        ids = enc(tokenizer, resp)
        n = min(L, len(ids))
        assert enc(tokenizer, r["completion"]) == ids[:n] + eos_ids  # exactly the first L tokens, then EOS
        assert r["completion"].endswith(EOS) and resp.startswith(r["completion"][:-len(EOS)])
    assert stats["prefix_whole"] == (0 if "q5" in {r["id"] for r in full} else 1)
    for r in full:
        assert models.UPFT_PREFIX_INSTRUCTION not in r["prompt"]
        assert r["prompt"] == models.render_prompt(tokenizer, f"What is {r['id'][1:]}+{r['id'][1:]}?",
                                                   models.EVAL_SYSTEM_PROMPT)
        assert r["completion"] == by_id[r["id"]] + EOS  # UPFT strips the end of turn's newline
    # seeded: same seed, same split; another seed, another split
    again, _ = run(tokenizer, args)
    assert again == recs
    other, _ = run(tokenizer, make_args(tiny_model, path, mode="upft", prefix_len=L, full_ratio=p, seed=7))
    assert {r["id"] for r in other if r["type"] == "full"} != {r["id"] for r in full}
    assert sum(r["type"] == "full" for r in other) == 7


def test_upft_prefix_survives_unstable_token_boundaries(tokenizer, tiny_model, tmp_path):
    """Decoding the first L ids and re-tokenizing can give other ids (a split multi-byte character, a merge at
    the cut). Every prefix must re-tokenize to exactly its ids + EOS; unstable cuts shrink and are counted."""
    texts = ["数学题：求解 x² + 3x = 10。答案是 😀😀 好的", "a  b   c    d\t\te f g h i j",
             "The answer:  42 ,  right? yes"]
    unstable = []
    for t in texts:
        ids = enc(tokenizer, t)
        unstable.append([L for L in range(1, len(ids)) if enc(tokenizer, tokenizer.decode(ids[:L])) != ids[:L]])
    assert all(unstable), "the fixture texts must contain unstable cut points"
    L_values = sorted({u[0] for u in unstable})
    for L in L_values:
        stats = Counter()
        tokens = prepare.Tokens(tokenizer)
        outs = prepare.prefix_completions(tokens, texts, tokens.head(texts, L), L, EOS, stats)
        for t, out, bad in zip(texts, outs, unstable):
            ids = enc(tokenizer, t)
            got = enc(tokenizer, out)
            assert got[-1] == enc(tokenizer, EOS)[0]
            n = len(got) - 1
            assert got[:n] == ids[:n] and n <= L
            assert n == L or L in bad  # shrinks only where the cut is unstable
        assert stats["prefix_shrunk"] == sum(L in bad for bad in unstable) >= 1


def test_token_counts_split_off_special_suffixes(tokenizer):
    """A response is tokenized once: len(text + end of turn) = len(text) + len(end of turn) where the suffix
    starts with a special token (checked on probes); the counts must equal real tokenization."""
    tokens = prepare.Tokens(tokenizer, suffixes=(EOT, EOS, "\nEND"))
    assert tokens.suffixes == {EOT: 2, EOS: 1}  # "\nEND" is plain text: no shortcut
    bases = ["x", "a b ", "trailing\n\n", "数学 \\boxed{2}", "<|im_end", "ends with <", sentence(3)]
    texts = [b + s for b in bases for s in ("", EOT, EOS, "\nEND")]
    assert tokens.lens(texts) == [len(enc(tokenizer, t)) for t in texts]


def test_mix_counts(tokenizer, tiny_model, sample):
    for alpha in (0.0, 0.25, 0.3, 1.0):
        recs, stats = run(tokenizer, make_args(tiny_model, sample, mode="mix", alpha=alpha))
        with_q = [r for r in recs if r["type"] == "sft"]
        assert len(recs) == 20 and len(with_q) == round(alpha * 20)
        for r in recs:
            i = int(r["id"][1:])
            if r["type"] == "sft":
                assert r["prompt"].endswith("<|im_start|>assistant\n") and r["completion"] == sentence(i) + EOT
            else:
                assert r["prompt"] == "" and r["completion"] == sentence(i)


# ---------------------------------------------------------------------------------------------------------------
# Ablations
def test_noise_level2_wrong_final_answer(tokenizer, tiny_model, tmp_path):
    path = write_sample(tmp_path / "n.jsonl", n=10,
                        responses=lambda i: ["No box here." if i == 3 else sentence(i) + " Check: 025 is \\boxed{025}"])
    recs, stats = run(tokenizer, make_args(tiny_model, path, mode="noise", level=2))
    assert len(recs) == 9 and stats["dropped"]["noise2_no_boxed"] == 1
    for r in recs:
        i = int(r["id"][1:])
        orig = sentence(i) + " Check: 025 is \\boxed{025}"
        new = r["completion"][:-len(EOT)]
        assert r["noise"] == 2 and r["type"] == "sft"
        assert grading.last_boxed(new) != "025" and len(grading.last_boxed(new)) == 3
        assert new[:new.rindex("\\boxed{")] == orig[:orig.rindex("\\boxed{")]  # only the final answer changed
        assert not grading.grade(new, "25")["correct"]
    assert prepare.noise_wrong_answer("x \\boxed{\\frac{1}{2}}", random.Random(0)) != "x \\boxed{\\frac{1}{2}}"
    assert grading.last_boxed(prepare.noise_wrong_answer("\\boxed{yes}", random.Random(0))).isdigit()


def test_noise_level3_half_at_sentence_boundary(tokenizer, tiny_model, sample):
    recs, _ = run(tokenizer, make_args(tiny_model, sample, mode="noise", level=3, noise_form="qfft"))
    for r in recs:
        orig, cut = sentence(int(r["id"][1:])), r["completion"]
        assert r["type"] == "qfft" and r["prompt"] == "" and orig.startswith(cut)
        assert 0.25 * len(orig) <= len(cut) <= 0.75 * len(orig) and cut[-1] in ".!?"
    assert prepare.noise_half("one two three four") in ("one two", "one two three")
    assert prepare.noise_half("A.\nB is long. C.") in ("A.", "A.\nB is long.")


def test_noise_level4_derangement(tokenizer, tiny_model, sample):
    args = make_args(tiny_model, sample, mode="noise", level=4, responses="all")
    recs, _ = run(tokenizer, args)
    assert len(recs) == 40  # 20 questions x 2 non-empty responses
    donors = {}
    for r in recs:
        i = int(r["source_id"][1:])
        assert r["response_from"] != r["source_id"] and sentence(i) not in r["completion"]
        assert r["prompt"] == models.render_prompt(tokenizer, f"What is {i}+{i}?", None)
        donors.setdefault(r["source_id"], set()).add(r["response_from"])
    assert all(len(d) == 1 for d in donors.values())
    assert sorted(d.pop() for d in donors.values()) == sorted(donors)  # a permutation: every response used once
    assert run(tokenizer, args)[0] == recs
    with pytest.raises(common.DataError, match="at least 2 questions"):
        prepare.derangement(1, random.Random(0))


def test_rft_label_filter_select_and_pairs(tokenizer, tiny_model, tmp_path):
    def resps(i):
        return [f"It is \\boxed{{{2 * i + 1}}}.", f"So \\boxed{{{2 * i}}}.", sentence(i), None]
    path = write_sample(tmp_path / "r.jsonl", n=6, responses=resps)
    recs, stats = run(tokenizer, make_args(tiny_model, path, mode="rft", select="all"))
    assert [r["id"] for r in recs[:2]] == ["q0#1", "q0#2"] and len(recs) == 12
    assert stats["dropped"] == {"empty_response": 6, "incorrect": 6}
    short, _ = run(tokenizer, make_args(tiny_model, path, mode="rft", select="shortest"))
    long, _ = run(tokenizer, make_args(tiny_model, path, mode="rft", select="longest"))
    assert [r["completion"] for r in short] == [f"So \\boxed{{{2 * i}}}." + EOT for i in range(6)]
    assert [r["completion"] for r in long] == [sentence(i) + EOT for i in range(6)]
    assert [r["id"] for r in short] == [f"q{i}" for i in range(6)]
    pairs, pstats = run(tokenizer, make_args(tiny_model, path, mode="rft", pairs=True))
    assert [set(p) for p in pairs] == [{"id", "type", "prompt", "chosen", "rejected", "source_id"}] * 6
    assert all(p["chosen"] == s["completion"] and p["rejected"] == lg["completion"] and p["prompt"] == s["prompt"]
               for p, s, lg in zip(pairs, short, long))
    assert pstats["trained_tokens"] == sum(len(enc(tokenizer, p["chosen"])) + len(enc(tokenizer, p["rejected"]))
                                           for p in pairs)


def test_max_questions_keeps_all_responses(tokenizer, tiny_model, sample):
    recs, stats = run(tokenizer, make_args(tiny_model, sample, mode="qfft", responses="all", max_questions=5))
    qs = Counter(r["source_id"] for r in recs)
    assert len(qs) == 5 and set(qs.values()) == {2} and stats["questions"] == 5
    again, _ = run(tokenizer, make_args(tiny_model, sample, mode="qfft", responses="all", max_questions=5))
    other, _ = run(tokenizer, make_args(tiny_model, sample, mode="qfft", max_questions=5, seed=1))
    assert again == recs and {r["source_id"] for r in other} != set(qs)
    longest, _ = run(tokenizer, make_args(tiny_model, sample, mode="qfft", responses="longest"))
    assert [r["completion"] for r in longest] == [sentence(i) for i in range(20)]


# ---------------------------------------------------------------------------------------------------------------
# Length, stats, adapters
def test_max_len_cut_by_default_and_drop_long(tokenizer, tiny_model, sample):
    recs, _ = run(tokenizer, make_args(tiny_model, sample, mode="sft"))
    lens = [len(enc(tokenizer, r["prompt"])) + len(enc(tokenizer, r["completion"])) for r in recs]
    limit = max(lens) - 1
    kept, stats = run(tokenizer, make_args(tiny_model, sample, mode="sft", max_len=limit, drop_long=True))
    assert 0 < len(kept) < 20
    assert len(kept) == sum(n <= limit for n in lens) and stats["dropped"]["over_max_len"] == 20 - len(kept)
    # default: cut as LLaMA-Factory cuts to cutoff_len (the completion, end of turn included; no EOS added)
    cut, stats = run(tokenizer, make_args(tiny_model, sample, mode="sft", max_len=limit))
    assert len(cut) == 20 and stats["truncated"] == 20 - len(kept) and "over_max_len" not in stats["dropped"]
    for r, full, n0 in zip(cut, recs, lens):
        n = len(enc(tokenizer, r["prompt"])) + len(enc(tokenizer, r["completion"]))
        assert full["completion"].startswith(r["completion"]) and n == min(n0, limit)
    # mix with --drop_long: N = examples whose with-question form fits, so the split stays exact
    mixed, stats = run(tokenizer, make_args(tiny_model, sample, mode="mix", alpha=0.5, max_len=limit,
                                            drop_long=True))
    assert len(mixed) == len(kept) and sum(r["type"] == "sft" for r in mixed) == round(0.5 * len(kept))


def test_upft_cut_forces_eos_and_prefixes_ignore_full_length(tokenizer, tiny_model, tmp_path):
    """UPFT's SFTDataset: tokenized with truncation to max_len, the last token forced to EOS; a prefix example never
    depends on the length of the whole response (the old code dropped it when the FULL form was too long)."""
    long = sentence(7) * 6
    path = write_sample(tmp_path / "l.jsonl", n=10, responses=lambda i: [long if i % 2 else sentence(i)])
    args = dict(mode="upft", preset="upft", prefix_len=8, full_ratio=0.5)
    full_len = {}
    for r in run(tokenizer, make_args(tiny_model, path, **args))[0]:
        full_len[r["id"]] = len(enc(tokenizer, r["prompt"])) + len(enc(tokenizer, r["completion"]))
    plen = len(enc(tokenizer, models.render_prompt(tokenizer, "What is 1+1?", models.EVAL_SYSTEM_PROMPT)))
    limit = plen + 60  # shorter than the long responses, longer than any prefix example
    recs, stats = run(tokenizer, make_args(tiny_model, path, max_len=limit, **args))
    assert len(recs) == 10 and stats["types"] == {"full": 5, "prefix": 5} and stats["truncated"] >= 1
    for r in recs:
        ids = enc(tokenizer, r["prompt"]) + enc(tokenizer, r["completion"])
        assert len(ids) <= limit and ids[-1] == tokenizer.eos_token_id
        if r["type"] == "full" and full_len[r["id"]] > limit:
            assert len(ids) == limit  # cut to max_len, the last token being EOS
    dropped, stats = run(tokenizer, make_args(tiny_model, path, max_len=limit, drop_long=True, **args))
    assert stats["types"]["prefix"] == 5 and stats["dropped"]["over_max_len"] >= 1
    # QFFT: the bare response cut, nothing added
    q, stats = run(tokenizer, make_args(tiny_model, path, mode="qfft", max_len=30))
    assert len(q) == 10 and all(len(enc(tokenizer, r["completion"])) == 30 for r in q)
    assert all(not r["completion"].endswith(EOS) for r in q)


def test_stats_totals_equal_sums_over_examples(tokenizer, tiny_model, sample):
    recs, stats = run(tokenizer, make_args(tiny_model, sample, mode="upft", prefix_len=8, full_ratio=0.5))
    pl = [len(enc(tokenizer, r["prompt"])) for r in recs]
    cl = [len(enc(tokenizer, r["completion"])) for r in recs]
    assert stats["trained_tokens"] == sum(cl) and stats["total_tokens"] == sum(pl) + sum(cl)
    assert stats["examples"] == len(recs) == sum(stats["types"].values())
    assert stats["types"] == dict(Counter(r["type"] for r in recs))
    assert stats["prompt_tokens_mean"] == round(sum(pl) / len(pl), 2)
    assert stats["completion_tokens_mean"] == round(sum(cl) / len(cl), 2)
    assert sum(v["trained_tokens"] for v in stats["by_type"].values()) == sum(cl)
    assert stats["by_type"]["prefix"]["completion_tokens_mean"] == 9.0  # 8 tokens + EOS
    assert stats["dropped"] == {"empty_response": 20}


def test_adapters_limo_s1k_generic(tokenizer, tiny_model, tmp_path):
    limo = tmp_path / "limo.jsonl"
    limo.write_text(json.dumps({"question": "Q1?", "solution": "Reason. \\boxed{3}", "answer": "3"}) + "\n")
    recs, _ = run(tokenizer, make_args(tiny_model, limo, mode="qfft", format="limo"))
    assert recs[0]["completion"] == "Reason. \\boxed{3}" and recs[0]["id"] == sources.stable_id("Q1?")
    s1k = tmp_path / "s1k.jsonl"
    s1k.write_text(json.dumps({"question": "Q2?", "solution": "ref", "deepseek_thinking_trajectory": "Hmm. Wait.\n",
                               "deepseek_attempt": "Answer: \\boxed{5}"}) + "\n")
    for fmt in ("s1k", "auto"):
        recs, _ = run(tokenizer, make_args(tiny_model, s1k, mode="qfft", format=fmt))
        assert recs[0]["completion"] == "<think>\nHmm. Wait.\n</think>\n\nAnswer: \\boxed{5}"
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"uid": u, "query": q, "out": o}) + "\n"
                           for u, q, o in [(1, "A?", "x"), (2, "B?", "y"), (1, "A?", "z")]))
    recs, _ = run(tokenizer, make_args(tiny_model, gen, mode="sft", question_field="query", response_field="out",
                                       id_field="uid", responses="all"))
    assert [(r["id"], r["completion"]) for r in recs] == [("1#0", "x" + EOT), ("1#1", "z" + EOT), ("2#0", "y" + EOT)]


@pytest.mark.parametrize("line, match", [
    ('{"id": "a", "responses": ["x"]}', r"bad\.jsonl:2: missing field 'question'"),
    ('{"id": "a", "question": "q", "responses": "x"}', r"bad\.jsonl:2: field 'responses' must be list"),
    ('{"id": "a", "question": "q", "responses": ["x", 5]}', r"bad\.jsonl:2: field 'responses\[1\]' must be str"),
    ('{"id": "a", "question": 3, "responses": ["x"]}', r"bad\.jsonl:2: field 'question' must be str"),
    ('{"id": "a", "question": " ", "responses": ["x"]}', r"bad\.jsonl:2: the question is empty"),
    ('{"id": "b", "question": "q", "responses": ["x"]}', r"bad\.jsonl:2: duplicate id 'b'"),
    ('{"id": "a", "question": "q", "responses": ["x"', r"bad\.jsonl:2: not valid JSON"),
])
def test_bad_input_names_file_line_and_field(tiny_model, tmp_path, line, match):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "b", "question": "q0", "responses": ["r"]}\n' + line + "\n")
    with pytest.raises(common.DataError, match=match):
        prepare.load_groups(make_args(tiny_model, p))


def test_bad_input_adapters_and_options(tokenizer, tiny_model, tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(json.dumps({"question": "q", "text": "r"}) + "\n")
    with pytest.raises(common.DataError, match=r"g\.jsonl:1: no response field"):
        prepare.load_groups(make_args(tiny_model, p))
    p.write_text(json.dumps({"question": "q", "deepseek_thinking_trajectory": "t"}) + "\n")
    with pytest.raises(common.DataError, match=r"g\.jsonl:1: missing field 'deepseek_attempt'"):
        prepare.load_groups(make_args(tiny_model, p, format="s1k"))
    p.write_text(json.dumps({"question": "q", "solution": 7}) + "\n")
    with pytest.raises(common.DataError, match=r"g\.jsonl:1: field 'solution' must be str, got int"):
        prepare.load_groups(make_args(tiny_model, p, format="limo"))
    for kw, match in [({"mode": "upft"}, "needs --prefix_len"), ({"mode": "noise"}, "needs --level"),
                      ({"pairs": True}, "--pairs works with"),
                      ({"mode": "mix", "alpha": 1.5}, "--alpha")]:
        with pytest.raises(common.DataError, match=match):
            prepare.check_args(make_args(tiny_model, p, **kw))


def test_empty_and_unfinished_responses_are_dropped_and_counted(tokenizer, tiny_model, tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text(json.dumps({"id": "a", "question": "q", "responses": ["", None, "ok", "cut"],
                             "finish_reasons": ["stop", None, "stop", "length"]}) + "\n"
                 + json.dumps({"id": "b", "question": "q2", "responses": [" "]}) + "\n")
    recs, stats = run(tokenizer, make_args(tiny_model, p, mode="qfft", responses="all", drop_unfinished=True))
    assert [(r["id"], r["completion"]) for r in recs] == [("a#2", "ok")]
    assert stats["dropped"] == {"empty_response": 3, "unfinished_response": 1} and stats["questions_out"] == 1


# ---------------------------------------------------------------------------------------------------------------
# CLI: sidecars, determinism, the settings guard
def test_main_is_deterministic_and_guards_settings(tiny_model, sample, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.jsonl"

    def main(*extra):
        monkeypatch.setattr(sys, "argv", ["prepare.py", "--mode", "upft", "--prefix_len", "8", "--input", sample,
                                          "--output", str(out), "--model", tiny_model, *extra])
        prepare.main()

    main()
    first = out.read_bytes()
    meta = json.loads(out.with_name("o.jsonl.meta.json").read_text())
    assert meta["settings"]["prefix_len"] == 8 and len(meta["settings"]["input_sha256"]) == 64
    main()
    assert "up to date" in capsys.readouterr().out and out.read_bytes() == first
    with pytest.raises(common.DataError, match=r"prefix_len: 8 -> 9.*--overwrite"):
        main("--prefix_len", "9")
    main("--overwrite")
    assert out.read_bytes() == first  # byte-identical rebuild
    main("--prefix_len", "9", "--overwrite")
    assert out.read_bytes() != first


@pytest.mark.slow
def test_cli_subprocess(tiny_model, sample, tmp_path, monkeypatch):
    out = tmp_path / "q.jsonl"
    argv = ["--mode", "mix", "--alpha", "0.5", "--input", sample, "--model", tiny_model]
    p = run_script("prepare.py", *argv, "--output", out)
    assert "wrote" in p.stdout and "sft 10" in p.stdout
    # another process (another hash seed) gives the same bytes
    monkeypatch.setattr(sys, "argv", ["prepare.py", *argv, "--output", str(tmp_path / "same.jsonl")])
    prepare.main()
    assert (tmp_path / "same.jsonl").read_bytes() == out.read_bytes()
    recs = common.read_jsonl(out)
    stats = json.loads((tmp_path / "q.jsonl.stats.json").read_text())
    assert len(recs) == stats["examples"] == 20 and stats["types"] == {"qfft": 10, "sft": 10}
    assert json.loads((tmp_path / "q.jsonl.meta.json").read_text())["settings"]["alpha"] == 0.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q", "responses": [1]}\n')
    p = run_script("prepare.py", "--mode", "qfft", "--input", bad, "--output", tmp_path / "b.jsonl",
                   "--model", tiny_model, check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"error: {bad}:1: field 'responses[0]' must be str, got int"]
    assert not (tmp_path / "b.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------
# Where the papers and their code disagree: the official code's rules behind flags (UPFT 1KE-JI/UPFT, QFFT's
# LLaMA-Factory fork; docs/paper_numbers.md)
def test_rft_select_first_random_and_responses_is_rejected(tokenizer, tiny_model, tmp_path):
    def resps(i):
        return [f"It is \\boxed{{{2 * i + 1}}}.", f"So \\boxed{{{2 * i}}}.", sentence(i), None]
    path = write_sample(tmp_path / "r.jsonl", n=6, responses=resps)
    first, stats = run(tokenizer, make_args(tiny_model, path, mode="rft", select="first"))
    assert [r["completion"] for r in first] == [f"So \\boxed{{{2 * i}}}." + EOT for i in range(6)]
    assert [r["id"] for r in first] == [f"q{i}" for i in range(6)] and stats["examples"] == 6  # one per question
    rnd, _ = run(tokenizer, make_args(tiny_model, path, mode="rft", select="random"))
    assert len(rnd) == 6 and all(r["completion"] in (f"So \\boxed{{{2 * i}}}." + EOT, sentence(i) + EOT)
                                 for i, r in enumerate(rnd))
    assert run(tokenizer, make_args(tiny_model, path, mode="rft", select="random"))[0] == rnd
    picks = {tuple(r["completion"] for r in run(tokenizer, make_args(tiny_model, path, mode="rft", select="random",
                                                                        seed=s))[0]) for s in range(6)}
    assert len(picks) > 1  # seeded, not always the same response
    with pytest.raises(common.DataError, match="--responses does not apply to --mode rft"):
        run(tokenizer, make_args(tiny_model, path, mode="rft", responses="first"))


def test_noise_level2_changes_every_restatement(tokenizer, tiny_model, tmp_path):
    text = ("So the answer is 025. Thus 025 is the correct answer, and 1025 stays. \\boxed{025}\n"
            "**Final Answer**\n\\boxed{025}")
    new = prepare.noise_wrong_answer(text, random.Random(1), gold="25")
    v = grading.last_boxed(new)
    assert v != "025" and len(v) == 3 and "025" not in new.replace("1025", "")
    assert new == text.replace("1025", "@").replace("025", v).replace("@", "1025")
    path = write_sample(tmp_path / "n.jsonl", n=4, responses=lambda i: [text])
    recs, _ = run(tokenizer, make_args(tiny_model, path, mode="noise", level=2))
    assert all("025" not in r["completion"].replace("1025", "") for r in recs)


def test_noise_level3_is_a_seeded_random_cut_near_half(tokenizer, tiny_model, tmp_path):
    text = " ".join(f"Sentence number {k} is here." for k in range(40))
    cuts = {prepare.noise_half(text, random.Random(s)) for s in range(20)}
    assert len(cuts) > 1 and all(text.startswith(c) and c.endswith(".") for c in cuts)
    assert all(0.4 * len(text) <= len(c) <= 0.6 * len(text) for c in cuts)
    path = write_sample(tmp_path / "h.jsonl", n=6, responses=lambda i: [text])
    a, _ = run(tokenizer, make_args(tiny_model, path, mode="noise", level=3))
    assert a == run(tokenizer, make_args(tiny_model, path, mode="noise", level=3))[0]
    assert len({r["completion"] for r in a}) > 1  # each example its own cut


def test_upft_prefix_rule_words_and_full_pick_last(tokenizer, tiny_model, tmp_path):
    resp = "<think>\nOkay, so   I need\n\nto find x. " + sentence(2)
    path = write_sample(tmp_path / "w.jsonl", n=10, responses=lambda i: [resp if i != 4 else "Two words."])
    L = 8
    recs, stats = run(tokenizer, make_args(tiny_model, path, mode="upft", preset="upft", prefix_len=L,
                                           full_ratio=0.3, prefix_rule="words", full_pick="last"))
    assert [r["type"] for r in recs] == ["prefix"] * 7 + ["full"] * 3  # UPFT: i < int((1 - p) * N) are prefixes
    words = " ".join(resp.split()[:L]) + " "
    ids = enc(tokenizer, words)
    assert len(ids) > L
    for r in recs[:7]:
        got = enc(tokenizer, r["completion"])
        if r["id"] == "q4":
            assert r["completion"] == "Two words. " + EOS
        else:
            assert got == ids[:L] + enc(tokenizer, EOS) and r["completion"].startswith("<think> Okay,")
    tok, _ = run(tokenizer, make_args(tiny_model, path, mode="upft", preset="upft", prefix_len=L, full_ratio=0.3))
    assert [r["completion"] for r in tok if r["type"] == "prefix"][0].startswith("<think>\n")  # the paper's rule


def test_mix_render_bare_is_qwen_qfft(tokenizer, tiny_model, sample):
    recs, _ = run(tokenizer, make_args(tiny_model, sample, mode="mix", alpha=0.5, mix_render="bare"))
    with_q = [r for r in recs if r["type"] == "sft"]
    assert len(with_q) == 10
    for r in with_q:  # `qwen_qfft`: user and assistant slots are "{{content}}", no system, no EOS
        i = int(r["id"][1:])
        assert r["prompt"] == f"What is {i}+{i}?" and r["completion"] == sentence(i)


def test_trained_tokens_skip_the_first_token_of_prompt_less_examples(tokenizer, tiny_model, sample):
    recs, stats = run(tokenizer, make_args(tiny_model, sample, mode="qfft"))
    assert stats["trained_tokens"] == sum(len(enc(tokenizer, r["completion"])) - 1 for r in recs)


def test_chat_template_file(tokenizer, tiny_model, sample, tmp_path, monkeypatch, capsys):
    """--chat_template FILE through models.set_chat_template: UPFT's Llama-3.1 template (empty system turn, no date
    lines) reaches the training text; a missing or broken file is a one-line error."""
    out = tmp_path / "t.jsonl"
    argv = ["prepare.py", "--input", sample, "--output", str(out), "--model", tiny_model, "--mode", "sft",
            "--system_prompt", "none", "--chat_template", "configs/upft_llama31.jinja"]
    monkeypatch.setattr(sys, "argv", argv)
    prepare.main()
    r = json.loads(out.read_text().splitlines()[0])
    assert r["prompt"].endswith("<|start_header_id|>system<|end_header_id|>\n\n<|eot_id|><|start_header_id|>user"
                                "<|end_header_id|>\n\nWhat is 0+0?<|eot_id|><|start_header_id|>assistant"
                                "<|end_header_id|>\n\n")
    assert "Cutting Knowledge" not in r["prompt"] and r["completion"] == sentence(0) + "<|eot_id|>"
    # the template text itself goes to the meta: train.py saves it into the checkpoint
    meta = json.loads((tmp_path / "t.jsonl.meta.json").read_text())
    assert meta["chat_template"] == (common.ROOT / "configs" / "upft_llama31.jinja").read_text()
    monkeypatch.setattr(sys, "argv", argv[:-6] + ["--mode", "qfft", "--chat_template", "configs/upft_llama31.jinja",
                                             "--overwrite"])
    prepare.main()  # question-free data was rendered with no template: train.py keeps the base model's
    assert json.loads((tmp_path / "t.jsonl.meta.json").read_text())["chat_template"] is None
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if messages %}\nno end")
    for path, msg in ((bad, r"bad\.jinja:\d+: not a valid Jinja chat template"),
                      (tmp_path / "none.jinja", r"none\.jinja: cannot read the chat template")):
        with pytest.raises(common.DataError, match=msg):
            models.set_chat_template(tokenizer.__class__.from_pretrained(tiny_model), str(path))
    r = run_script("prepare.py", "--input", sample, "--output", tmp_path / "x.jsonl", "--model", tiny_model,
                   "--chat_template", bad, check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")


# ---------------------------------------------------------------------------------------------------------------
# chat datasets (messages / ShareGPT conversations), OpenR1-style records, HF dataset configs
def _chat_files(tmp_path, n=12):
    """The same n (question, response) pairs as a generic file, as `messages` (with a system turn, which the
    system-prompt flag replaces) and as ShareGPT `conversations`."""
    rows = [(f"c{i}", f"What is {i}+{i}?", sentence(i)) for i in range(n)]
    files = {"generic": tmp_path / "g.jsonl", "messages": tmp_path / "m.jsonl", "conversations": tmp_path / "c.jsonl"}
    files["generic"].write_text("".join(json.dumps({"id": i, "question": q, "response": r}) + "\n" for i, q, r in rows))
    files["messages"].write_text("".join(json.dumps({"id": i, "messages": [
        {"role": "system", "content": "You are a data set's own system prompt."},
        {"role": "user", "content": q}, {"role": "assistant", "content": r}]}) + "\n" for i, q, r in rows))
    files["conversations"].write_text("".join(json.dumps({"id": i, "conversations": [
        {"from": "human", "value": q}, {"from": "gpt", "value": r}]}) + "\n" for i, q, r in rows))
    return files, {i: (q, r) for i, q, r in rows}


@pytest.mark.parametrize("mode", ["sft", "qfft", "upft"])
def test_chat_inputs_keep_or_drop_the_question_as_each_mode_says(tokenizer, tiny_model, tmp_path, mode):
    files, rows = _chat_files(tmp_path)
    kw = {"prefix_len": 8, "full_ratio": 0.25} if mode == "upft" else {}
    out = {name: run(tokenizer, make_args(tiny_model, f, mode=mode, **kw))[0] for name, f in files.items()}
    assert out["messages"] == out["generic"] and out["conversations"] == out["generic"], mode
    recs = out["messages"]
    assert len(recs) == 12 and [r["id"] for r in recs] == list(rows)
    for r in recs:
        q, resp = rows[r["id"]]
        assert "system prompt" not in r["prompt"]  # the data's system turn is not used
        if mode == "qfft":  # the question is dropped: the bare assistant turn
            assert r["prompt"] == "" and r["completion"] == resp and q not in r["completion"]
        elif mode == "sft" or r["type"] == "full":  # the user turn through the chat template
            assert r["prompt"] == models.render_prompt(tokenizer, q, None)
            assert r["completion"] == resp + (EOS if mode == "upft" else EOT)  # UPFT's full examples end at EOS
        else:  # upft prefix: the user turn + the prefix instruction; the first 8 tokens of the assistant turn
            assert r["type"] == "prefix" and r["prompt"] == models.render_prompt(
                tokenizer, q + models.UPFT_PREFIX_INSTRUCTION, None)
            assert enc(tokenizer, r["completion"]) == enc(tokenizer, resp)[:8] + enc(tokenizer, EOS)
    if mode == "upft":
        assert sum(r["type"] == "full" for r in recs) == 3


def test_openr1_record_is_refused_until_the_response_is_chosen(tokenizer, tiny_model, tmp_path):
    """OpenR1-Math: problem, a short reference `solution`, `generations` (R1 traces) and `messages` (one of them as
    a chat). Guessing would train on the short solution: each choice must be explicit."""
    p = tmp_path / "openr1.jsonl"
    gens = ["<think>Long trace A.</think> \\boxed{4}", "<think>Long trace B.</think> \\boxed{4}"]
    p.write_text(json.dumps({"problem": "What is 2+2?", "solution": "4", "answer": "4", "uuid": "u1",
                             "generations": gens, "correctness_math_verify": [True, True],
                             "messages": [{"role": "user", "content": "What is 2+2?"},
                                          {"role": "assistant", "content": gens[1]}]}) + "\n")
    with pytest.raises(common.DataError, match=r"^.*openr1\.jsonl:1: several fields could be the response "
                                               r"\(messages, generations, solution\); choose one: --format chat"):
        prepare.load_groups(make_args(tiny_model, p, mode="qfft"))
    chat, _ = run(tokenizer, make_args(tiny_model, p, mode="qfft", format="chat", id_field="uuid"))
    assert [(r["id"], r["completion"]) for r in chat] == [("u1", gens[1])]
    every, _ = run(tokenizer, make_args(tiny_model, p, mode="qfft", response_field="generations", responses="all"))
    assert [r["completion"] for r in every] == gens
    first, _ = run(tokenizer, make_args(tiny_model, p, mode="sft", response_field="generations"))
    assert [r["completion"] for r in first] == [gens[0] + EOT]
    ref, _ = run(tokenizer, make_args(tiny_model, p, mode="qfft", response_field="solution"))
    assert [r["completion"] for r in ref] == ["4"]
    # rft grades the chosen responses against the record's answer
    groups, _, _ = prepare.load_groups(make_args(tiny_model, p, mode="rft", format="chat"))
    assert groups[0]["answer"] == "4" and groups[0]["question"] == "What is 2+2?"


def test_several_assistant_turns_are_refused_or_all_taken(tokenizer, tiny_model, tmp_path):
    p = tmp_path / "multi.jsonl"
    turns = [{"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "A1."},
             {"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2a."},
             {"role": "assistant", "content": "A2b."}]
    p.write_text(json.dumps({"id": "x", "messages": turns}) + "\n")
    with pytest.raises(common.DataError, match=r"multi\.jsonl:1: field 'messages' has 2 user and 3 assistant turns, "
                                               r"expected one of each; pass --chat_turns all"):
        prepare.load_groups(make_args(tiny_model, p, mode="qfft"))
    recs, _ = run(tokenizer, make_args(tiny_model, p, mode="sft", chat_turns="all", responses="all"))
    assert [(r["id"], r["source_id"], r["completion"]) for r in recs] == [
        ("x:0#0", "x:0", "A1." + EOT), ("x:1#0", "x:1", "A2a." + EOT), ("x:1#1", "x:1", "A2b." + EOT)]
    assert recs[1]["prompt"] == models.render_prompt(tokenizer, "Q2?", None)  # no earlier turns in the prompt


@pytest.mark.parametrize("turns, match", [
    ([{"role": "user", "content": "q"}], r"field 'messages': user turn 1 has no assistant turn after it"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}],
     r"field 'messages': an assistant turn comes before any user turn"),
    ([{"role": "tool", "content": "x"}], r"field 'messages\[0\]' has role 'tool'"),
    ([{"role": "user", "content": 3}], r"field 'messages\[0\]' content must be str, got int"),
    ("hello", r"field 'messages' must be a non-empty list of turns"),
    ([{"role": "system", "content": "s"}], r"field 'messages' has no user turn"),
])
def test_bad_chat_records_name_file_line_and_field(tiny_model, tmp_path, turns, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"messages": turns}) + "\n")
    with pytest.raises(common.DataError, match=r"bad\.jsonl:1: " + match):
        prepare.load_groups(make_args(tiny_model, p, format="chat"))


def test_questions_from_chat_records_and_dataset_config(tmp_path, monkeypatch):
    """sample.py's loader: a chat record's question is its user turn; several user turns are refused. A HF
    dataset's configuration reaches datasets.load_dataset (prepare.py and sample.py: --dataset_config)."""
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps({"id": "a", "messages": [{"role": "system", "content": "s"},
                                                     {"role": "user", "content": "Q?"},
                                                     {"role": "assistant", "content": "A"}], "answer": 3}) + "\n"
                 + json.dumps({"id": "b", "conversations": [{"from": "human", "value": "R?"}]}) + "\n")
    qs = sources.load_questions(str(p))
    assert [(q["id"], q["question"], q["gold"]) for q in qs] == [("a", "Q?", "3"), ("b", "R?", None)]
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"},
                                          {"role": "user", "content": "Q2?"}]}) + "\n")
    with pytest.raises(common.DataError, match=r"chat\.jsonl:1: field 'messages' has 2 user turns"):
        sources.load_questions(str(p))

    import datasets
    calls = []

    def fake_load(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return [{"problem": "P?", "messages": [{"role": "user", "content": "P?"},
                                               {"role": "assistant", "content": "S."}]}]
    monkeypatch.setattr(sources, "check_hub", lambda *a, **k: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert sources.load_questions("org/chats", split="test", config="default")[0]["question"] == "P?"
    groups, _, _ = prepare.load_groups(prepare.Args(input="org/chats", output="o.jsonl", model="m", split="test",
                                                    dataset_config="default"))
    assert groups[0]["responses"] == ["S."]
    assert calls == [("org/chats", "default", "test")] * 2


# Every mode's output, pinned: a change in any mode's records or stats (also one no rule test above looks at)
# changes its hash. Regenerate deliberately (print `pinned_output(...)`) only when a rule is meant to change.
def golden_responses(i: int) -> list:
    long = " ".join(sentence(i + k) for k in range(1 + i % 4))
    return [long, f"It is \\boxed{{{2 * i + 1}}}.", f"So \\boxed{{{2 * i}}}.", f"数学：答案 😀 \\boxed{{{2 * i}}}",
            ""]


GOLDEN = {  # name: (prepare.Args overrides, sha256[:16] of the records and stats)
    "sft": (dict(mode="sft"), "714cc45cc6406f2f"),
    "sft_upft_preset_all": (dict(mode="sft", preset="upft", responses="all"), "2e15fc2e17707860"),
    "qfft": (dict(mode="qfft"), "a347b6175743b911"),
    "qfft_eos_longest": (dict(mode="qfft", qfft_eos=True, responses="longest"), "9d3e5d0bf1ad6598"),
    "qfft_max_questions": (dict(mode="qfft", responses="all", max_questions=4), "b5e580e19d2cac37"),
    "mix": (dict(mode="mix", alpha=0.3, responses="all"), "2b62b5bf8f167073"),
    "mix_bare_drop_long": (dict(mode="mix", mix_render="bare", max_len=60, drop_long=True), "3d01e0aa34aa0d16"),
    "upft": (dict(mode="upft", preset="upft", prefix_len=8, full_ratio=0.25, responses="all"), "0eb57196bda3ec40"),
    "upft_words_last_cut": (dict(mode="upft", preset="upft", prefix_len=6, full_ratio=0.3, prefix_rule="words",
                                 full_pick="last", max_len=80), "6134d9ce130f4594"),
    "rft_all": (dict(mode="rft"), "1a2e5d0c90028c83"),
    "rft_first_cut": (dict(mode="rft", select="first", max_len=70), "130ba986aedb7170"),
    "rft_shortest": (dict(mode="rft", select="shortest"), "efaff2a813e25886"),
    "rft_random": (dict(mode="rft", select="random"), "906f6a25895c08e4"),
    "rft_pairs_cut": (dict(mode="rft", pairs=True, max_len=70), "fa4a8110d111f4fe"),
    "mix_drop_long": (dict(mode="mix", alpha=0.5, max_len=100, drop_long=True), "cec49056c2d32e73"),
    "noise2": (dict(mode="noise", level=2, responses="all"), "1eb3dfd1f1cc9955"),
    "noise3_qfft": (dict(mode="noise", level=3, noise_form="qfft"), "d9b2d6cc482e04a2"),
    "noise4": (dict(mode="noise", level=4, responses="shortest"), "8c7735a096e70d5a"),
    "sft_cut": (dict(mode="sft", max_len=64), "520967e737a700fc"),
}


def pinned_output(tokenizer, tiny_model, path, **kw) -> str:
    import hashlib
    recs, stats = run(tokenizer, make_args(tiny_model, path, **kw))
    return hashlib.sha256(json.dumps([recs, stats], sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_mode_output_is_pinned(tokenizer, tiny_model, tmp_path, name):
    path = write_sample(tmp_path / "g.jsonl", n=12, responses=golden_responses)
    kw, want = GOLDEN[name]
    got = pinned_output(tokenizer, tiny_model, path, **kw)
    assert got == want, f"{name}: the output of {kw} changed (sha256 {got}, pinned {want})"
