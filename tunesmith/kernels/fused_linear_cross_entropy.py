"""Cross-entropy fused with the output projection, chunked over tokens: the full logits never exist.

For N tokens, hidden size H and vocabulary V, plain ``lm_head`` + ``cross_entropy`` materialises
N x V logits in bf16 plus a float32 copy (2,048 x 2 tokens x 128,256 x 6 bytes = 3.2 GB for Llama 3).
Here tokens go through in chunks of ``chunk_tokens_for(V)`` tokens (1,024 at Llama 3's vocabulary); per chunk:
1. ``logits = h_c W^T`` (bf16, chunk x V);
2. the Triton kernel turns each row into its loss ``lse - x[y]`` and, in the same buffer, its
   gradient ``(softmax(x) - onehot(y)) * scale`` (float32 math, as transformers' upcast loss);
3. ``dh_c = dlogits W`` and, only when W is trained, ``dW += dlogits^T h_c``.
Gradients are computed during forward (Liger's scheme), so backward only scales ``dh`` by the
incoming gradient. Peak extra memory: one chunk of logits (at most ``CHUNK_LOGITS_BYTES``, 263 MB)
plus ``dh``.
On a CPU step 2 is the same row math in PyTorch ops (``_cross_entropy_rows``): two matrix products per
chunk instead of the three of a head that recomputes its logits in backward.
Reduction matches transformers' ``ForCausalLMLoss``: mean over non-ignored labels, or the sum divided
by ``num_items_in_batch`` when given.
"""

import torch
import torch.nn.functional as F

from tunesmith.constants import IGNORE_INDEX
from tunesmith.kernels._triton import kernel_for, next_power_of_2, on_gpu, tl, triton

__all__ = [
    "chunk_tokens_for",
    "fused_linear_cross_entropy_forward",
    "fused_linear_cross_entropy_reference",
    "FusedLinearCrossEntropyFunction",
    "fused_linear_cross_entropy",
]

# One chunk's logits: 1,024 tokens of Llama 3's 128,256-word vocabulary in bf16 (263 MB), large enough
# for an efficient matmul and far below the full tensor. A larger vocabulary gets fewer tokens per chunk
# (Gemma's 262,208: 384), so the loss's extra memory, which a max_memory_gb plan must leave free, stays
# the same whatever the model.
CHUNK_LOGITS_BYTES = 1024 * 128_256 * 2
# Vocabulary columns per loop iteration of the row kernel (64 KB of bf16 in flight per program).
BLOCK_V = 32768 // 2


@triton.jit
def _cross_entropy_kernel(
    LOGITS, LABELS, LOSS, SCALE, stride, n_cols, ignore_index, BLOCK: tl.constexpr, WITH_GRAD: tl.constexpr
):
    """One row: 1. online max / sum-exp over V; 2. loss = lse - x[y]; 3. grad written over the logits."""
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * stride
    label = tl.load(LABELS + row).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if label == ignore_index:
        tl.store(LOSS + row, 0.0)
        if WITH_GRAD:
            for start in range(0, n_cols, BLOCK):
                tl.store(
                    ptr + start + cols,
                    tl.zeros((BLOCK,), dtype=tl.float32).to(LOGITS.dtype.element_ty),
                    mask=start + cols < n_cols,
                )
        return
    m = -float("inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK):
        x = tl.load(ptr + start + cols, mask=start + cols < n_cols, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    x_label = tl.load(ptr + label).to(tl.float32)
    tl.store(LOSS + row, lse - x_label)
    if WITH_GRAD:
        scale = tl.load(SCALE)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            x = tl.load(ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse)
            p = tl.where(start + cols == label, p - 1.0, p)
            tl.store(ptr + start + cols, (p * scale).to(LOGITS.dtype.element_ty), mask=mask)


def _loss_scale(labels: torch.Tensor, ignore_index: int, num_items_in_batch) -> torch.Tensor:
    """1 / (number of counted tokens) as a float32 device tensor (no host sync). A batch with no counted
    token gets a loss of 0 rather than 0 / 0."""
    if num_items_in_batch is None:
        count = (labels != ignore_index).sum().to(torch.float32)
    else:
        count = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=labels.device)
    return (1.0 / count.clamp(min=1)).reshape(1)


def _cross_entropy_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    losses: torch.Tensor,
    scale: torch.Tensor,
    ignore_index: int,
    with_grad: bool,
) -> None:
    """The row kernel's work in PyTorch ops, for a CPU: ``losses`` gets ``lse - x[y]`` per row and, with
    ``with_grad``, ``logits`` is overwritten by ``(softmax(x) - onehot(y)) * scale`` (float32 math)."""
    log_p = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # one pass over the chunk
    counted = labels != ignore_index
    safe = torch.where(counted, labels, 0).unsqueeze(-1)
    losses.copy_(torch.where(counted, -log_p.gather(-1, safe).squeeze(-1), 0.0))
    if with_grad:
        p = log_p.exp_()
        p.scatter_add_(-1, safe, torch.full_like(safe, -1.0, dtype=p.dtype))
        torch.mul(p, (scale * counted).unsqueeze(-1), out=logits)  # rounded once, into the logits' buffer


