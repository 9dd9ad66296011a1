"""Attention under packing, and a loss head that never holds the full logits: what train.py's packed path runs.

Attention over one packed row of several examples must never cross examples. The implementations, all
selected through transformers' attention interface (`attn_implementation=` of `from_pretrained`):

    name               where it runs            cost        what passes the example boundaries
    flash_attention_2  GPU, flash-attn wheel    O(T)        position_ids (transformers derives cu_seqlens)
    packed_varlen      GPU (torch's own FA2)    O(T)        cu_seq_lens_q/k kwargs; on CPU: SDPA per example
    packed_flex        GPU (compiled); CPU fwd  O(T)        a flex_attention BlockMask from the segment ids
    sdpa               anywhere                 O(T^2) mem  a dense [1,1,T,T] block-diagonal causal mask

`choose_attention("auto", ...)`: flash_attention_2 when flash-attn is installed (GPU), else packed_varlen when
torch's varlen kernel runs on this GPU (a tiny probe), else packed_flex on GPU, else sdpa with the dense mask
(CPU: flex_attention has no backward on CPU in torch 2.13, and CPU runs are small). The dense mask stays the
reference: tests and bench/gpu_check.py compare every implementation with it (packed == separate sequences).

Loss head (`LOSS_HEADS`): logits (lm_head over the trained positions, then fp32 cross-entropy in checkpointed
chunks: the bf16 logits [N, V] exist whole, ~5 GB at 16k x 152k), chunked (lm_head + cross-entropy per chunk
of positions inside one checkpointed function: backward recomputes each chunk's logits; peak = one chunk), and
liger (Liger-Kernel's fused linear cross-entropy, GPU, when installed and its per-token gradients pass a
start-up probe). All return sum(weight x token cross-entropy), exactly the same number.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Literal, Optional

import torch
import torch.nn.functional as F

FLEX, VARLEN = "packed_flex", "packed_varlen"
HEAD_CHUNK = 1024  # positions per chunk of the chunked loss head: 1024 x 152k fp32 logits ~ 0.6 GB
ATTENTION = ("auto", "flash_attention_2", VARLEN, FLEX, "sdpa", "eager")
LossHead = Literal["auto", "liger", "chunked", "logits"]
LOSS_HEADS = ("auto", "liger", "chunked", "logits")


# --------------------------------------------------------------------------------------------- segment metadata
def cu_seqlens(segments: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Segment ids [T] (0,0,0,1,1,2,...) -> cumulative boundaries int32 [n+1] and the longest segment."""
    # Segment ids are 0..n-1 in order (collate numbers them), so bincount gives each example's length in row order.
    counts = torch.bincount(segments)
    cu = torch.zeros(len(counts) + 1, dtype=torch.int32, device=segments.device)
    cu[1:] = counts.cumsum(0)
    return cu, int(counts.max())


def dense_block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """[1, 1, T, T] boolean: attend to earlier positions of the same example only (the O(T^2) reference)."""
    T = segments.shape[0]
    # Boolean, not an additive float mask: SDPA takes it as "may attend", and a T x T float mask in fp32 would be 4x the
    # memory. Causal within the same example, nothing across examples: exactly what separate sequences see.
    same = segments[:, None] == segments[None, :]
    return (same & torch.ones(T, T, dtype=torch.bool, device=segments.device).tril())[None, None]


def flex_block_mask(segments: torch.Tensor):
    """A flex_attention BlockMask for causal attention within each segment; only the 128x128 blocks that hold an
    allowed pair are computed, so the cost is O(sum of L_i^2), not O(T^2)."""
    from torch.nn.attention.flex_attention import create_block_mask
    seg = segments.contiguous()

    def same_example_causal(b, h, q, kv):
        return (seg[q] == seg[kv]) & (q >= kv)
    T = seg.shape[0]
    # Built per micro-batch (the segments change every time); B and H are None because the mask is the same for every
    # head and for the one packed row.
    return create_block_mask(same_example_causal, None, None, T, T, device=seg.device, _compile=seg.is_cuda)


def attention_kwargs(impl: str, segments: torch.Tensor) -> dict:
    """Extra model(...) arguments that tell implementation `impl` where the examples of a packed row start."""
    if impl == FLEX:
        return {"attention_mask": flex_block_mask(segments)}
    if impl == VARLEN:
        cu, longest = cu_seqlens(segments)
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    if impl.startswith("flash"):
        return {}  # transformers derives cu_seqlens from the restarting position_ids
    if int(segments[-1]) > 0:  # several examples: the dense block-diagonal mask
        return {"attention_mask": dense_block_causal_mask(segments)}
    return {}  # one example: plain causal


# --------------------------------------------------------------------------------------- attention functions
_compiled_flex = None


