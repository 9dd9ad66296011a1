"""packing.py: every attention implementation that runs on CPU keeps packed examples apart (loss and gradients
equal separate sequences, against the dense-mask reference), and the memory-lean loss heads equal the logits one."""
import pytest
import torch

import packing
import train
from test_train import write_data


def load(path, attn):
    from transformers import AutoModelForCausalLM
    packing.register()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)


def examples_of(tokenizer, tmp_path, n=4, seed=3):
    write_data(tmp_path / "d.jsonl", tokenizer, n=n, seed=seed)
    examples, _ = train.load_examples(tokenizer, str(tmp_path / "d.jsonl"), 4096)
    return examples


def loss_and_grads(model, mb, attn, head="logits"):
    model.zero_grad()
    loss = train.micro_batch_loss(model, mb, "cpu", attn, head)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def separate_reference(model, examples, w, pad):
    """sum over examples of each one's weighted loss, one sequence per forward (no packing at all)."""
    model.zero_grad()
    total = sum(train.micro_batch_loss(model, train.collate([j], examples, w, True, pad), "cpu", "sdpa")
                for j in range(len(examples)))
    total.backward()
    return total.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a, b, rtol=1e-4, atol=1e-6):
    (la, ga), (lb, gb) = a, b
    assert la == pytest.approx(lb, rel=rtol)
    assert ga.keys() == gb.keys()
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=rtol, atol=atol), (k, (ga[k] - gb[k]).abs().max())


@pytest.mark.parametrize("attn", ["sdpa", packing.VARLEN])
@pytest.mark.parametrize("which", ["random_qwen2", "random_llama"])
def test_packed_loss_and_grads_equal_separate(attn, which, request, tokenizer, tmp_path):
    """sdpa = the dense block-diagonal mask (the reference); packed_varlen on CPU = SDPA per example, the same
    wiring (cu_seq_lens through transformers' attention interface, GQA) as the GPU kernel."""
    model = load(request.getfixturevalue(which), attn)
    examples = examples_of(tokenizer, tmp_path)
    idx, pad = list(range(len(examples))), tokenizer.pad_token_id
    w = train.token_weights(idx, examples, "sample")
    ref = separate_reference(load(request.getfixturevalue(which), "sdpa"), examples, w, pad)
    assert_close(loss_and_grads(model, train.collate(idx, examples, w, True, pad), attn), ref)


def test_varlen_boundaries_matter(random_qwen2, tokenizer, tmp_path):
    """The test above can fail: packed_varlen told that the row is one sequence lets attention cross examples."""
    model = load(random_qwen2, packing.VARLEN)
    examples = examples_of(tokenizer, tmp_path)
    idx, pad = list(range(len(examples))), tokenizer.pad_token_id
    w = train.token_weights(idx, examples, "sample")
    mb = train.collate(idx, examples, w, True, pad)
    good = loss_and_grads(model, mb, packing.VARLEN)[0]
    mb["segments"] = torch.zeros_like(mb["segments"])
    assert abs(loss_and_grads(model, mb, packing.VARLEN)[0] - good) > 1e-3


@pytest.mark.parametrize("which", ["random_qwen2", "random_llama"])
def test_flex_forward_equals_dense_on_cpu(which, request, tokenizer, tmp_path):
    """flex_attention runs forward only on CPU in torch 2.13 ('FlexAttention does not support backward on CPU'):
    here the per-example losses of a packed row equal separate sequences; gradients are checked on GPU by
    bench/gpu_check.py."""
    path = request.getfixturevalue(which)
    flex, dense = load(path, packing.FLEX).eval(), load(path, "sdpa").eval()
    examples = examples_of(tokenizer, tmp_path)
    idx, pad = list(range(len(examples))), tokenizer.pad_token_id
    with torch.no_grad():
        for j in idx:  # weight only example j: its mean token loss
            w = {i: (1.0 / examples[i].n_trained if i == j else 0.0) for i in idx}
            got = train.micro_batch_loss(flex, train.collate(idx, examples, w, True, pad), "cpu", packing.FLEX)
            sep = train.micro_batch_loss(dense, train.collate([j], examples, w, True, pad), "cpu", "sdpa")
            assert got.item() == pytest.approx(sep.item(), rel=1e-4)
        # and a mask without boundaries is detectably wrong
        mb = train.collate(idx, examples, train.token_weights(idx, examples, "sample"), True, pad)
        good = train.micro_batch_loss(flex, mb, "cpu", packing.FLEX).item()
        mb["segments"] = torch.zeros_like(mb["segments"])
        assert abs(train.micro_batch_loss(flex, mb, "cpu", packing.FLEX).item() - good) > 1e-3


