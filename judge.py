"""The LLM judge of evaluate.py --judge (UPFT's grading of open-ended answers, inference/eval.py): a second vLLM
engine reads question, reference answer and response and says TRUE or FALSE; evaluate.py counts a sample correct
when the rule grader OR the judge says so.

Prompt and parser: a judge whose tokenizer brings its own `get_context(question, reference, response)` and
`parse_response(text)` through remote code (UPFT's judge, KbsdJames/Omni-Judge) uses them, but only when its remote
code is trusted (evaluate.py --judge_trust_remote_code, which the UPFT recipes pass by default, or
--trust_remote_code); every other judge (or without that) gets BUILTIN_PROMPT through its chat template, parsed by
parse_verdict, and Omni-Judge run that way is warned about loudly: it is not UPFT's protocol. Omni-Judge's prompt
lives in its hub repository's tokenizer code only, so it is not copied here. Greedy, JUDGE_MAX_TOKENS new tokens,
as UPFT. An output that cannot be parsed counts as "judge said no" and is counted (metric judge_unparsed). Not a
stage script: evaluate.py imports it.
"""
from __future__ import annotations

import gc
import re
import sys

import common
import models

JUDGE_MAX_TOKENS = 300          # UPFT: SamplingParams(temperature=0, max_tokens=300)
JUDGE_MAX_MODEL_LEN = 16384     # UPFT: max_model_len=16 * 1024 (capped by the judge's own context)
JUDGE_ONLY_PRED = "[judge]"     # pred of a sample that only the judge accepted and whose answer it did not quote

BUILTIN_PROMPT = """You are grading a student's solution to a problem against the reference answer.

## Problem
{question}

## Reference answer
{reference}

## Student solution
{response}

Compare the student's FINAL answer with the reference answer. They are equivalent when they denote the same value,
expression or choice, even if written differently. Reply in exactly two lines:
Answer: <the student's final answer>
Judgement: TRUE or FALSE"""

