"""prepare.py: (question, response) pairs -> the exact training text for SFT, QFFT, UPFT and the papers' ablations.

    # QFFT (question-free): completion = the bare response, no chat markup, no EOS (LLaMA-Factory `qwen_qfft`)
    python prepare.py --mode qfft --input GAIR/LIMO --output runs/limo_qfft.jsonl --model Qwen/Qwen2.5-7B-Instruct
    # QFFT's SFT baseline on the same data (model's own default system prompt: `--preset qfft`)
    python prepare.py --mode sft --preset qfft --input simplescaling/s1K-1.1 --output runs/s1k_sft.jsonl --model M
    # UPFT: 10% full responses, 90% first-32-token prefixes (+EOS) with the prefix instruction (`--preset upft`)
    python prepare.py --mode upft --preset upft --prefix_len 32 --full_ratio 0.1 \\
        --input runs/self_samples.jsonl --output runs/upft.jsonl --model Qwen/Qwen2.5-Math-7B-Instruct
    # Ablations: mix (QFFT Fig. 2b), RFT / SFT-Shortest / DPO pairs, noise levels II-IV, low-resource
    python prepare.py --mode mix --alpha 0.5 ...
    python prepare.py --mode rft --select first ...         # UPFT's RFT: one correct response per question
    python prepare.py --mode rft --select shortest ...      # SFT-Shortest; --pairs: {"prompt","chosen","rejected"}
    python prepare.py --mode noise --level 3 --noise_form qfft ...
    python prepare.py --mode qfft --max_questions 10 --responses all ...   # 10 questions x 10 responses (§6.3)

Input: sample.py output (one record per question with `responses`; `--responses first|all|shortest|longest`),
any local file / Hugging Face dataset (`--split`, `--dataset_config`) with question and response fields, chat
records (`messages` role/content or ShareGPT `conversations` from/value: question = the user turn, response = the
assistant turn; `--chat_turns all` for several), or the built-in adapters (`--format limo|s1k`, chosen
automatically for GAIR/LIMO and simplescaling/s1K-1.1). A record offering several responses (e.g. OpenR1-Math:
`solution`, `generations` and `messages`) is refused until one is chosen (--format chat or --response_field).
Output: one JSON line per example {"id", "type", "prompt", "completion", "source_id"} (pairs: "chosen",
"rejected" instead of "completion"); train.py tokenizes prompt and completion separately (no special tokens
added), concatenates them and puts the loss on the completion only. Sidecars: OUTPUT.stats.json (counts, drops,
token totals) and OUTPUT.meta.json (arguments, settings, git commit).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import common
import grading
import models
import runs
import sources

# The two long-CoT sets the QFFT paper trains on, by hub name: their fields need an adapter (s1K-1.1 splits the R1 trace
# into thinking and attempt), and naming the dataset should be enough.
HF_ADAPTERS = {"gair/limo": "limo", "simplescaling/s1k-1.1": "s1k"}
QUESTION_FIELDS = sources.QUESTION_FIELDS
RESPONSE_FIELDS = ("response", "solution", "completion", "output", "generation")
# Fields holding a LIST of responses to one question (OpenR1-Math's `generations`): every item is a response
RESPONSE_LIST_FIELDS = ("generations",)
ANSWER_FIELDS = sources.ANSWER_FIELDS
# Settings that do not change the output (excluded from the up-to-date check).
NOT_SETTINGS = ("output", "overwrite", "grade_workers", "batch_size", "push_to_hub", "hub_model_id")


@dataclass
class Args:
    input: str = field(metadata={"help": "sample.py output, a local .jsonl/.json/.parquet/.csv, or a HF dataset "
                                         "(GAIR/LIMO, simplescaling/s1K-1.1, ...)",
                                 "aliases": ["--data", "--dataset_name"]})
    output: str = field(metadata={"help": "output JSONL; sidecars OUTPUT.stats.json and OUTPUT.meta.json",
                                  "aliases": ["--output_dir", "--out"]})
    model: str = field(metadata={"help": "model whose tokenizer and chat template the training text is made for",
                                 "aliases": ["--model_name_or_path"]})
    mode: Literal["sft", "qfft", "mix", "upft", "rft", "noise"] = field(
        default="sft", metadata={"help": "sft: question + response (chat template) | qfft: response only, no "
                                         "question | mix: sft for a fraction --alpha, qfft for the rest | upft: "
                                         "prefixes of --prefix_len tokens, --full_ratio full | rft: correct "
                                         "responses only (--select, --pairs) | noise: --level II-IV noisy data"})
    seed: int = field(default=42, metadata={"help": "every random choice (mix, upft, noise, max_questions) derives "
                                                    "from it"})
    # --- input
    format: Literal["auto", "sample", "generic", "chat", "limo", "s1k"] = field(
        default="auto", metadata={"help": "auto | sample (sample.py) | generic (question/response fields) | chat "
                                          "(messages or ShareGPT conversations: the user turn and the assistant "
                                          "turn) | limo | s1k"})
    split: str = field(default="train", metadata={"help": "split of a Hugging Face dataset"})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "configuration (subset) name of a Hugging "
                                                                          "Face dataset, e.g. 'default'"})
    chat_turns: Optional[Literal["all"]] = field(default=None, metadata={"help": (
        "chat records with several turns. unset: exactly one user turn and one assistant turn per record, anything "
        "else refused (FILE:LINE, field) | all: every assistant turn is a response to the user turn before it "
        "(several in a row: several responses to it; each later user turn a question of its own, id ID:k, without "
        "the earlier turns in its prompt)")})
    question_field: Optional[str] = field(
        default=None, metadata={"help": "generic: default first of question/problem/prompt/instruction"})
    response_field: Optional[str] = field(
        default=None, metadata={"help": "generic: default first of response/solution/completion/output/generation; "
                                        "a list-valued field (e.g. generations) gives every item as a response"})
    answer_field: Optional[str] = field(default=None, metadata={"help": "generic: gold answer (rft), default first "
                                                                        "of answer/gold/final_answer"})
    id_field: Optional[str] = field(default=None, metadata={"help": "generic: default \"id\"; without one, a hash "
                                                                    "of the question"})
    responses: Optional[Literal["first", "all", "shortest", "longest"]] = field(
        default=None, metadata={"help": "per question: first (unset) | all | shortest | longest (in tokens); not with "
                                        "--mode rft (use --select)"})
    drop_unfinished: bool = field(default=False, metadata={"help": "drop sample.py responses whose finish_reason is "
                                                                   "\"length\""})
    max_questions: Optional[int] = field(
        default=None, metadata={"help": "keep N seeded questions and all their responses (QFFT §6.3)"})
    # --- formatting
    preset: Optional[Literal["qfft", "upft"]] = field(
        default=None, metadata={"help": "qfft: system 'default' (LLaMA-Factory `qwen`); upft: 'eval' (qwen-math)"})
    system_prompt: Optional[str] = field(
        default=None, metadata={"help": "TEXT | none | default | eval (unset: from --preset, else 'default')"})
    qfft_eos: bool = field(default=False, metadata={"help": "qfft rule: append the tokenizer's EOS (the released "
                                                            "code does not)"})
    chat_template: Optional[str] = field(default=None, metadata={"help": models.CHAT_TEMPLATE_HELP})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub (untrusted "
                                                                     "otherwise)"})
    # --- mode options
    alpha: float = field(default=0.5, metadata={"help": "mix: fraction of examples that keep their question (sft "
                                                        "rule)"})
    mix_render: Literal["chat", "bare"] = field(default="chat", metadata={"help": (
        "mix: with-question examples as chat (the model's template, as an SFT run) or bare (question text + response, "
        "no markup: what ONE LLaMA-Factory run with the `qwen_qfft` template makes of them)")})
    prefix_len: Optional[int] = field(default=None, metadata={"help": "upft: L (paper: 8 Llama-3.1-8B, 32 "
                                                                      "Qwen2.5-Math-7B, 128 R1-distill)"})
    full_ratio: float = field(default=0.1, metadata={"help": "upft: fraction p of full-response examples (paper: "
                                                             "0.1; 0.3 for LIMO)"})
    prefix_rule: Literal["tokens", "words"] = field(default="tokens", metadata={"help": (
        "upft: tokens = the first L tokens (the paper); words = UPFT's code: the first L whitespace-separated words "
        "joined by single spaces, + ' ' + EOS, cut to L+1 tokens with the last forced to EOS")})
    full_pick: Literal["random", "last"] = field(default="random", metadata={"help": (
        "upft: which examples stay full: random = round(p*N) seeded; last = UPFT's code (the last N - int((1-p)*N) "
        "records in input order)")})
    select: Literal["all", "first", "random", "shortest", "longest"] = field(
        default="all", metadata={"help": "rft: all | first | random | shortest | longest correct response(s) per "
                                         "question (UPFT's RFT: first, one correct response per question)"})
    pairs: bool = field(default=False, metadata={"help": "rft: DPO pairs {prompt, chosen: shortest correct, "
                                                         "rejected: longest correct}"})
    grade_workers: int = field(default=0, metadata={"help": "rft: grader processes (0: one per core)"})
    level: Optional[Literal[2, 3, 4]] = field(
        default=None, metadata={"help": "noise: 2 wrong final answer | 3 cut at half | 4 shuffled responses"})
    noise_form: Literal["sft", "qfft"] = field(
        default="sft", metadata={"help": "noise: sft | qfft rule for the noisy examples"})
    # --- length
    max_len: int = field(default=16384, metadata={"help": "prompt + completion tokens; longer completions are cut "
                                                          "(counted), or dropped with --drop_long",
                                                  "aliases": ["--max_length"]})
    drop_long: bool = field(default=False, metadata={"help": (
        "drop over-length examples instead of cutting them. The cut (default) is the official code's: QFFT/SFT as "
        "LLaMA-Factory (completion cut, no EOS after it); UPFT full/SFT examples as UPFT (last token forced to EOS)")})
    batch_size: int = field(default=1000, metadata={"help": "texts per tokenizer call"})
    overwrite: bool = field(default=False, metadata={"help": "replace output made with other settings"})
    push_to_hub: Optional[str] = field(
        default=None, metadata={"help": "REPO (user/name), or yes with --hub_model_id REPO (TRL): upload OUTPUT and "
                                        "its sidecars as a dataset, with a card from OUTPUT.meta.json (HF_TOKEN; "
                                        "HF_ENDPOINT for a private hub)", "nargs": "?", "const": "yes"})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "REPO (user/name) for --push_to_hub yes"})


# ----------------------------------------------------------------------------------------------------------------
# Input
def _text(rec: dict, fld: str, where: str) -> Optional[str]:
    """A response-like field: str, or None (dropped later); anything else is an error."""
    if fld not in rec:
        raise common.DataError(f"{where}: missing field '{fld}' (fields present: {', '.join(sorted(rec)) or 'none'})")
    # None is allowed (a failed generation, an empty column): it is dropped and counted later, not an error, so one bad
    # row of 10k does not stop the run.
    val = rec[fld]
    if val is not None and not isinstance(val, str):
        raise common.DataError(f"{where}: field '{fld}' must be str, got {type(val).__name__}")
    return val


def _gold(val) -> Optional[str]:
    return None if val is None else str(val).strip()


def s1k_response(thinking: str, attempt: str) -> str:
    """s1K-1.1's DeepSeek-R1 trace as R1 itself writes it: '<think>\\n{thinking}\\n</think>\\n\\n{attempt}'."""
    return f"<think>\n{thinking.strip()}\n</think>\n\n{attempt.strip()}"