def test_packed_implementations_refuse_other_inputs(random_qwen2):
    for attn in (packing.FLEX, packing.VARLEN):
        model = load(random_qwen2, attn)
        with pytest.raises(ValueError, match="packed rows"):
            model(input_ids=torch.tensor([[1, 2, 3]]))


def test_choose_attention():
    assert packing.choose_attention("auto", on_gpu=False, packing=True) == "sdpa"
    assert packing.choose_attention("auto", on_gpu=True, packing=False) in ("sdpa", "flash_attention_2")
    assert packing.choose_attention(packing.FLEX, on_gpu=False, packing=True) == packing.FLEX
    with pytest.raises(ValueError, match="needs packing"):
        packing.choose_attention(packing.VARLEN, on_gpu=True, packing=False)
    with pytest.raises(ValueError, match="choose one of"):
        packing.choose_attention("flash", on_gpu=True, packing=True)
    assert packing.choose_loss_head("auto", on_gpu=False) == "chunked"


def test_cu_seqlens():
    cu, longest = packing.cu_seqlens(torch.tensor([0, 0, 0, 1, 2, 2]))
    assert cu.tolist() == [0, 3, 4, 6] and longest == 3


# --------------------------------------------------------------------------------------------- loss heads
def test_linear_ce_chunked_matches_plain_loss_and_grads():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    wt = torch.randn(30, 16, generator=g, requires_grad=True)
    b = torch.randn(30, generator=g, requires_grad=True)
    t, w = torch.randint(0, 30, (50,), generator=g), torch.rand(50, generator=g)
    ref = (torch.nn.functional.cross_entropy(h @ wt.T + b, t, reduction="none") * w).sum()
    g_ref = torch.autograd.grad(ref, (h, wt, b))
    got = packing.linear_ce_chunked(h, wt, b, t, w, chunk=7)
    g_got = torch.autograd.grad(got, (h, wt, b))
    assert torch.allclose(ref, got, atol=1e-5)
    assert all(torch.allclose(a, c, atol=1e-5) for a, c in zip(g_ref, g_got))


def test_chunked_cross_entropy_matches_loss_and_grad():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 30, generator=g, requires_grad=True)
    t, w = torch.randint(0, 30, (50,), generator=g), torch.rand(50, generator=g)
    ref = (torch.nn.functional.cross_entropy(logits, t, reduction="none") * w).sum()
    (g_ref,) = torch.autograd.grad(ref, logits)
    got = packing.chunked_ce(logits, t, w, chunk=7)
    (g_got,) = torch.autograd.grad(got, logits)
    assert torch.allclose(ref, got, atol=1e-5) and torch.allclose(g_ref, g_got, atol=1e-6)


@pytest.mark.parametrize("which", ["random_qwen2", "random_llama"])
def test_chunked_loss_head_equals_logits_head_on_the_model(which, request, tokenizer, tmp_path, monkeypatch):
    """Values and gradients of every parameter (tied lm_head included), with chunks smaller than the row, and
    lm_head back to normal afterwards."""
    model = load(request.getfixturevalue(which), "sdpa")
    examples = examples_of(tokenizer, tmp_path, n=6)
    idx, pad = list(range(len(examples))), tokenizer.pad_token_id
    mb = train.collate(idx, examples, train.token_weights(idx, examples, "token"), True, pad)
    ref = loss_and_grads(model, mb, "sdpa", "logits")
    monkeypatch.setattr(packing, "HEAD_CHUNK", 5)  # many chunks
    got = loss_and_grads(model, mb, "sdpa", "chunked")
    assert_close(got, ref, rtol=1e-5)
    assert "forward" not in vars(model.get_output_embeddings())
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size


def test_saved_checkpoint_has_no_custom_attention_name(random_qwen2, tmp_path):
    """The HF checkpoint train.py writes must load anywhere (vLLM, plain transformers) without packing.py."""
    model = load(random_qwen2, packing.FLEX)
    model.save_pretrained(tmp_path / "m")
    assert "packed_" not in (tmp_path / "m" / "config.json").read_text()