def _flex():
    """flex_attention, compiled once (dynamic shapes: packed rows change length every micro-batch)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        # Compiled: uncompiled flex_attention materializes the scores and is no cheaper than the dense mask; dynamic, or
        # every new row length would recompile.
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def _need(kind: str, what: str):
    raise ValueError(f"attention {kind} runs only on train.py's packed rows ({what} missing); load the model with "
                     "attn_implementation='sdpa' for other uses")


def flex_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, H, T, D], key/value [B, Hkv, T, D] -> ([B, T, H, D], None)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    if not isinstance(attention_mask, BlockMask):
        _need(FLEX, "a BlockMask from packing.flex_block_mask")
    fn = _flex() if query.is_cuda else flex_attention  # CPU: eager (forward only in torch 2.13; tests)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = fn(query, key, value, block_mask=attention_mask, scale=scaling,
                 enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _varlen_kernel_ok(t: torch.Tensor) -> bool:
    return t.is_cuda and t.dtype in (torch.bfloat16, torch.float16)


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers attention function over one packed row: torch.nn.attention.varlen (FlashAttention-2 inside
    PyTorch) on a CUDA GPU in bf16/fp16; elsewhere the same semantics as a loop of causal SDPA per example."""
    if cu_seq_lens_q is None:
        _need(VARLEN, "cu_seq_lens_q")
    if query.shape[0] != 1:
        raise ValueError(f"attention {VARLEN}: one packed row expected, got batch {query.shape[0]}")
    gqa = query.shape[1] != key.shape[1]
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
    if _varlen_kernel_ok(q):
        from torch.nn.attention.varlen import varlen_attn
        # window_size=(-1, 0): no left limit, no look-ahead, i.e. causal within each example (the kernel's way to say
        # it).
        out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seq_lens_q, cu_seq_lens_q,
                          int(max_length_q), int(max_length_q), scale=scaling, window_size=(-1, 0), enable_gqa=gqa)
    else:
        # The fallback (CPU, fp32) must give the same numbers as the kernel: one causal SDPA per example, which is what
        # "packed == separate sequences" means, so the tests can check the kwargs plumbing anywhere.
        bounds = cu_seq_lens_q.tolist()
        parts = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                                scale=scaling, enable_gqa=gqa)
                 for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
        out = torch.cat(parts, dim=2)[0].transpose(0, 1)
    return out[None].contiguous(), None


def register():
    """Make packed_flex and packed_varlen valid attn_implementation names (idempotent)."""
    from transformers import AttentionInterface
    AttentionInterface.register(FLEX, flex_attention_forward)
    AttentionInterface.register(VARLEN, varlen_attention_forward)


def varlen_works(device) -> bool:
    """Can torch's varlen kernel run forward and backward on this device (CUDA, sm80+)?"""
    if torch.device(device).type != "cuda":
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn
        # A probe rather than a version or capability check: the kernel's support depends on the GPU generation, the
        # torch build and the head size together, and a failed backward must be found here, not in step 1 of a long run.
        q = torch.randn(16, 2, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        cu = torch.tensor([0, 7, 16], device=device, dtype=torch.int32)
        varlen_attn(q, q, q, cu, cu, 9, 9, window_size=(-1, 0)).sum().backward()
        return True
    except Exception:
        return False


def flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except ImportError:
        return False


def choose_attention(requested: str, on_gpu: bool, packing: bool, device="cuda") -> str:
    """The attention implementation train.py loads the model with (see the module docstring)."""
    if requested not in ATTENTION:
        raise ValueError(f"--attn_implementation {requested!r}: choose one of {', '.join(ATTENTION)}")
    if requested in (FLEX, VARLEN) and not packing:
        raise ValueError(f"--attn_implementation {requested} needs packing (--no_packing pads: use sdpa)")
    if requested != "auto":
        return requested
    # flash-attn first when installed: the kernel the papers' trainers ran (LLaMA-Factory for QFFT, OpenRLHF for UPFT);
    # then torch's own varlen kernel (no extra wheel), then flex_attention.
    if on_gpu and flash_attn_installed():
        return "flash_attention_2"
    if not (on_gpu and packing):
        return "sdpa"
    return VARLEN if varlen_works(device) else FLEX


# ------------------------------------------------------------------------------------------------- loss head
def _ce_sum(logits, t, w):
    # fp32 cross-entropy even for bf16 logits, as transformers' own causal-LM loss upcasts: bf16 keeps about 3
    # significant digits, too few for a log-sum-exp over 152k classes.
    return (F.cross_entropy(logits.float(), t, reduction="none") * w).sum()


def chunked_ce(logits, t, w, chunk: int = 4096):
    """sum(w x cross-entropy) in fp32, one chunk of positions at a time, each recomputed in backward: the fp32
    copy and softmax of a 16k x 152k logit matrix (~10 GB each) never exist whole."""
    from torch.utils.checkpoint import checkpoint
    if logits.shape[0] <= chunk:
        return _ce_sum(logits, t, w)
    return sum(checkpoint(_ce_sum, logits[s:s + chunk], t[s:s + chunk], w[s:s + chunk], use_reentrant=False)
               for s in range(0, logits.shape[0], chunk))


def _linear_ce_sum(h, weight, bias, t, w):
    return _ce_sum(F.linear(h, weight, bias), t, w)


def linear_ce_chunked(h, weight, bias, t, w, chunk: int = 1024):
    """sum(w x cross-entropy(h @ weight.T + bias)): logits exist for one chunk of positions at a time, in forward
    and (recomputed) in backward."""
    from torch.utils.checkpoint import checkpoint
    # Checkpointed per chunk: backward recomputes one chunk's logits at a time instead of keeping all of them for the
    # gradient, so the peak is one chunk of [chunk, V] whatever the sequence length.
    return sum(checkpoint(_linear_ce_sum, h[s:s + chunk], weight, bias, t[s:s + chunk], w[s:s + chunk],
                          use_reentrant=False) for s in range(0, h.shape[0], chunk))


def linear_ce_liger(h, weight, bias, t, w):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    out = liger_fused_linear_cross_entropy(h, weight, t, bias=bias, reduction="none")
    # Liger has returned a tensor, a tuple or an output object depending on its release: accept each.
    loss = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)
    return (loss.float() * w).sum()