def response_sources(rec: dict) -> list[str]:
    """The fields of a record that could each be 'the response': a chat, a list of generations, the first response
    field. More than one, with nothing chosen, is refused: OpenR1-Math has `messages`, `generations` and a short
    reference `solution`, and guessing would train on the wrong one."""
    rf = next((f for f in RESPONSE_FIELDS if f in rec), None)
    return [f for f in sources.CHAT_FIELDS + RESPONSE_LIST_FIELDS if f in rec] + ([rf] if rf else [])


def detect_format(args: Args, first: dict) -> str:
    if args.format != "auto":
        return args.format
    if args.input.strip("/").lower() in HF_ADAPTERS:
        return HF_ADAPTERS[args.input.strip("/").lower()]
    if "responses" in first:
        return "sample"
    if "deepseek_thinking_trajectory" in first:
        return "s1k"
    if sources.chat_field(first) and len(response_sources(first)) == 1 and args.response_field is None:
        return "chat"
    return "generic"


def parse_chat(rec: dict, where: str, args: Args) -> list[dict]:
    """A chat record -> parse_record's dicts: one per user turn (one unless --chat_turns all), its responses the
    assistant turns after it."""
    fld = sources.chat_field(rec)
    if fld is None:
        raise common.DataError(f"{where}: missing field 'messages' or 'conversations' (--format chat)")
    exchanges = sources.chat_exchanges(rec, fld, where)
    n_assistant = sum(len(a) for _, a in exchanges)
    if args.chat_turns != "all" and (len(exchanges) > 1 or n_assistant > 1):
        raise common.DataError(f"{where}: field '{fld}' has {len(exchanges)} user and {n_assistant} assistant "
                               f"turns, expected one of each; pass --chat_turns all to train on every assistant "
                               f"turn (each as a response to the user turn before it)")
    if args.id_field and args.id_field not in rec:
        raise common.DataError(f"{where}: missing field '{args.id_field}'")
    idf = args.id_field or "id"
    rid = str(rec[idf]) if rec.get(idf) is not None else None
    af = sources._pick(rec, args.answer_field, ANSWER_FIELDS)
    one = len(exchanges) == 1  # the record's gold answer belongs to its question only when it has one
    return [{"id": rid if rid is None or one else f"{rid}:{k}", "question": q,
             "answer": _gold(rec.get(af)) if af and one else None, "answer_type": rec.get("answer_type") or "math",
             "responses": answers, "finish": [None] * len(answers)} for k, (q, answers) in enumerate(exchanges)]


def _texts(rec: dict, fld: str, where: str) -> list[Optional[str]]:
    """A response field: one str (or None), or a list of them (every item a response)."""
    val = rec.get(fld)
    if not isinstance(val, list):
        return [_text(rec, fld, where)]
    for k, r in enumerate(val):
        if r is not None and not isinstance(r, str):
            raise common.DataError(f"{where}: field '{fld}[{k}]' must be str, got {type(r).__name__}")
    return list(val)