# Both spellings (Judgement, Judgment), markdown bold around key or value, and a full-width colon: judges are not
# strict about the format they were asked for, and a missed verdict would count as "no".
_VERDICT = re.compile(r"judge?ment\s*\**\s*[:：]\s*\**\s*(TRUE|FALSE)\b", re.IGNORECASE)
# The `Answer:` line BUILTIN_PROMPT asks for, also as "Student's final answer:"; re.M: one line, never the reasoning
# before it.
_ANSWER = re.compile(r"^\s*\**(?:Student(?:'s)? )?(?:final )?answer\**\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.M)


def parse_verdict(text: str) -> dict:
    """{"verdict": True/False/None, "answer": str|None} from a judge output in BUILTIN_PROMPT's format: the last
    'Judgement: TRUE|FALSE' (any case, ** bold allowed); None when there is none (counted as 'no')."""
    # the LAST verdict decides: a judge may restate the format or think aloud before it decides
    hits = _VERDICT.findall(text or "")
    ans = _ANSWER.findall(text or "")
    return {"verdict": hits[-1].upper() == "TRUE" if hits else None, "answer": ans[-1] if ans else None}


def is_omni_judge(model: str) -> bool:
    """UPFT's judge (KbsdJames/Omni-Judge, or a local copy whose folder says so)."""
    # a local copy is often saved as omni_judge
    return "omni-judge" in model.lower().replace("_", "-")


def has_own_protocol(tokenizer) -> bool:
    """Omni-Judge style: the tokenizer (remote code) defines get_context and parse_response."""
    return callable(getattr(tokenizer, "get_context", None)) and callable(getattr(tokenizer, "parse_response", None))


def _parse_own(tokenizer, text: str) -> dict:
    try:
        res = tokenizer.parse_response(text)
        # Omni-Judge's parse_response returns a dict; UPFT reads res["judgement"] == "TRUE". Anything raised by the
        # remote parser (a missing key, no match) is an unparsed output, UPFT's "Failed to parse".
        verdict = str(res["judgement"]).strip().upper()
        return {"verdict": True if verdict == "TRUE" else False if verdict == "FALSE" else None,
                "answer": (str(res.get("answer")).strip() or None) if res.get("answer") is not None else None}
    except Exception:  # UPFT: "Failed to parse"
        return {"verdict": None, "answer": None}


def build_prompts(tokenizer, items: list[tuple[str, str, str]], own: bool, max_prompt_tokens: int) -> list[str]:
    """One prompt per (question, reference, response). A response too long for the judge's context keeps its tail
    (where the final answer is)."""
    def render(q, ref, resp):
        if own:
            return tokenizer.get_context(q, ref, resp)
        return models.render_prompt(tokenizer, BUILTIN_PROMPT.format(question=q, reference=ref, response=resp), None)

    prompts = []
    for q, ref, resp in items:
        text = render(q, ref, resp)
        n = len(models.encode(tokenizer, [text])[0])
        if n > max_prompt_tokens:
            ids = models.encode(tokenizer, [resp])[0]
            # 8 tokens of slack: decoding a cut token sequence and encoding it again inside the prompt does not give
            # back exactly the same count, and the prompt is not measured twice
            keep = max(0, len(ids) - (n - max_prompt_tokens) - 8)
            # ids[len(ids) - keep:], not ids[-keep:], which would be the whole response when keep is 0
            text = render(q, ref, tokenizer.decode(ids[len(ids) - keep:]) if keep else "")
        prompts.append(text)
    return prompts


def free_engine() -> None:
    """Release the GPU memory of an engine that went out of scope, so that a second one (the judge) fits."""
    # Collect first: the dropped LLM object still holds the model and KV cache until Python frees it.
    gc.collect()
    try:
        # vLLM keeps its parallel groups in module globals: a second engine in this process needs them destroyed
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # another vLLM layout, or nothing initialised: nothing to tear down
        pass
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
    gc.collect()


def run_judge(model: str, items: list[tuple[str, str, str]], *, tensor_parallel_size: int = 1,
              trust_remote_code: bool = False, seed: int = 42) -> list[dict]:
    """Judge (question, reference, response) items with a vLLM engine: [{"output", "verdict", "answer"}]."""
    from transformers import AutoConfig
    from vllm import SamplingParams
    tok = models.load_tokenizer(model, trust_remote_code)
    own = trust_remote_code and has_own_protocol(tok)
    try:
        ctx = getattr(AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code),
                      "max_position_embeddings", None)
    except Exception as e:
        raise common.DataError(f"--judge {model}: cannot read its config ({str(e).splitlines()[0]})") from None
    # a judge with a shorter context than UPFT's 16384 would refuse that max_model_len: its own context caps it
    max_len = min(JUDGE_MAX_MODEL_LEN, ctx or JUDGE_MAX_MODEL_LEN)
    print(f"judge {model}: {'its own prompt/parser (remote code)' if own else 'the built-in prompt'}, "
          f"{len(items)} responses, max_model_len {max_len}")
    if own:
        print(f"note: the judge's REMOTE CODE runs here: {model}'s tokenizer code (get_context / parse_response) "
              f"builds every prompt and reads every verdict, as UPFT's inference/eval.py does", file=sys.stderr)
    elif is_omni_judge(model):
        why = "its tokenizer has no get_context/parse_response" if trust_remote_code else \
            "its remote code is not trusted (pass --judge_trust_remote_code)"
        print(f"WARNING: {model} judges with judge.BUILTIN_PROMPT, NOT Omni-Judge's own prompt and parser as in UPFT's "
              f"protocol: {why}. Its verdicts are not comparable with UPFT's numbers.", file=sys.stderr)
    # every prompt leaves room for the whole verdict, so that no judgement is cut off by the context
    prompts = build_prompts(tok, items, own, max_len - JUDGE_MAX_TOKENS - 1)
    # evaluate.py's generating engine is gone by now: its GPU memory must be free before the judge loads
    free_engine()
    llm = models.make_llm(model, seed=seed, tensor_parallel_size=tensor_parallel_size, max_model_len=max_len,
                          trust_remote_code=trust_remote_code)
    # UPFT's stop_token_ids: EOS and <|eot_id|> (a Llama-3 chat turn ends with the latter). A tokenizer without
    # <|eot_id|> maps it to unk, which must not become a stop token.
    stop = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")}
            if isinstance(t, int) and t != tok.unk_token_id]
    params = SamplingParams(temperature=0.0, max_tokens=JUDGE_MAX_TOKENS, stop_token_ids=stop or None)
    # Omni-Judge's get_context text goes to vLLM as text, tokenized by vLLM as UPFT does; our chat-template text
    # already carries its special tokens
    inputs = prompts if own else [{"prompt_token_ids": ids} for ids in models.encode(tok, prompts)]
    outs = llm.generate(inputs, params)
    texts = [o.outputs[0].text for o in outs]
    del llm
    free_engine()
    return [{"output": t, **(_parse_own(tok, t) if own else parse_verdict(t))} for t in texts]


def store(records: list[dict], results: list[dict], model: str) -> None:
    """Put the judge's raw outputs, verdicts and extracted answers on the records (in place), one per response."""
    # results are flat, one per response, in the order the items were built: records, then each record's responses
    it = iter(results)
    for r in records:
        res = [next(it) for _ in r["responses"]]
        r["judge"] = model
        r["judge_outputs"] = [x["output"] for x in res]
        r["judge_verdicts"] = [x["verdict"] for x in res]
        r["judge_answers"] = [x["answer"] for x in res]
