"""The language-model loss: output projection (lm_head) + cross-entropy, three ways.

    cross_entropy(h, W, targets, vocab_size, impl)  ->  mean loss over targets != IGNORE

h: (N, C) final hidden states, W: (V_pad, C) the (tied) output embedding, padded to a multiple
of 128 rows so the projection's matrix shapes are tensor-core friendly; columns >= vocab_size
are padding and never take part in the softmax.

- "upcast": logits = h W^T, then F.cross_entropy on fp32 logits (the textbook path; an N x V_pad
  fp32 tensor and its gradient live in memory: 3.3 GB each at 16K tokens).
- "plain": F.cross_entropy on the bf16 logits (nanoGPT's path; under torch.compile Inductor
  upcasts inside its fused softmax kernel, so no fp32 copy is stored).
- "fused": our fused linear + cross-entropy. Rows are taken in chunks of `chunk`; for each
  chunk the logits are computed, one Triton kernel turns them in place into the gradient
  d loss / d logits = (softmax - onehot) / n (two passes over the row: online max and sum,
  then the gradient), and two matrix products give d h and accumulate d W. The full N x V
  logits never exist, and the backward pass only scales the stored gradients.
- "liger": Liger-Kernel's fused linear cross-entropy (the same idea; `pip install liger-kernel`),
  for a side-by-side measurement.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

IGNORE = -100  # target value that contributes no loss (PyTorch's and transformers' convention)
IMPLS = ("upcast", "plain", "fused", "liger")
CHUNK = 4096  # default rows per chunk in "fused": 4096 x 50304 bf16 logits = 412 MB alive at a time


@triton.jit
def softmax_xent_grad_kernel(Logits, stride_row, Targets, Loss, inv_n_ptr, V, V_PAD,
                             BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
    """One program per row. Loss_row = LSE - logit[target] over the first V columns; with
    WRITE_GRAD the row is overwritten by (softmax - onehot(target)) / n (zero in the padding)."""
    row = tl.program_id(0).to(tl.int64)
    ptr = Logits + row * stride_row
    target = tl.load(Targets + row)
    m = float("-inf")  # running row maximum
    l = 0.0            # running sum of exp(x - m)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(l)
    valid = target != -100
    x_target = tl.load(ptr + tl.where(valid, target, 0)).to(tl.float32)
    tl.store(Loss + row, tl.where(valid, lse - x_target, 0.0))
    if WRITE_GRAD:
        inv_n = tl.where(valid, tl.load(inv_n_ptr), 0.0)
        for start in range(0, V_PAD, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            g = (tl.exp(x - lse) - (cols == target).to(tl.float32)) * inv_n
            tl.store(ptr + cols, g.to(Logits.dtype.element_ty), mask=cols < V_PAD)


def _softmax_xent_grad_(logits, targets, inv_n, vocab_size, write_grad):
    """Per-row losses of a (rows, V_pad) logits chunk; with write_grad the chunk becomes its gradient."""
    loss = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    block = min(4096, triton.next_power_of_2(logits.shape[1]))
    softmax_xent_grad_kernel[(logits.shape[0],)](logits, logits.stride(0), targets, loss, inv_n, vocab_size,
                                                 logits.shape[1], BLOCK_V=block, WRITE_GRAD=write_grad,
                                                 num_warps=8 if block >= 2048 else 4)
    return loss


def _accumulate_fp32_(acc, a, b):
    """acc += a @ b with fp32 accumulation and output (cuBLAS reads and writes acc once)."""
    if acc.is_cuda:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:  # the out_dtype overload is CUDA-only
        acc += (a @ b).float()


def _compute_dtype(h):
    """bf16/fp16 under autocast (the dtype the projection would have run in), else h's dtype."""
    return torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype


@torch.library.custom_op("gpt2flash::fused_linear_xent", mutates_args=())
def fused_linear_xent(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                      compute_dtype: torch.dtype, with_grad: bool, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, d loss/d h, d loss/d W); the gradients are empty when not with_grad."""
    hc, wc = h.to(compute_dtype), weight.to(compute_dtype)
    n = (targets != IGNORE).sum().clamp(min=1)
    inv_n = (1.0 / n.float()).reshape(1)
    losses = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(hc) if with_grad else hc.new_empty(0)
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if with_grad else weight.new_empty(0)
    for start in range(0, h.shape[0], chunk):
        rows = slice(start, start + chunk)
        logits = hc[rows] @ wc.T
        losses[rows] = _softmax_xent_grad_(logits, targets[rows], inv_n, vocab_size, with_grad)
        if with_grad:  # logits now holds d loss / d logits for these rows
            torch.mm(logits, wc, out=grad_h[rows])
            _accumulate_fp32_(grad_w, logits.T, hc[rows])
    return losses.sum() * inv_n[0], grad_h.to(h.dtype), grad_w.to(weight.dtype)


@fused_linear_xent.register_fake
def _(h, weight, targets, vocab_size, compute_dtype, with_grad, chunk):
    empty = (0,)
    return (h.new_empty((), dtype=torch.float32), h.new_empty(h.shape if with_grad else empty),
            weight.new_empty(weight.shape if with_grad else empty))


def _setup(ctx, inputs, output):
    _, grad_h, grad_w = output
    ctx.save_for_backward(grad_h, grad_w)


def _backward(ctx, d_loss, _grad_h, _grad_w):
    grad_h, grad_w = ctx.saved_tensors
    return grad_h * d_loss.to(grad_h.dtype), grad_w * d_loss.to(grad_w.dtype), None, None, None, None, None


fused_linear_xent.register_autograd(_backward, setup_context=_setup)


def cross_entropy(h, weight, targets, vocab_size, impl="fused", chunk=CHUNK):
    """Mean next-token loss of hidden states h (..., C) against targets (...)."""
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    if impl == "fused":
        with_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        loss, _, _ = fused_linear_xent(h, weight, targets, vocab_size, _compute_dtype(h), with_grad, chunk)
        return loss
    if impl == "liger":
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError as e:
            raise ImportError("model.cross_entropy=liger needs Liger-Kernel: pip install liger-kernel") from e
        w = weight[:vocab_size]  # its softmax would include the padding rows
        return liger_fused_linear_cross_entropy(h, w, targets, ignore_index=IGNORE)
    if impl not in IMPLS:
        raise ValueError(f"unknown cross-entropy implementation {impl!r}; available: {', '.join(IMPLS)}")
    logits = F.linear(h, weight)[:, :vocab_size]
    return F.cross_entropy(logits.float() if impl == "upcast" else logits, targets, ignore_index=IGNORE)