def parse_record(fmt: str, rec: dict, where: str, args: Args) -> dict:
    """One input record -> {"id", "question", "answer", "answer_type", "responses": [str|None], "finish": [...]}."""
    if fmt == "sample":
        rid = common.require(rec, "id", where, (str, int))
        q = common.require(rec, "question", where)
        resps = common.require(rec, "responses", where, (list,))
        for k, r in enumerate(resps):
            if r is not None and not isinstance(r, str):
                raise common.DataError(f"{where}: field 'responses[{k}]' must be str, got {type(r).__name__}")
        fin = rec.get("finish_reasons") or [None] * len(resps)
        if not isinstance(fin, list) or len(fin) != len(resps):
            raise common.DataError(f"{where}: field 'finish_reasons' must be a list as long as 'responses'")
        gold = rec["gold"] if "gold" in rec else rec.get("answer")  # "answer": sample.py before it kept "gold"
        return {"id": str(rid), "question": q, "answer": _gold(gold),
                "answer_type": rec.get("answer_type") or "math", "responses": resps, "finish": fin}
    if fmt == "limo":
        q = common.require(rec, "question", where)
        return {"id": str(rec["id"]) if rec.get("id") is not None else None, "question": q,
                "answer": _gold(rec.get("answer")), "answer_type": "math",
                "responses": [_text(rec, "solution", where)], "finish": [None]}
    if fmt == "s1k":
        q = common.require(rec, "question", where)
        thinking = _text(rec, "deepseek_thinking_trajectory", where)
        attempt = _text(rec, "deepseek_attempt", where)
        # A trace missing either half is not R1's output format: dropped (counted as empty) rather than trained half.
        resp = s1k_response(thinking, attempt) if thinking and thinking.strip() and attempt and attempt.strip() \
            else None
        sol = rec.get("solution")
        return {"id": str(rec["id"]) if rec.get("id") is not None else None, "question": q,
                # s1K's "solution" is the reference solution; its last box is the gold answer (rft mode grades against
                # it).
                "answer": grading.last_boxed(sol) if isinstance(sol, str) else None, "answer_type": "math",
                "responses": [resp], "finish": [None]}
    # generic
    qf = sources._pick(rec, args.question_field, QUESTION_FIELDS)
    if qf is None:
        raise common.DataError(f"{where}: no question field (tried {', '.join(QUESTION_FIELDS)}; set --question_field)")
    found = response_sources(rec)
    if args.response_field is None and len(found) > 1:
        raise common.DataError(f"{where}: several fields could be the response ({', '.join(found)}); choose one: "
                               f"--format chat (the assistant turn of the chat) or --response_field FIELD (a list "
                               f"such as 'generations': every item)")
    rf = sources._pick(rec, args.response_field, RESPONSE_FIELDS + RESPONSE_LIST_FIELDS)
    if rf is None:
        raise common.DataError(f"{where}: no response field (tried {', '.join(RESPONSE_FIELDS + RESPONSE_LIST_FIELDS)}"
                               f"; set --response_field" + (", or --format chat" if found else "") + ")")
    # A field already taken as the response is not also the gold answer (a file whose responses sit in "answer").
    af = sources._pick(rec, args.answer_field, tuple(a for a in ANSWER_FIELDS if a != rf))
    idf = args.id_field or "id"
    if args.id_field and args.id_field not in rec:
        raise common.DataError(f"{where}: missing field '{args.id_field}'")
    resps = _texts(rec, rf, where)
    return {"id": str(rec[idf]) if rec.get(idf) is not None else None, "question": common.require(rec, qf, where),
            "answer": _gold(rec.get(af)) if af else None, "answer_type": rec.get("answer_type") or "math",
            "responses": resps, "finish": [None] * len(resps)}


def load_groups(args: Args) -> tuple[list[dict], Counter, int]:
    """Questions with their responses, in input order. Records sharing an id (or, without ids, a question) are one
    question with several responses. Empty/None responses are dropped and counted."""
    recs = sources.read_records(args.input, args.split, args.dataset_config)
    fmt = detect_format(args, recs[0][1])
    groups: dict[str, dict] = {}
    dropped: Counter = Counter()
    parsed = ((where, r) for where, rec in recs  # a chat record may hold several questions (--chat_turns all)
              for r in (parse_chat(rec, where, args) if fmt == "chat" else [parse_record(fmt, rec, where, args)]))
    for where, r in parsed:
        if not r["question"].strip():
            raise common.DataError(f"{where}: the question is empty")
        rid = r["id"] if r["id"] is not None else sources.stable_id(r["question"])
        g = groups.get(rid)
        if g is None:
            g = groups[rid] = {"id": rid, "question": r["question"], "answer": r["answer"],
                               "answer_type": r["answer_type"], "responses": [], "where": where}
        # Records sharing an id are one question with several responses (how generic and LIMO-style files list them);
        # the same id with another question text is a broken file, and silently merging would train responses to the
        # wrong question.
        elif g["question"] != r["question"]:
            raise common.DataError(f"{where}: duplicate id '{rid}' with another question (first at {g['where']})")
        # sample.py writes each question once, with all its responses: a repeated id there means two outputs were
        # concatenated.
        elif fmt == "sample":
            raise common.DataError(f"{where}: duplicate id '{rid}' (first at {g['where']})")
        for resp, fin in zip(r["responses"], r["finish"]):
            k = len(g["responses"])
            g["responses"].append(None)  # k counts every response, kept or not: ids stay stable
            if resp is None or not resp.strip():
                dropped["empty_response"] += 1
            elif args.drop_unfinished and fin == "length":
                dropped["unfinished_response"] += 1
            else:
                g["responses"][k] = resp
    out = list(groups.values())
    for g in out:
        g["kept"] = [k for k, r in enumerate(g["responses"]) if r is not None]
    return out, dropped, len(recs)


def take_questions(groups: list[dict], n: Optional[int], seed: int) -> list[dict]:
    """N seeded questions (input order kept)."""
    if n is None or n >= len(groups):
        return groups
    if n < 1:
        raise common.DataError("--max_questions must be at least 1")
    # Seeded by name ("seed:max_questions"), as every random choice here: each choice has its own stream, so changing
    # --alpha does not change which questions --max_questions keeps.
    keep = set(random.Random(f"{seed}:max_questions").sample(range(len(groups)), n))
    return [g for i, g in enumerate(groups) if i in keep]


