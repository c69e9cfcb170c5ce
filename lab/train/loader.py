"""The input pipeline: torch's DataLoader with worker processes, for scenes and LLaVA JSON alike.

Which samples form a step is a function of the step alone: micro-batch `m` of the step that starts
at data position `p` holds samples `p + rank·local + m·micro + j` (j < micro), as in a loop without
workers, so a resumed run, a run with another number of workers and each torchrun rank (which reads
only its own share) all see the same batches. Workers build whole micro-batches (decode, resize,
collate), in order, with the pixels as uint8 (a quarter of the bytes to hand between processes and
to copy to a GPU), which `to_device` turns into floats on the training device; on CUDA the batches
come in pinned memory, so the copy overlaps.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from lab.data.collate import SequenceTooLong, float_pixels, uint8_pixels
from lab.data.llava import BadRecord

PREFETCH = 4  # micro-batches each worker keeps ready


class _PixelSlots:
    """Each worker's pixel buffers in shared memory, written batch after batch, in turn.

    A batch's pixels in fresh shared memory cost its worker a page fault per 4 KB page as it writes
    them (1,300 for 16 images at 336 px; on a VM, 3-4 ms a batch, 5 % of the worker's time). So a
    worker keeps `PREFETCH + 1` buffers and writes into the oldest; the training process copies the
    pixels out of a batch as it takes it (or the pin-memory thread does, into pinned memory) and
    then gives that buffer back (`give_back`): a worker never writes a buffer whose batch has not
    been copied. A worker has at most PREFETCH batches on their way, so it does not wait; the
    semaphore makes that a guarantee rather than an assumption."""

    def __init__(self, workers: int) -> None:
        import torch.multiprocessing as mp

        self.free = [mp.Semaphore(PREFETCH + 1) for _ in range(workers)]  # buffers not on their way
        self.buffers: list[torch.Tensor] = []  # this worker's (filled in the worker)
        self.turn = 0
        # the training process's mappings of each worker's buffers, kept so that torch maps a buffer
        # once (`torch.multiprocessing`'s shared-storage cache) rather than once a batch
        self.mapped = [collections.deque(maxlen=PREFETCH + 1) for _ in range(workers)]

    def into(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The next buffer of this worker, as uint8 of `shape` (collate writes the pixels there)."""
        from torch.utils.data import get_worker_info

        from lab.data.collate import shared_uint8

        free, parent = self.free[get_worker_info().id], os.getppid()
        while not free.acquire(timeout=1.0):
            if os.getppid() != parent:  # the training process is gone: nobody will give one back
                raise SystemExit(0)
        n = math.prod(shape)
        k = self.turn % (PREFETCH + 1)
        if k == len(self.buffers):
            self.buffers.append(shared_uint8((n,)))
        elif self.buffers[k].numel() < n:  # larger images than before
            self.buffers[k] = shared_uint8((n,))
        self.turn += 1
        return self.buffers[k][:n].view(shape)

    def undo(self, worker: int) -> None:
        """A buffer taken for a batch that was not made (its collate raised)."""
        self.turn -= 1
        self.free[worker].release()

    def give_back(self, batch: dict) -> dict:
        """In the training process: `batch` with its pixels copied out of the worker's buffer, which
        is then free again (already copied when the pin-memory thread pinned them)."""
        worker = batch.pop("pixel_slot", None)
        if worker is not None:
            self.mapped[worker].append(batch["pixel_values"].untyped_storage())
            if not batch["pixel_values"].is_pinned():
                batch["pixel_values"] = batch["pixel_values"].clone()
            self.free[worker].release()
        return batch


class _MicroBatches(Dataset):
    """Item `u`: micro-batch `u % grad_accum` of step `u // grad_accum` (counted from `position`),
    collated, with `skipped`: how many records bad images made it pass over (LlavaJSON), and in a
    worker `pixel_slot`: whose buffer holds its pixels (`_PixelSlots`)."""

    def __init__(self, data, collate: Callable, position: int, batch_size: int, offset: int, micro: int, accum: int,
                 slots: _PixelSlots | None = None):  # fmt: skip
        self.data, self.collate, self.position, self.batch_size = data, collate, position, batch_size
        self.offset, self.micro, self.accum, self.slots = offset, micro, accum, slots

    def __len__(self) -> int:  # a sampler chooses the items; the data may be endless
        raise TypeError("step batches are indexed, not sized")

    def __getitem__(self, u: int) -> dict:
        from torch.utils.data import get_worker_info

        step, m = divmod(u, self.accum)
        start = self.position + step * self.batch_size + self.offset + m * self.micro
        samples = [self.data[start + j] for j in range(self.micro)]
        worker = get_worker_info()
        slots = self.slots if worker is not None else None
        turn = slots.turn if slots else 0
        with uint8_pixels(slots.into if slots else None):  # floats are made on the training device (`to_device`)
            try:
                batch = self.collate(samples)
            except BaseException as e:
                if slots and slots.turn != turn:  # a buffer taken for a batch that is not sent
                    slots.undo(worker.id)
                if not isinstance(e, SequenceTooLong):
                    raise
                s = next(s for s in samples if _too_long(self.collate, s))  # a length the check before step 1
                raise BadRecord(f"record {s.record}: {e}") from None  # left to the loader (LlavaJSON)
        if slots and slots.turn != turn:
            if slots.turn != turn + 1:  # each buffer taken must come back, or the worker would wait forever
                raise RuntimeError(f"collate wrote {slots.turn - turn} pixel tensors in a batch; the loader sends one")
            batch["pixel_slot"] = worker.id
        batch["skipped"] = sum(getattr(s, "skipped", 0) for s in samples)
        return batch


def default_workers(threads: int) -> tuple[int, str]:
    """(workers, why): the CPUs this run may use (its torch threads, which `lab train` sets to its
    share of the machine), or none inside a daemonic process, which may not start children."""
    if multiprocessing.current_process().daemon:
        return 0, "0 loader workers: this process is a daemon and may not start any (batches load in the loop)"
    return threads, f"{threads} loader worker(s): the CPUs this run may use (data.workers to change)"


def step_batches(
    data,
    collate: Callable,
    *,
    position: int,
    steps: int,
    batch_size: int,
    rank: int,
    local: int,
    micro: int,
    accum: int,
    workers: int,
    pin: bool,
    close_fds: tuple[int, ...] = (),
) -> Iterator[list[dict]]:
    """The micro-batches of each of the next `steps` steps, a list of `accum` per step. `close_fds`:
    files a worker closes as it starts (the run folder's lock, which it must not keep alive)."""
    slots = _PixelSlots(workers) if workers else None
    ds = _MicroBatches(data, collate, position, batch_size, rank * local, micro, accum, slots)
    loader = DataLoader(
        ds,
        batch_size=None,
        sampler=range(steps * accum),
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=PREFETCH if workers else None,
        persistent_workers=False,
        generator=torch.Generator(),  # its base seed is drawn here, not from the global RNG a resume restores
        worker_init_fn=functools.partial(_start_worker, close_fds),
    )
    it = iter(loader)
    for _ in range(steps):
        yield [slots.give_back(next(it)) if slots else next(it) for _ in range(accum)]


def _too_long(collate: Callable, sample) -> bool:
    try:
        collate([sample])
    except SequenceTooLong:
        return True
    return False


def to_device(batch: dict, device: torch.device) -> dict:
    """A loader batch on the training device, its uint8 pixels turned into floats there."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if out.get("pixel_values") is not None and out["pixel_values"].dtype == torch.uint8:
        out["pixel_values"] = float_pixels(out["pixel_values"])
    return out


def _start_worker(fds: tuple[int, ...], _worker: int) -> None:
    """A loader worker's first act: close the files it must not keep open, keep the memory it frees."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    keep_freed_memory()


def keep_freed_memory() -> None:
    """Have glibc keep freed blocks for reuse instead of handing them back to the kernel.

    A worker allocates and frees about 30 MB a micro-batch of 16 COCO-sized images (decoded, then
    resized), and under glibc's adaptive thresholds it handed some of it back to the kernel and
    faulted fresh zeroed pages in for the next batch: 700 to 10,000 faults a batch beyond the 1,300
    of the pixels it sends, and a worker 10-25 % slower than the same work without workers on a
    2-core VM (`benchmarks/data_loading.py`). With fixed thresholds above a batch's blocks the freed
    memory is reused. Not glibc (macOS, musl): nothing to do."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt's parameter numbers (malloc.h)
    mallopt(m_mmap_threshold, 32 << 20)  # blocks below 32 MB (glibc's largest) come from the heap
    mallopt(m_trim_threshold, 256 << 20)  # and up to 256 MB of freed heap stays mapped


def pop_skipped(batches: list[dict]) -> int:
    return int(sum(int(b.pop("skipped", 0)) for b in batches))