def liger_installed() -> bool:
    try:
        import liger_kernel  # noqa: F401
        return True
    except ImportError:
        return False


def liger_exact(device) -> bool:
    """Liger's fused loss with per-token weights matches the plain loss, values and gradients (older Liger
    releases scaled the weight gradient wrongly under reduction='none')?"""
    try:
        g = torch.Generator(device=device).manual_seed(0)
        h = torch.randn(40, 64, device=device, generator=g, requires_grad=True)
        wt = torch.randn(256, 64, device=device, generator=g, requires_grad=True)
        t, w = torch.randint(0, 256, (40,), device=device, generator=g), torch.rand(40, device=device, generator=g)
        got = linear_ce_liger(h, wt, None, t, w)
        g_got = torch.autograd.grad(got, (h, wt))
        ref = _linear_ce_sum(h, wt, None, t, w)
        g_ref = torch.autograd.grad(ref, (h, wt))
        return bool(torch.allclose(got, ref, rtol=1e-4, atol=1e-4)
                    and all(torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(g_got, g_ref)))
    except Exception:
        return False


def choose_loss_head(requested: str, on_gpu: bool, device="cuda") -> str:
    if requested not in LOSS_HEADS:
        raise ValueError(f"--loss_head {requested!r}: choose one of {', '.join(LOSS_HEADS)}")
    if requested != "auto":
        return requested
    # "auto" takes Liger only when its probe matches the reference, values and gradients: a faster loss with a wrong
    # gradient would silently train another model.
    return "liger" if on_gpu and liger_installed() and liger_exact(device) else "chunked"


@contextlib.contextmanager
def loss_head(model, impl: str, targets: torch.Tensor, weights: torch.Tensor, chunk: Optional[int] = None):
    """While active, the model's output embedding (lm_head) returns sum(weight x cross-entropy) of the positions
    it is given (as a 0-d tensor in `logits`) instead of their logits. It runs inside lm_head's own call, so
    DeepSpeed ZeRO-3 gathers (and in backward re-gathers) the weight exactly as for the usual logits."""
    if impl == "logits":
        yield
        return
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"--loss_head {impl}: the output embedding is {type(head).__name__}, not nn.Linear "
                         "(use --loss_head logits)")
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    # Gemma-2's softcapping and Cohere's logit_scale are applied to the logits after lm_head: a fused head that returns
    # the loss from inside lm_head would skip them and compute another loss.
    if getattr(text_cfg, "final_logit_softcapping", None) or getattr(text_cfg, "logit_scale", None):
        raise ValueError(f"--loss_head {impl}: this model transforms its logits after lm_head "
                         "(use --loss_head logits)")
    fused = linear_ce_liger if impl == "liger" else \
        (lambda h, wt, b, t, w: linear_ce_chunked(h, wt, b, t, w, chunk or HEAD_CHUNK))

    def forward(h):
        return fused(h.reshape(-1, h.shape[-1]), head.weight, head.bias, targets, weights)
    # An instance attribute shadows the class's forward for this call only; DeepSpeed's ZeRO-3 hooks are on the module,
    # not on forward, so they still gather the weight.
    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to the class's forward


def head_loss(model, kwargs: dict, impl: str, targets: torch.Tensor, weights: torch.Tensor,
              chunk: Optional[int] = None) -> torch.Tensor:
    """sum(weights x cross-entropy(targets)) of model(**kwargs) at the positions kwargs['logits_to_keep'] selects;
    targets/weights are given at those positions only."""
    if impl == "logits":
        out = model(**kwargs)
        return chunked_ce(out.logits.reshape(-1, out.logits.shape[-1]), targets, weights)
    with loss_head(getattr(model, "module", model), impl, targets, weights, **({"chunk": chunk} if chunk else {})):
        return model(**kwargs).logits.reshape(())