# ----------------------------------------------------------------------------------------------------------------
# Tokens
class Tokens:
    """Batched tokenization (no special tokens added, as train.py does) with a length cache and progress.

    Suffixes that start with a special token (the end of turn, EOS) are split off by the tokenizer before BPE,
    so len(text + suffix) == len(text) + len(suffix): checked once on probe texts, then used so that a response
    is tokenized once whatever suffix each rule gives it."""

    def __init__(self, tokenizer, batch_size: int = 1000, suffixes: tuple[str, ...] = ()):
        self.tok = tokenizer
        # Batched calls to the fast tokenizer (it parallelizes a batch): one call per text is much slower on 100k texts.
        self.bs = max(1, batch_size)
        self.lens_cache: dict[str, int] = {}
        self.suffixes = {s: len(models.encode(tokenizer, [s])[0]) for s in dict.fromkeys(suffixes)
                         if s and self._splits_off(s)}

    def _splits_off(self, suffix: str) -> bool:
        if not any(suffix.startswith(t) for t in self.tok.all_special_tokens):
            return False
        probes = ["x", "Hello world.", "a \n", "b  ", "1+1=2\n\n", "\u6570\u5b66 \\boxed{2}", "end<"]
        ids = models.encode(self.tok, probes + [p + suffix for p in probes] + [suffix])
        # The shortcut is only taken when it is exact on these probes (texts ending in space, newline, CJK, a '<'): a
        # tokenizer that merges across the special token would give wrong counts, and counts decide cuts and stats.
        return all(ids[len(probes) + i] == ids[i] + ids[-1] for i in range(len(probes)))

    def ids(self, texts: list[str], desc: str = "tokenizing") -> list[list[int]]:
        from tqdm import tqdm
        out: list[list[int]] = []
        starts = range(0, len(texts), self.bs)
        for s in tqdm(starts, desc=desc, unit_scale=self.bs, disable=len(texts) < 20 * self.bs, file=sys.stderr):
            out.extend(models.encode(self.tok, texts[s:s + self.bs]))
        return out

    def head(self, texts: list[str], n: int, desc: str = "tokenizing") -> list[tuple[int, list[int]]]:
        """(token count, first n ids) of each text, in one pass; the counts are cached."""
        from tqdm import tqdm
        out = []
        starts = range(0, len(texts), self.bs)
        for s in tqdm(starts, desc=desc, unit_scale=self.bs, disable=len(texts) < 20 * self.bs, file=sys.stderr):
            part = texts[s:s + self.bs]
            for t, ids in zip(part, models.encode(self.tok, part)):
                self.lens_cache[t] = len(ids)
                out.append((len(ids), ids[:n]))
        return out

    def _split(self, text: str) -> tuple[str, int]:
        for suffix, n in self.suffixes.items():
            if len(text) > len(suffix) and text.endswith(suffix):
                return text[:-len(suffix)], n
        return text, 0

    def lens(self, texts: list[str], desc: str = "counting tokens") -> list[int]:
        split = {t: self._split(t) for t in texts if t not in self.lens_cache}
        todo = list(dict.fromkeys(b for b, _ in split.values() if b not in self.lens_cache))
        for t, ids in zip(todo, self.ids(todo, desc)):
            self.lens_cache[t] = len(ids)
        for t, (base, n) in split.items():
            self.lens_cache[t] = self.lens_cache[base] + n
        return [self.lens_cache[t] for t in texts]

    # skip_special_tokens=False and no cleanup: a prefix's text must re-tokenize to exactly its ids, which needs every
    # token, special or not, and every space as generated.
    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def stable_prefix(self, ids: list[int], n: int, suffix: str = "") -> tuple[str, int]:
        """Text of the first n tokens that re-tokenizes (with `suffix` after it) to exactly ids[:n] + suffix ids.
        Decoding can split a multi-byte character or change a BPE merge at the cut; then n shrinks by one token
        at a time. Returns (text, n used); (\"\", 0) when no prefix is stable."""
        suffix_ids = models.encode(self.tok, [suffix])[0] if suffix else []
        while n > 0:
            text = self.decode(ids[:n])
            if models.encode(self.tok, [text + suffix])[0] == ids[:n] + suffix_ids:
                return text, n
            n -= 1
        return "", 0


class Formatter:
    """The training-text rules. Prompts only through the chat template (models.render_prompt)."""

    def __init__(self, tokenizer, system_prompt: Optional[str], qfft_eos: bool, upft_end: bool = False):
        self.tok = tokenizer
        self.system = system_prompt
        self.eot = models.end_of_turn(tokenizer)
        self.eos = tokenizer.eos_token or ""
        # UPFT's SFTDataset: text = (prompt + response + end of turn).rstrip("\n"), + " " + EOS unless it ends with EOS
        self.upft_end = upft_end
        self.full_end = self.eot.rstrip("\n")
        if upft_end and self.eos and not self.full_end.endswith(self.eos):
            self.full_end += " " + self.eos
        if qfft_eos and not self.eos:
            raise common.DataError("--qfft_eos: the tokenizer has no EOS token")
        self.qfft_eos = qfft_eos
        # Prompts cached by question: with --responses all (or rft's 16 samples) the same question is rendered once, not
        # once per response.
        self._prompts: dict[str, str] = {}

    def prompt(self, question: str) -> str:
        p = self._prompts.get(question)
        if p is None:
            p = self._prompts[question] = models.render_prompt(self.tok, question, self.system)
        return p

    def sft(self, question: str, response: str) -> tuple[str, str]:
        """sft rule: chat prompt [system?, user] + generation prompt; completion = response + end of turn (UPFT's
        code, `upft_end`: the end of turn without its trailing newline, EOS appended when it is not the EOS)."""
        return self.prompt(question), response + (self.full_end if self.upft_end else self.eot)

    def bare(self, question: str, response: str) -> tuple[str, str]:
        """A with-question example through LLaMA-Factory's `qwen_qfft` template: user and assistant slots are
        `{{content}}`, no system, so prompt = the question text, completion = the response, no markup, no EOS."""
        return question, response

    def qfft(self, response: str) -> tuple[str, str]:
        """qfft rule (QFFT §3.2): no question, no template; the bare response (+ EOS only with --qfft_eos)."""
        return "", response + (self.eos if self.qfft_eos else "")

    def prefix_prompt(self, question: str) -> str:
        """upft prefix rule (UPFT §3.3): the question with the prefix instruction appended, chat-formatted."""
        return self.prompt(question + models.UPFT_PREFIX_INSTRUCTION)


def resolve_system(args: Args) -> Optional[str]:
    value = args.system_prompt
    if value is None:
        # The presets' system prompts are each paper's training data: UPFT's code trains with the qwen-math template
        # (the eval prompt); QFFT's LLaMA-Factory `qwen` template passes none, so the model's own default applies.
        value = {"upft": "eval", "qfft": "default"}.get(args.preset or "", "default")
    return models.resolve_system_prompt(value)


# ----------------------------------------------------------------------------------------------------------------
# Selection, grading and noise
def examples_of(groups: list[dict], how: str, tokens: Optional[Tokens], seed: int = 42) -> list[dict]:
    """One example per selected response: {"id", "source_id", "k", "question", "response", ...}. `random`: one
    response per question, seeded per question id (so it does not depend on the other questions)."""
    # Token counts are measured only when a rule needs them (they cost a tokenizer pass over every response).
    if how in ("shortest", "longest"):
        flat = [g["responses"][k] for g in groups for k in g["kept"]]
        lens = iter(tokens.lens(flat, "measuring responses"))
        glens = [[next(lens) for _ in g["kept"]] for g in groups]
    out = []
    for gi, g in enumerate(groups):
        if not g["kept"]:
            continue
        if how == "all":
            ks = g["kept"]
        elif how == "first":
            ks = g["kept"][:1]
        elif how == "random":
            ks = [random.Random(f"{seed}:select:{g['id']}").choice(g["kept"])]
        else:  # shortest / longest in tokens; ties -> the earliest response
            sign = 1 if how == "shortest" else -1
            ks = [min(zip(glens[gi], g["kept"]), key=lambda t: (sign * t[0], t[1]))[1]]
        for k in ks:
            # An example's id is the question id when a rule keeps one response per question, else id#k with k the
            # response's index in the input (empty ones included): stable when the kept set changes, and traceable back
            # to the sample.
            out.append({"id": f"{g['id']}#{k}" if how == "all" else g["id"], "source_id": g["id"], "k": k,
                        "question": g["question"], "response": g["responses"][k]})
    return out


