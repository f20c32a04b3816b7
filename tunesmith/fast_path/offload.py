"""What the memory-lean fast path keeps in (pinned) CPU memory instead of on the GPU.

1. ``HostEmbedding``: the frozen input embedding (1 GB for Llama 3 8B). A lookup of a batch's rows is
   cheap on the CPU; only the looked-up rows travel to the GPU.
2. ``OffloadedLayer``: a checkpointed decoder layer whose input waits in CPU memory between forward and
   backward. In backward each layer starts bringing back the previous layer's input on a side stream,
   so the copy overlaps the current layer's recompute instead of stalling it.
3. For long sequences, the layer's attention result too (q, k, v, output and log-sum-exp, saved by
   ``AttentionStash``). The recompute then replays attention from the saved result instead of running it
   again; at 65k tokens attention is more than half of a layer's forward arithmetic.
Every copy goes to the GPU and back on one side stream; on the CPU (tests) the copies are plain clones.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.fast_path.modules import keep_base

__all__ = [
    "HostCopy",
    "LayerSlot",
    "AttentionStash",
    "OffloadedLayer",
    "HostEmbedding",
]


class HostCopy:
    """A tensor copied to host memory on ``stream``; ``prefetch`` starts the way back, ``fetch`` ends it."""

    def __init__(self, tensor: torch.Tensor, stream: torch.cuda.Stream | None):
        self.device, self.stream = tensor.device, stream
        self._gpu: torch.Tensor | None = None
        self._ready = None
        self.source: tuple | None = None  # (data pointer, shape) of the copied tensor, to spot a second save
        if stream is None:  # CPU tensors (tests): a plain copy
            self.host = tensor.detach().clone()
            return
        try:
            self.host = torch.empty_like(tensor, device="cpu", pin_memory=True)  # keeps dense strides
        except RuntimeError:  # the host would not lock more memory: a pageable copy, correct but blocking
            self.host = torch.empty_like(tensor, device="cpu")
        stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(stream):
            self.host.copy_(tensor.detach(), non_blocking=True)
        tensor.record_stream(stream)  # the GPU memory is reused only after the copy

    def prefetch(self) -> None:
        """Start copying back to the GPU on the side stream (no-op when already on its way)."""
        if self._gpu is not None:
            return
        if self.stream is None:
            self._gpu = self.host
            return
        with torch.cuda.stream(self.stream):
            self._gpu = self.host.to(self.device, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record(self.stream)

    def fetch(self) -> torch.Tensor:
        """The tensor on its device again, ready for the current stream; kept until ``release``."""
        self.prefetch()
        if self._ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(self._ready)
            self._gpu.record_stream(current)  # allocated on the side stream, used on this one
            self._ready = None
        return self._gpu

    def release(self) -> None:
        """Drop the device copy (the host copy stays until this object goes)."""
        self._gpu, self._ready = None, None


def _free_storage(t: torch.Tensor) -> None:
    """Give a tensor's device memory back while the tensor object (shape, autograd edges) lives on."""
    t.untyped_storage().resize_(0)


