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

import ctypes
import functools
import multiprocessing
import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from lab.data.collate import SequenceTooLong, float_pixels, uint8_pixels
from lab.data.llava import BadRecord

PREFETCH = 4  # micro-batches each worker keeps ready


class _MicroBatches(Dataset):
    """Item `u`: micro-batch `u % grad_accum` of step `u // grad_accum` (counted from `position`),
    collated, with `skipped`: how many records bad images made it pass over (LlavaJSON)."""

    def __init__(self, data, collate: Callable, position: int, batch_size: int, offset: int, micro: int, accum: int):
        self.data, self.collate, self.position, self.batch_size = data, collate, position, batch_size
        self.offset, self.micro, self.accum = offset, micro, accum

    def __len__(self) -> int:  # a sampler chooses the items; the data may be endless
        raise TypeError("step batches are indexed, not sized")

    def __getitem__(self, u: int) -> dict:
        step, m = divmod(u, self.accum)
        start = self.position + step * self.batch_size + self.offset + m * self.micro
        samples = [self.data[start + j] for j in range(self.micro)]
        with uint8_pixels():  # floats are made on the training device (`to_device`)
            try:
                batch = self.collate(samples)
            except SequenceTooLong as e:  # a length the check before step 1 left to the loader (LlavaJSON)
                s = next(s for s in samples if _too_long(self.collate, s))
                raise BadRecord(f"record {s.record}: {e}") from None
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
    ds = _MicroBatches(data, collate, position, batch_size, rank * local, micro, accum)
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
        yield [next(it) for _ in range(accum)]


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