def grade_groups(groups: list[dict], workers: int, dropped: Counter) -> list[dict]:
    """Keep only the responses whose final answer verifies against the gold answer (math-verify)."""
    items, where = [], []
    for g in groups:
        if g["answer"] is None:
            dropped["no_gold_answer"] += len(g["kept"])
            g["kept"] = []
        for k in g["kept"]:
            items.append((g["responses"][k], g["answer"], g["answer_type"]))
            where.append((g, k))
    # The grader evaluate.py uses (grading.grade_many, math-verify in worker processes): "correct" in RFT data means
    # exactly what accuracy means in the tables.
    results = grading.grade_many(items, workers=workers) if items else []
    correct = {(id(g), k) for (g, k), r in zip(where, results) if r["correct"]}
    dropped["incorrect"] += len(items) - len(correct)
    for g in groups:
        g["kept"] = [k for k in g["kept"] if (id(g), k) in correct]
    return groups


def noise_wrong_answer(response: str, rng: random.Random, gold: Optional[str] = None) -> Optional[str]:
    """Level II ("numerical errors in the final steps, leading to incorrect conclusions"): the final answer (the last
    \\boxed{}) gets another number in its last digit run (digit count kept when it has leading zeros; a box without
    digits gets a random integer), and so does every restatement of it: each box with the same content, "answer is
    X" / "answer: X" / "answer = X", and "X is the correct/final answer". None when there is no \\boxed{}."""
    span = grading.last_boxed_span(response)
    if span is None:
        return None
    s, e = span
    content = response[s:e]
    # Retry until the new answer differs from the old one and from the gold: a noisy example whose "wrong" answer is
    # right (or unchanged) would not be noise. 100 tries are plenty: at most one of the 9 candidates is the gold.
    for _ in range(100):
        runs = list(re.finditer(r"\d+", content))
        if runs:
            m = runs[-1]
            # The last digit run changes (the units of "42", the denominator of "\frac{3}{4}"), so the
            # answer stays the same kind of expression, only wrong: the paper's "numerical errors in the final steps".
            v = int(m.group()) + rng.randint(1, 9)
            new = content[:m.start()] + str(v).zfill(len(m.group())) + content[m.end():]
        else:
            new = str(rng.randint(2, 99))
        if new.strip() != content.strip() and (gold is None or new.strip() != gold.strip()):
            return _restate(response, content.strip(), new)
    return None


def _restate(response: str, old: str, new: str) -> str:
    """Every restatement of the final answer `old` replaced by `new` (boxes: their whole content)."""
    edits = [(s, e, new) for s, e in grading.boxed_spans(response) if response[s:e].strip() == old]
    if old:
        esc, word = re.escape(old), r"[0-9A-Za-z]"
        pats = (rf"(?i)\banswer\s*(?:is|=|:)\s*[$*(\\\[ ]*({esc})(?!{word})",
                rf"(?i)(?<![0-9A-Za-z.])({esc})\s*\$?\s*is\s+(?:the\s+)?(?:correct|final)\s+answer")
        edits += [(m.start(1), m.end(1), new.strip()) for pat in pats for m in re.finditer(pat, response)]
    out, end = [], len(response)
    # Edits applied from the end of the text backwards, so earlier offsets stay valid.
    for s, e, text in sorted(set(edits), reverse=True):
        if e <= end:  # overlapping edits: the later one wins
            out.append(text + response[e:end])
            end = s
    return response[:end] + "".join(reversed(out))


# A sentence ends after . ! ? (with closing quotes or brackets) before whitespace, or at a line break: the paper asks
# for "semantic completeness of sentences", so a cut never falls mid-sentence when a boundary exists.
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*(?=\s)|(?=\n)")


