"""Point-to-point messages between neighbouring stages: a small header, then a fixed list of tensors.

A message in front of module k carries module k-1's raw (detached) output, the earlier module inputs
s_j that cut k or later cuts read, the labels, and the un-normalised image when reconstruction is on.
Their per-sample shapes (feature maps or token sequences) are known from the network; the header gives
the batch size, the message kind and each float tensor's dtype. Headers always travel through the CPU
control group (gloo), so a CUDA run copies no header between host and device. Sends are non-blocking; at
most `inflight` messages may be outstanding, so a fast stage cannot run unboundedly ahead of a slow one: on
NCCL, whose `Work.wait()` only orders the current CUDA stream after the transfer, the host waits for the
stream too (`wait_on_host`), so the bound holds on the host as it does on gloo.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from contsup.distributed.stage import boundary_sources
from contsup.method.network import LocalNetwork
from contsup.models.chain import to_format

TRAIN, EVAL, END = 0, 1, 2
_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@dataclass
class Message:
    """What crosses one boundary for one micro-batch."""

    kind: int
    h: torch.Tensor | None = None
    sources: dict[int, torch.Tensor] | None = None
    y: torch.Tensor | None = None
    pixels: torch.Tensor | None = None


def wait_on_host(works: list[dist.Work], comm_device: torch.device) -> None:
    """Block the host until every transfer in `works` is done.

    gloo's `wait()` blocks the host; NCCL's only makes the current CUDA stream wait for the transfer, so the
    host then synchronises that stream (which also waits for the kernels queued after the send: at most the
    `inflight` batches the bound allows).
    """
    for work in works:
        work.wait()
    if comm_device.type == "cuda":
        torch.cuda.current_stream(comm_device).synchronize()  # host sync: the transfer has left the buffers


class Link:
    """The boundary in front of module k: who sends, who receives, and what the tensors look like."""

    def __init__(self, net: LocalNetwork, k: int, device: torch.device, comm_device: torch.device,
                 ctrl: dist.ProcessGroup, inflight: int = 2,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.source_ids = boundary_sources(net, k)
        # The memory format received images and feature maps are put in (the network's).
        self.memory_format = memory_format
        self.h_shape = net.source_shapes[k].dims
        self.source_shapes = [net.source_shapes[j].dims for j in self.source_ids]
        self.pixel_shape = net.source_shapes[0].dims if net.needs_pixels else None
        self.device, self.comm_device, self.ctrl = device, comm_device, ctrl
        self.inflight = max(1, inflight)
        # Outstanding sends, with the buffers they read from (kept alive until the send completes).
        self.pending: deque[tuple[list[dist.Work], list[torch.Tensor]]] = deque()

    def _shapes(self, kind: int) -> list[tuple[int, ...]]:
        """Per-sample shapes of the float tensors of a message of this kind (pixels only for training)."""
        pixels = [self.pixel_shape] if self.pixel_shape is not None and kind == TRAIN else []
        return [self.h_shape, *self.source_shapes, *pixels]

    def send(self, msg: Message, dst: int) -> None:
        """Queue `msg` for rank `dst`; waits first while `inflight` earlier messages are still outstanding."""
        while len(self.pending) >= self.inflight:
            self._wait_oldest()
        header = torch.zeros(2 + len(self._shapes(TRAIN)), dtype=torch.int64)
        header[0] = msg.kind
        tensors: list[torch.Tensor] = []
        if msg.kind != END:
            assert msg.h is not None and msg.sources is not None and msg.y is not None
            floats = [msg.h, *(msg.sources[j] for j in self.source_ids)]
            if len(self._shapes(msg.kind)) > len(floats):
                assert msg.pixels is not None, "reconstruction needs the image's pixels in every training message"
                floats.append(msg.pixels)
            header[1] = msg.h.shape[0]
            for i, t in enumerate(floats):
                header[2 + i] = _DTYPES.index(t.dtype)
            tensors = [*floats, msg.y]
        buffers = [t.detach().to(self.comm_device).contiguous() for t in tensors]
        works = [dist.isend(header, dst, group=self.ctrl, tag=0),
                 *(dist.isend(b, dst, tag=1 + i) for i, b in enumerate(buffers))]
        self.pending.append((works, [header, *buffers]))

    def recv(self, src: int) -> Message:
        """The next message from rank `src` (blocks; the process group's timeout bounds the wait)."""
        header = torch.zeros(2 + len(self._shapes(TRAIN)), dtype=torch.int64)
        dist.irecv(header, src, group=self.ctrl, tag=0).wait()
        kind, batch = int(header[0]), int(header[1])
        if kind == END:
            return Message(END)
        shapes = self._shapes(kind)
        bufs = [torch.empty((batch, *s), dtype=_DTYPES[int(header[2 + i])], device=self.comm_device)
                for i, s in enumerate(shapes)]
        bufs.append(torch.empty(batch, dtype=torch.int64, device=self.comm_device))
        works = [dist.irecv(b, src, tag=1 + i) for i, b in enumerate(bufs)]
        for work in works:
            work.wait()
        bufs = [to_format(b.to(self.device), self.memory_format) for b in bufs]
        n = 1 + len(self.source_ids)
        pixels = bufs[n] if len(shapes) > n else None
        return Message(kind, bufs[0], dict(zip(self.source_ids, bufs[1:n], strict=True)), bufs[-1], pixels)

    def _wait_oldest(self) -> None:
        works, _ = self.pending.popleft()
        wait_on_host(works, self.comm_device)

    def flush(self) -> None:
        """Wait for every outstanding send."""
        while self.pending:
            self._wait_oldest()