def chunk_tokens_for(vocab_size: int, element_bytes: int = 2) -> int:
    """Tokens per chunk whose logits fit ``CHUNK_LOGITS_BYTES``: a multiple of 128 where that is at least
    128 (matmul tiles), at least one token."""
    tokens = CHUNK_LOGITS_BYTES // (vocab_size * element_bytes)
    return tokens // 128 * 128 if tokens >= 128 else max(tokens, 1)


def fused_linear_cross_entropy_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    num_items_in_batch=None,
    with_grad: bool = True,
    need_weight_grad: bool = False,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Loss of ``hidden`` (N, H) through ``weight`` (V, H) against ``labels`` (N,).

    Returns ``(loss, d loss/d hidden, d loss/d weight)``; the gradients are None when not asked for.
    ``chunk_tokens`` defaults to ``chunk_tokens_for`` the vocabulary.
    """
    n, v = hidden.shape[0], weight.shape[0]
    scale = _loss_scale(labels, ignore_index, num_items_in_batch)
    losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grad else None
    grad_weight = (
        torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight_grad else None
    )
    use_kernel = on_gpu(hidden, weight)
    if not use_kernel and torch.is_autocast_enabled(hidden.device.type):
        # Autocast would cast a frozen weight again for each product; once is enough.
        weight = weight.to(torch.get_autocast_dtype(hidden.device.type))
    chunk_tokens = chunk_tokens or chunk_tokens_for(v, weight.element_size())
    for start in range(0, n, chunk_tokens):
        h = hidden[start : start + chunk_tokens]
        logits = F.linear(h, weight, bias).contiguous()  # (chunk, V): the only logits that ever exist
        rows = labels[start : start + chunk_tokens]
        if use_kernel:
            block = min(BLOCK_V, next_power_of_2(v))
            kernel_for(_cross_entropy_kernel, hidden.device)[(h.shape[0],)](
                logits, rows, losses[start:], scale, logits.stride(0), v, ignore_index,
                BLOCK=block, WITH_GRAD=with_grad, num_warps=16 if block >= 8192 else 8,
            )  # fmt: skip
        else:
            _cross_entropy_rows(
                logits, rows, losses[start : start + h.shape[0]], scale, ignore_index, with_grad
            )
        if with_grad:
            grad_hidden[start : start + h.shape[0]] = logits @ weight
            if need_weight_grad:
                grad_weight += (logits.t() @ h).float()
        del logits
    loss = losses.sum() * scale[0]
    return loss, grad_hidden, grad_weight


def fused_linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    num_items_in_batch=None,
) -> torch.Tensor:
    """Pure PyTorch, as transformers: full logits, upcast to float32, ``cross_entropy``."""
    logits = F.linear(hidden, weight, bias).float()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, labels, ignore_index=ignore_index)
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=total.device)


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Saves the gradients computed in forward (``dh`` is N x H, as large as ``hidden``) and nothing else."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, bias, ignore_index, num_items_in_batch):
        need_w = weight.requires_grad
        loss, dh, dw = fused_linear_cross_entropy_forward(
            hidden, weight, labels, bias, ignore_index, num_items_in_batch,
            with_grad=True, need_weight_grad=need_w,
        )  # fmt: skip
        ctx.save_for_backward(dh, dw if need_w else None)
        ctx.has_bias = bias is not None and bias.requires_grad
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        dh = dh * grad_loss.to(dh.dtype)
        dw = (dw * grad_loss).to(ctx.saved_tensors[0].dtype) if dw is not None else None
        return dh, dw, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    num_items_in_batch=None,
) -> torch.Tensor:
    """Mean (or ``/ num_items_in_batch``) cross-entropy of ``hidden @ weight.T`` against ``labels``.

    Chunked on every device: the Triton row kernel on CUDA, the same math in PyTorch ops on a CPU.
    ``hidden`` (N, H), ``labels`` (N,).
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return FusedLinearCrossEntropyFunction.apply(
            hidden, weight, labels, bias, ignore_index, num_items_in_batch
        )
    return fused_linear_cross_entropy_forward(
        hidden, weight, labels, bias, ignore_index, num_items_in_batch, with_grad=False
    )[0]