def noise_half(response: str, rng: Optional[random.Random] = None) -> str:
    """Level III ("randomly truncates approximately half"): the response cut at a sentence boundary (after . ! ? or
    at a line break); with `rng`, a seeded random one among those within 10% of the length around the half (the
    nearest when none is), without `rng` the nearest to half. No boundary: the whitespace nearest to half; no
    whitespace: at half."""
    half = len(response) / 2
    cuts = sorted({m.end() for m in _SENT_END.finditer(response) if 0 < m.end() < len(response)})
    cuts = [c for c in cuts if response[:c].strip()]
    if not cuts:
        cuts = [m.start() for m in re.finditer(r"\s", response) if response[:m.start()].strip()]
    if not cuts:
        return response[:max(1, len(response) // 2)]
    near = [c for c in cuts if abs(c - half) <= 0.1 * len(response)]
    c = rng.choice(near) if rng is not None and near else min(cuts, key=lambda c: (abs(c - half), c))
    return response[:c].rstrip()


def derangement(n: int, rng: random.Random) -> list[int]:
    """A uniformly random permutation with no fixed point (rejection sampling: ~e tries)."""
    if n < 2:
        raise common.DataError("noise level 4 needs at least 2 questions with a response")
    # Rejection sampling keeps the permutation uniform over all derangements (a random shift would not be: every
    # question would get its neighbour's response).
    while True:
        p = list(range(n))
        rng.shuffle(p)
        if all(i != j for i, j in enumerate(p)):
            return p


def apply_noise(examples: list[dict], groups: list[dict], level: int, seed: int, dropped: Counter) -> list[dict]:
    rng = random.Random(f"{seed}:noise{level}")
    if level == 2:
        gold = {g["id"]: g["answer"] for g in groups}
        out = []
        for ex in examples:
            new = noise_wrong_answer(ex["response"], rng, gold.get(ex["source_id"]))
            if new is None:
                dropped["noise2_no_boxed"] += 1
                continue
            out.append({**ex, "response": new})
        return out
    if level == 3:
        return [{**ex, "response": noise_half(ex["response"], rng)} for ex in examples]
    if level == 4:  # every question gets another question's response(s); none keeps its own
        order = list(dict.fromkeys(ex["source_id"] for ex in examples))
        by_q: dict[str, list[dict]] = {}
        for ex in examples:
            by_q.setdefault(ex["source_id"], []).append(ex)
        perm = derangement(len(order), rng)
        out = []
        for i, qid in enumerate(order):
            question = by_q[qid][0]["question"]
            for donor in by_q[order[perm[i]]]:
                multi = donor["id"] != donor["source_id"]
                out.append({**donor, "id": f"{qid}#{donor['k']}" if multi else qid, "source_id": qid,
                            "question": question, "response_from": donor["source_id"]})
        return out
    raise common.DataError(f"--level must be 2, 3 or 4, got {level}")


# ----------------------------------------------------------------------------------------------------------------
# Building the examples
def prefix_completions(tokens: Tokens, responses: list[str], heads: list[tuple[int, list[int]]], L: int,
                       eos: str, stats: Counter) -> list[Optional[str]]:
    """Exactly the first L tokens of each response (decoded), then EOS; shorter responses whole. `heads` are
    (token count, first L ids) from Tokens.head. Each text is checked to re-tokenize to the same ids + EOS; where
    decoding is not stable at the cut (a split multi-byte character, a merge) it shrinks one token at a time."""
    # Responses of at most L tokens are kept whole, as their original text: nothing is cut, so nothing is decoded.
    texts = [tokens.decode(ids) if n > L else r for (n, ids), r in zip(heads, responses)]
    eos_ids = models.encode(tokens.tok, [eos])[0] if eos else []
    check = tokens.ids([t + eos for t in texts], "checking prefixes")
    out: list[Optional[str]] = []
    for (n_all, ids), t, got in zip(heads, texts, check):
        n = min(L, n_all)
        if n_all <= L:
            stats["prefix_whole"] += 1
        # The check is what train.py will see: train.py tokenizes the completion text, so a prefix is right only if its
        # text gives back exactly the first L ids (+ EOS). Shrinking (not growing) keeps the prefix within L tokens.
        if got != ids[:n] + eos_ids:
            t, n2 = tokens.stable_prefix(ids, n - 1, eos)
            stats["prefix_shrunk"] += 1
            if n2 == 0:
                t = None
        out.append(None if t is None else t + eos)
    return out


def word_prefix_completions(tokens: Tokens, responses: list[str], L: int, eos: str,
                            stats: Counter) -> list[Optional[str]]:
    """UPFT's code (train_utils/sft_dataset.py): " ".join(response.split()[:L]) + " " + EOS, tokenized and cut to
    L+1 tokens with the last forced to EOS, i.e. the first L tokens of the joined words, then EOS."""
    texts = [" ".join(r.split()[:L]) + " " for r in responses]
    out: list[Optional[str]] = []
    for t, ids in zip(texts, tokens.ids(texts, "word prefixes")):
        if len(ids) < L + 1:  # text + EOS has at most L+1 tokens: nothing is cut
            stats["prefix_whole"] += 1
            out.append(t + eos)
            continue
        text, n = tokens.stable_prefix(ids, L, eos)
        if n < L:
            stats["prefix_shrunk"] += 1
        out.append(text + eos if n > 0 else None)
    return out


def truncate_completion(tokens: Tokens, completion: str, budget: int, eos: str = "") -> Optional[str]:
    """The completion cut to `budget` tokens: LLaMA-Factory's cut (no EOS after it), or with `eos` UPFT's (the last
    of the `budget` tokens forced to EOS)."""
    ids = tokens.ids([completion])[0]
    if not eos:
        text, n = tokens.stable_prefix(ids, min(budget, len(ids)))
        return text if n > 0 else None
    # UPFT's SFTDataset truncates the tokenized text to max_len and sets the last id to EOS: here the budget - 1 first
    # tokens, then EOS, as text that re-tokenizes to exactly that.
    text, n = tokens.stable_prefix(ids, min(budget - 1, len(ids)), eos)
    return text + eos if n > 0 else None


def assign(n: int, frac: float, seed: int, what: str) -> set[int]:
    """Exactly round(frac * n) seeded indices."""
    # Exactly round(frac * n), not a coin flip per example: the paper's p = 0.1 must give 10% in the data, also on small
    # sets (a coin flip on 100 examples gives 10 +- 3).
    return set(random.Random(f"{seed}:{what}").sample(range(n), round(frac * n)))


def last_part(n: int, frac: float) -> set[int]:
    """UPFT's split (train/train_sft.py): records i < int((1 - p) * n) are prefixes, the rest full."""
    # round(..., 9) before int(): (1 - 0.3) * 90 is 62.99999999999999 in floating point, and int() alone would make
    # 62 prefixes of what is meant as 63 (a float artifact, not UPFT's intent: p = 0.3 of 90 is 27 full).
    return set(range(int(round((1 - frac) * n, 9)), n))


# One builder per mode: the selected (question, response) examples -> records {id, type, prompt, completion,
# source_id}, before the length rule. Every builder has the same signature, so `build` reads as: pick the mode's
# builder, then cut to --max_len, then count. What a builder drops it counts in `dropped` (shown in the stats).
def _record(ex: dict, typ: str, prompt: str, completion: str) -> dict:
    return {"id": ex["id"], "type": typ, "prompt": prompt, "completion": completion, "source_id": ex["source_id"]}


def picked(args: Args, groups: list[dict], tokens: Tokens) -> list[dict]:
    """The examples of every mode but rft: --responses of each question (unset: its first response)."""
    return examples_of(groups, args.responses or "first", tokens, args.seed)


def build_sft(args: Args, groups: list[dict], tokens: Tokens, fmt: Formatter, dropped: Counter,
              counts: Counter) -> list[dict]:
    """sft: the question through the chat template, the response (+ end of turn) as completion."""
    return [_record(ex, "sft", *fmt.sft(ex["question"], ex["response"])) for ex in picked(args, groups, tokens)]


def build_qfft(args: Args, groups: list[dict], tokens: Tokens, fmt: Formatter, dropped: Counter,
               counts: Counter) -> list[dict]:
    """qfft (QFFT §3.2): the bare response, no question and no markup."""
    return [_record(ex, "qfft", *fmt.qfft(ex["response"])) for ex in picked(args, groups, tokens)]


def build_mix(args: Args, groups: list[dict], tokens: Tokens, fmt: Formatter, dropped: Counter,
              counts: Counter) -> list[dict]:
    """mix (QFFT Fig. 2b): a seeded fraction --alpha keeps its question (sft rule, or `bare` text), the rest is
    question-free (qfft rule)."""
    examples = picked(args, groups, tokens)
    render = fmt.bare if args.mix_render == "bare" else fmt.sft
    # With --drop_long, N = the examples whose with-question form fits, so that round(alpha * N) is exact in the
    # output (dropping after the split would skew it towards the shorter, question-free form).
    if args.drop_long:
        full = [render(ex["question"], ex["response"]) for ex in examples]
        plen = tokens.lens([p for p, _ in full], "prompt tokens")
        clen = tokens.lens([c for _, c in full], "completion tokens")
        keep = [a + b <= args.max_len for a, b in zip(plen, clen)]
        if not all(keep):
            dropped["over_max_len"] += keep.count(False)
        examples = [ex for ex, ok in zip(examples, keep) if ok]
    with_q = assign(len(examples), args.alpha, args.seed, "mix")
    records = []
    for i, ex in enumerate(examples):
        if i in with_q:
            records.append(_record(ex, "sft", *render(ex["question"], ex["response"])))
        else:
            records.append(_record(ex, "qfft", *fmt.qfft(ex["response"])))
    return records


def build_upft(args: Args, groups: list[dict], tokens: Tokens, fmt: Formatter, dropped: Counter,
               counts: Counter) -> list[dict]:
    """upft (UPFT §3.3): a fraction --full_ratio of full responses (sft rule, UPFT's end), the rest the first
    --prefix_len tokens of the response + EOS behind the prefix instruction. A prefix never depends on the length
    of its full response: over-length full examples are cut (or dropped) later, by the length rule."""
    if not fmt.eos:
        raise common.DataError(f"{args.model}: the tokenizer has no EOS token, which UPFT's prefixes end with")
    examples = picked(args, groups, tokens)
    if args.prefix_rule == "tokens":  # one pass over every response: lengths (cached for later) and first L ids
        for ex, h in zip(examples, tokens.head([ex["response"] for ex in examples], args.prefix_len,
                                               "response tokens")):
            ex["head"] = h
    n = len(examples)
    full = last_part(n, args.full_ratio) if args.full_pick == "last" else assign(n, args.full_ratio, args.seed,
                                                                                  "upft")
    pre = [i for i in range(n) if i not in full]
    if args.prefix_rule == "words":
        made = word_prefix_completions(tokens, [examples[i]["response"] for i in pre], args.prefix_len, fmt.eos,
                                       counts)
    else:
        made = prefix_completions(tokens, [examples[i]["response"] for i in pre],
                                  [examples[i]["head"] for i in pre], args.prefix_len, fmt.eos, counts)
    comps = dict(zip(pre, made))
    records = []
    for i, ex in enumerate(examples):
        if i in full:
            records.append(_record(ex, "full", *fmt.sft(ex["question"], ex["response"])))
        elif comps[i] is None:  # no prefix re-tokenizes to its own ids (see Tokens.stable_prefix)
            dropped["prefix_not_stable"] += 1
        else:
            records.append(_record(ex, "prefix", fmt.prefix_prompt(ex["question"]), comps[i]))
    return records


def build_rft(args: Args, groups: list[dict], tokens: Tokens, fmt: Formatter, dropped: Counter,
              counts: Counter) -> list[dict]:
    """rft (UPFT's RFT baseline; SFT-Shortest with --select shortest): only responses whose final answer verifies
    against the gold answer, --select of them per question (sft rule); with --pairs, DPO pairs instead."""
    groups = grade_groups(groups, args.grade_workers, dropped)
    if args.pairs:
        return pair_records(tokens, fmt, examples_of(groups, "all", tokens, args.seed), dropped)
    return [_record(ex, "sft", *fmt.sft(ex["question"], ex["response"]))
            for ex in examples_of(groups, args.select, tokens, args.seed)]


def build_noise(args: Args, groups: list[dict], tokens: Tokens, fmt: Formatter, dropped: Counter,
                counts: Counter) -> list[dict]:
    """noise (QFFT §6.2, levels II-IV): the responses made noisy (apply_noise), then the --noise_form rule. Each
    record keeps its level, and at level IV the question its response came from."""
    records = []
    for ex in apply_noise(picked(args, groups, tokens), groups, args.level, args.seed, dropped):
        p, c = fmt.qfft(ex["response"]) if args.noise_form == "qfft" else fmt.sft(ex["question"], ex["response"])
        rec = _record(ex, args.noise_form, p, c)
        rec["noise"] = args.level
        if "response_from" in ex:
            rec["response_from"] = ex["response_from"]
        records.append(rec)
    return records


BUILDERS = {"sft": build_sft, "qfft": build_qfft, "mix": build_mix, "upft": build_upft, "rft": build_rft,
            "noise": build_noise}


def build(args: Args, tokenizer, groups: list[dict], dropped: Counter) -> tuple[list[dict], dict]:
    """All rules: the mode's builder makes the records, the length rule cuts them to --max_len; returns the
    records to write and their statistics."""
    check_args(args)
    # UPFT's code ends full examples its own way (Formatter.sft); an sft run with --preset upft is UPFT's SFT
    # baseline, trained by the same code, so it ends the same way.
    fmt = Formatter(tokenizer, resolve_system(args), args.qfft_eos, upft_end=args.mode == "upft" or
                    args.preset == "upft")
    tokens = Tokens(tokenizer, args.batch_size, (fmt.eot, fmt.eos))
    counts: Counter = Counter()
    n_questions = len(groups)  # before rft's grading leaves some without a response
    records = BUILDERS[args.mode](args, groups, tokens, fmt, dropped, counts)
    fit = fit_pairs if args.pairs else fit_length
    kept = fit(args, tokens, fmt, records, dropped, counts)
    return kept, make_stats(args, tokens, kept, dropped, counts, n_questions)


def fit_length(args: Args, tokens: Tokens, fmt: Formatter, records: list[dict], dropped: Counter,
               counts: Counter) -> list[dict]:
    """The length rule: what train.py will see. An example over --max_len is dropped with --drop_long, else its
    completion is cut by the official code's rule for its type (truncate_completion); one whose prompt alone does
    not fit is dropped."""
    plen = tokens.lens([r["prompt"] for r in records], "prompt tokens")
    clen = tokens.lens([r["completion"] for r in records], "completion tokens")
    kept = []
    for r, a, b in zip(records, plen, clen):
        if a + b > args.max_len:
            if args.drop_long:
                dropped["over_max_len"] += 1
                continue
            # UPFT's SFTDataset forces the last token of a cut example to EOS; LLaMA-Factory (QFFT) adds nothing
            eos = fmt.eos if fmt.upft_end and r["type"] in ("sft", "full", "prefix") else ""
            c = truncate_completion(tokens, r["completion"], args.max_len - a, eos) if a < args.max_len else None
            if c is None:
                dropped["prompt_over_max_len"] += 1
                continue
            r["completion"] = c
            counts["truncated"] += 1
        kept.append(r)
    return kept


def pair_records(tokens: Tokens, fmt: Formatter, examples: list[dict], dropped: Counter) -> list[dict]:
    """DPO/SimPO pairs: chosen = the shortest correct response, rejected = the longest (in tokens)."""
    by_q: dict[str, list[dict]] = {}
    for ex in examples:
        by_q.setdefault(ex["source_id"], []).append(ex)
    lens = iter(tokens.lens([ex["response"] for ex in examples], "measuring responses"))
    records = []
    for qid, exs in by_q.items():
        ls = [next(lens) for _ in exs]
        if len(exs) < 2:
            dropped["pair_fewer_than_2_correct"] += 1
            continue
        best = min(range(len(exs)), key=lambda i: (ls[i], i))  # ties: the earliest response
        worst = max(range(len(exs)), key=lambda i: (ls[i], -i))
        if ls[best] == ls[worst]:  # nothing for a length preference to learn
            dropped["pair_no_length_difference"] += 1
            continue
        p, chosen = fmt.sft(exs[best]["question"], exs[best]["response"])
        _, rejected = fmt.sft(exs[worst]["question"], exs[worst]["response"])
        records.append({"id": qid, "type": "pair", "prompt": p, "chosen": chosen, "rejected": rejected,
                        "source_id": qid})
    return records


def fit_pairs(args: Args, tokens: Tokens, fmt: Formatter, records: list[dict], dropped: Counter,
              counts: Counter) -> list[dict]:
    """The length rule for pairs: prompt + the longer side within --max_len; each side over it is cut."""
    plen = tokens.lens([r["prompt"] for r in records], "prompt tokens")
    chl = tokens.lens([r["chosen"] for r in records], "chosen tokens")
    rjl = tokens.lens([r["rejected"] for r in records], "rejected tokens")
    kept = []
    for r, a, b, c in zip(records, plen, chl, rjl):
        if a + max(b, c) > args.max_len:
            if args.drop_long or a >= args.max_len:
                dropped["over_max_len"] += 1
                continue
            r["chosen"] = truncate_completion(tokens, r["chosen"], args.max_len - a) if a + b > args.max_len \
                else r["chosen"]
            r["rejected"] = truncate_completion(tokens, r["rejected"], args.max_len - a)
            if r["chosen"] is None or r["rejected"] is None:
                dropped["over_max_len"] += 1
                continue
            counts["truncated"] += 1
        kept.append(r)
    return kept


def make_stats(args: Args, tokens: Tokens, records: list[dict], dropped: Counter, counts: Counter,
               n_questions: int) -> dict:
    def mean(xs):
        return round(sum(xs) / len(xs), 2) if xs else 0.0

    plen = tokens.lens([r["prompt"] for r in records])
    fields = ("chosen", "rejected") if args.mode == "rft" and args.pairs else ("completion",)
    clen = {f: tokens.lens([r[f] for r in records]) for f in fields}
    # the positions train.py trains: every completion token, except the first of a prompt-less example (no token
    # before it predicts it)
    trained = [sum(max(clen[f][i] - (plen[i] == 0), 0) for f in fields) for i in range(len(records))]
    by_type = {}
    for typ in sorted({r["type"] for r in records}):
        idx = [i for i, r in enumerate(records) if r["type"] == typ]
        by_type[typ] = {"examples": len(idx), "prompt_tokens_mean": mean([plen[i] for i in idx]),
                        "completion_tokens_mean": mean([trained[i] for i in idx]),
                        "trained_tokens": sum(trained[i] for i in idx)}
    stats = {
        "mode": args.mode, "questions": n_questions,
        "questions_out": len({r["source_id"] for r in records}), "examples": len(records),
        "types": {t: v["examples"] for t, v in by_type.items()},
        # Sorted keys, so the stats file is byte-identical across runs (Counter order depends on which drop came first).
        "dropped": dict(sorted(dropped.items())), "dropped_total": sum(dropped.values()),
        "prompt_tokens_mean": mean(plen), "completion_tokens_mean": mean(trained),
        "trained_tokens": sum(trained),  # UPFT's "#Tokens tuning"
        "total_tokens": sum(plen) + sum(trained), "max_len": args.max_len, "by_type": by_type,
        "truncated": counts["truncated"],
    }
    if args.mode == "upft":  # prefixes shorter than L: whole responses / shrunk at an unstable token boundary
        stats.update(prefix_len=args.prefix_len, prefix_whole=counts["prefix_whole"],
                     prefix_shrunk=counts["prefix_shrunk"])
    if len(fields) == 2:
        stats["chosen_tokens_mean"] = mean(clen["chosen"])
        stats["rejected_tokens_mean"] = mean(clen["rejected"])
    return stats


# ----------------------------------------------------------------------------------------------------------------
def check_args(args: Args) -> None:
    def bad(msg):
        raise common.DataError(msg)
    if args.max_len < 1:
        bad("--max_len must be positive")
    if args.batch_size < 1:
        bad(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.grade_workers < 0:
        bad(f"--grade_workers must be >= 0 (0: one per core), got {args.grade_workers}")
    if args.max_questions is not None and args.max_questions < 1:
        bad(f"--max_questions must be >= 1, got {args.max_questions}")
    # Checked before the tokenizer and the input load: a typo in --output fails in a second, not after tokenizing GBs.
    common.check_writable(args.output, "--output")
    if args.mode == "mix" and not 0 <= args.alpha <= 1:
        bad(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.mode == "upft":
        if args.prefix_len is None or args.prefix_len < 1:
            bad("--mode upft needs --prefix_len L >= 1 (UPFT: 8 for Llama-3.1-8B-Instruct, 32 for "
                "Qwen2.5-Math-7B-Instruct, 128 for DeepSeek-R1-Distill-Qwen-7B)")
        if not 0 <= args.full_ratio <= 1:
            bad(f"--full_ratio must be in [0, 1], got {args.full_ratio}")
    if args.mode == "rft" and args.responses is not None:
        bad("--responses does not apply to --mode rft (every response is graded); pick with --select "
            "all|first|random|shortest|longest (UPFT's RFT: first, one correct response per question)")
    if args.pairs and args.mode != "rft":
        bad("--pairs works with --mode rft")
    if args.mode == "noise":
        if args.level is None:
            bad("--mode noise needs --level 2, 3 or 4")


def fingerprint(args: Args, tokenizer) -> dict:
    """What besides the arguments determines the output: the input's bytes and the tokenizer/template."""
    p = Path(args.input)
    if p.is_file():
        inp = runs.file_fingerprint(p, full=True)["sha256"]  # prepare reads every byte anyway: hash them all
    else:
        inp = f"hub:{args.input}:{args.split}" + (f":{args.dataset_config}" if args.dataset_config else "")
    # The tokenizer decides the training text (template, EOS, end of turn) and the cuts (the vocabulary), so a model
    # re-downloaded with a fixed template at the same name is a change, and "up to date" must not hide it.
    tok_h = hashlib.sha256(json.dumps([tokenizer.chat_template, tokenizer.eos_token, len(tokenizer),
                                       models.end_of_turn(tokenizer)], default=str).encode())
    tj = Path(args.model) / "tokenizer.json"
    if tj.is_file():
        tok_h.update(tj.read_bytes())
    return {"input_sha256": inp, "tokenizer_sha256": tok_h.hexdigest()}


def main():
    args = common.parse_args(Args, __doc__)
    check_args(args)
    out = Path(args.output)
    runs.lock_output(out)  # one run per output file
    meta_path, stats_path = Path(f"{out}.meta.json"), Path(f"{out}.stats.json")
    if args.push_to_hub:
        common.check_push(args.push_to_hub)
    push = (lambda: common.push_output(args.push_to_hub, out, [stats_path, meta_path], "Training data (prepare.py)")
            ) if args.push_to_hub else (lambda: None)
    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    models.set_chat_template(tokenizer, args.chat_template)
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k not in NOT_SETTINGS}
    settings.update(fingerprint(args, tokenizer))
    if runs.claim_output(meta_path, settings, args.overwrite, f"{out}") is not None and out.exists() \
            and stats_path.exists():
        print(f"{out} is up to date (same settings and input); pass --overwrite to rebuild it")
        return push()

    groups, dropped, n_records = load_groups(args)
    groups = take_questions(groups, args.max_questions, args.seed)
    records, stats = build(args, tokenizer, groups, dropped)
    if not records:
        raise common.DataError(f"no training examples left (dropped: {dict(dropped)})")
    stats["input_records"] = n_records
    meta_path.unlink(missing_ok=True)  # meta is written last: a rebuild killed half-way never looks finished
    common.write_jsonl(out, records)
    common.write_json(stats_path, stats)
    # the template text itself, not only --chat_template's path: train.py saves it into the checkpoint, so that the
    # trained model renders prompts exactly as its training data was rendered (and the file may move or change).
    # Question-free data used no template: None, and the trained model keeps its base model's.
    question_free = args.mode == "qfft" or (args.mode == "noise" and args.noise_form == "qfft") or \
        (args.mode == "mix" and args.mix_render == "bare")
    common.write_json(meta_path, runs.run_info(args, settings=settings,
                                                 chat_template=None if question_free else tokenizer.chat_template,
                                                 versions=runs.versions("transformers", "tokenizers")))
    types = ", ".join(f"{k} {v}" for k, v in stats["types"].items())
    print(f"wrote {out}: {stats['examples']} examples ({types}) from {stats['questions_out']} questions; "
          f"dropped {stats['dropped_total']}{' ' + str(stats['dropped']) if stats['dropped'] else ''}; "
          f"trained tokens {stats['trained_tokens']}, "
          f"mean prompt/completion tokens {stats['prompt_tokens_mean']}/{stats['completion_tokens_mean']}")
    push()


if __name__ == "__main__":
    common.run_main(main)