class AttentionStash:
    """One layer's attention, recorded during the no-grad forward and replayed during the recompute.

    Recording runs attention with autograd on detached q, k, v, with every tensor its backward needs
    sent to host memory. The recorded graph's output and leaves keep their shapes but no memory; replay
    returns the saved output and sends the incoming gradient through the recorded graph.
    """

    def __init__(self, stream):
        self.stream = stream
        self.copies: list[HostCopy] = []  # every host copy this layer's attention made, each once
        self.output: HostCopy | None = None  # the one of them that holds the output
        self.root: torch.Tensor | None = None
        self.leaves: tuple[torch.Tensor, ...] = ()

    def _pack(self, t: torch.Tensor):
        if not t.is_cuda and self.stream is not None:
            return t  # e.g. a random-number seed kept on the CPU
        copy = HostCopy(t, self.stream)
        copy.source = (t.data_ptr(), t.shape)
        self.copies.append(copy)
        return copy

    @staticmethod
    def _unpack(packed):
        return packed.fetch() if isinstance(packed, HostCopy) else packed

    def record(self, attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``attention(q, k, v)`` with its backward's inputs sent to host memory; returns the output."""
        leaves = tuple(t.detach().requires_grad_(True) for t in (q, k, v))
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            out = attention(*leaves)
        # Attention's backward saves its output too: reuse that copy rather than sending it twice.
        source = (out.data_ptr(), out.shape)
        self.output = next((c for c in self.copies if c.source == source), None)
        if self.output is None:
            self.output = HostCopy(out, self.stream)
            self.copies.append(self.output)
        self.root, self.leaves = out, leaves
        return out.detach()

    def drop_device_memory(self) -> None:
        """After the layer's forward: free the recorded output's and leaves' GPU memory."""
        for t in (self.root, *self.leaves):
            _free_storage(t)

    def prefetch(self) -> None:
        """Start bringing every saved tensor back to the GPU."""
        for copy in self.copies:
            copy.prefetch()

    def release(self) -> None:
        """Drop the device copies after the layer's backward."""
        for copy in self.copies:
            copy.release()


class _ReplayAttention(torch.autograd.Function):
    """Returns the recorded attention output; backward runs the recorded attention graph."""

    @staticmethod
    def forward(ctx, stash, q, k, v):
        ctx.stash = stash
        return stash.output.fetch().clone()  # a fresh tensor: the caller may reshape it

    @staticmethod
    def backward(ctx, grad):
        stash = ctx.stash
        grads = torch.autograd.grad(stash.root, stash.leaves, grad)
        return (None, *grads)


class LayerSlot:
    """What one checkpointed layer keeps in host memory, linked to the layer run before it."""

    def __init__(self, stream, previous: LayerSlot | None, keep_attention: bool):
        self.stream, self.previous = stream, previous
        self.input: HostCopy | None = None
        self.attention = AttentionStash(stream) if keep_attention else None
        self.replaying = False

    def prefetch(self) -> None:
        """Start bringing this layer's input (and attention) back to the GPU."""
        self.input.prefetch()
        if self.attention is not None and self.attention.output is not None:
            self.attention.prefetch()

    def attend(self, attention, q, k, v) -> torch.Tensor:
        """Run attention in this layer's mode: record it (forward) or replay it (recompute)."""
        if self.attention is None:
            return attention(q, k, v)
        if self.replaying:
            return _ReplayAttention.apply(self.attention, q, k, v)
        return self.attention.record(attention, q, k, v)


class OffloadedLayer(torch.autograd.Function):
    """``apply(run, slot, anchor, hidden)``: a checkpointed layer; its input and attention wait on the CPU."""

    @staticmethod
    def forward(ctx, run, slot, _anchor, hidden):
        slot.input = HostCopy(hidden, slot.stream)
        with torch.no_grad():
            out = run(hidden)
        if slot.attention is not None and slot.attention.root is not None:
            slot.attention.drop_device_memory()
        ctx.run, ctx.slot = run, slot
        return out

    @staticmethod
    def backward(ctx, grad_out):
        slot = ctx.slot
        hidden = slot.input.fetch().detach().requires_grad_(True)
        if slot.previous is not None:
            slot.previous.prefetch()  # overlaps this layer's recompute and backward
        slot.replaying = True
        try:
            with torch.enable_grad():
                out = ctx.run(hidden)
            torch.autograd.backward(out, grad_out)
        finally:
            slot.replaying = False
        slot.input.release()
        if slot.attention is not None:
            slot.attention.release()
        ctx.slot = None  # host memory goes with the slot
        return None, None, None, hidden.grad


class HostEmbedding(nn.Module):
    """A frozen input embedding kept in CPU memory: rows are looked up there and only they go to the GPU.

    The weight is registered as a buffer under its original name, so ``state_dict`` keys stay the same
    while ``model.parameters()`` (and so ``model.device``) keep pointing at the GPU.
    """

    def __init__(self, base_layer: nn.Embedding):
        super().__init__()
        keep_base(self, base_layer, ())
        self.device = base_layer.weight.device
        base_layer.to("cpu")
        self.register_buffer("weight", base_layer.weight, persistent=True)

    def _apply(self, fn, recurse: bool = True):
        # Moves (a trainer's model.to("cuda")) leave the weight in CPU memory; dtype changes still apply.
        dtype = fn(torch.empty(0, dtype=self.weight.dtype)).dtype
        if dtype != self.weight.dtype:
            self.base_layer.to(dtype)
            self._buffers["weight"] = self.base_layer.weight
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Rows of ``input_ids`` on their device (hooks on the original embedding still run)."""
        out = self.base_layer(input_ids.to("cpu"))
        needs_grad = out.requires_grad  # e.g. PEFT's hook for checkpointing a frozen model
        out = out.detach().to(input_ids.device, non_blocking=True)
        return out.requires_grad_(True) if needs_grad else out

    def restore(self) -> nn.Embedding:
        """The original embedding, back on its device."""
        return self.base_layer.to(self.device)
