"""LLaVA's instruction format at scale: a JSON list of {"image", "conversations": [{"from", "value"}]}.

LLaVA-Instruct-150K and the 665K mix name COCO-sized images. What is checked when:

- **before step 1, always:** every record's turns (roles alternate human, gpt; exactly one `<image>`
  in a record with an image), and every image file's existence, header (it opens as an image) and
  size (width and height above zero). The JSON is read as a stream (`iter_json_array`) into one
  compact buffer (`Records`), never a Python dict per turn for the whole run. The image checks run
  in parallel and are cached by file identity (path, size, modification time; `CheckCache`), so a
  second run or a `--resume` re-checks only what changed.
- **full decoding:** before step 1 when decoding every image not yet decoded is estimated to take
  under a minute on the checking processes; otherwise in the loader, where an image that fails to
  decode raises `BadImage` naming its record (the trainer saves a checkpoint and stops), or, with
  `bad_images="skip"`, is replaced by the next record and counted. `lab data check --decode`
  decodes a whole data set ahead of time, in parallel, and records it in the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lab.data.datasets import Sample
from lab.data.tokenizer import IMAGE

log = logging.getLogger("lab")
DECODE_BUDGET_S = 60.0  # decode everything before step 1 when it is estimated to take less than this
LENGTH_BUDGET_S = 20.0  # likewise, count every record's tokens against the LLM's positions


class BadRecord(ValueError):
    """A record found unusable in the loader (its image does not decode, or its tokens do not fit);
    the message names it. The trainer saves a checkpoint and stops."""


class BadImage(BadRecord):
    """An image that fails to decode in the loader; the message names the record and the file."""


# ---- the JSON, streamed into a compact buffer ----------------------------------------------------
def iter_json_array(path: Path, chunk: int = 1 << 24, raw: bool = False):
    """The items of a JSON file holding one top-level list, one at a time (with `raw`: (item, its
    text)), reading `chunk` characters at a time: memory stays flat however long the list. A syntax
    error names its line and column in the file."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = f.read(chunk), 0, False
        line0, col0 = 0, 0  # newlines before buf, and characters since the last of them

        def more() -> bool:
            nonlocal buf, pos, eof, line0, col0
            if eof:
                return False
            data = f.read(chunk)
            eof = not data
            dropped = buf[:pos]
            nl = dropped.count("\n")
            line0, col0 = line0 + nl, (len(dropped) - dropped.rfind("\n") - 1) if nl else col0 + len(dropped)
            buf, pos = buf[pos:] + data, 0
            return not eof

        def skip(chars: str) -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in chars:
                    pos += 1
                if pos < len(buf) or not more():
                    return

        skip(" \t\r\n")
        if pos >= len(buf) or buf[pos] != "[":
            raise ValueError(f"{path} does not hold a JSON list of records")
        pos += 1
        while True:
            skip(" \t\r\n,")
            if pos >= len(buf):
                raise ValueError(f"{path}: the JSON list is not closed (the file is cut short)")
            if buf[pos] == "]":
                pos += 1
                skip(" \t\r\n")
                if pos < len(buf):
                    raise ValueError(f"{path} is not valid JSON (text after the list's closing bracket)")
                return
            try:
                item, end = dec.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if more():
                    continue
                try:  # again, on the buffer as it now stands, for the error's position in the file
                    dec.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    line, col = line0 + e.lineno, e.colno + (col0 if e.lineno == 1 else 0)
                    raise ValueError(f"{path} is not valid JSON (line {line}, column {col}: {e.msg})") from None
            after = end
            while after < len(buf) and buf[after] in " \t\r\n":
                after += 1
            if (after >= len(buf) or buf[after] not in ",]") and more():  # e.g. a number cut by the buffer's
                continue  # end ("0." of "0.5"): read on and decode again
            if after < len(buf) and buf[after] not in ",]":
                nl = buf.count("\n", 0, after)
                line, col = line0 + nl + 1, after - buf.rfind("\n", 0, after) + (0 if nl else col0)
                raise ValueError(f"{path} is not valid JSON (line {line}, column {col}: Expecting ',' delimiter)")
            text, pos = (buf[pos:end] if raw else None), end
            yield (item, text) if raw else item
            if len(buf) - pos < chunk // 4:
                more()


class Records:
    """Records held as one bytes buffer of their JSON text, one slice per record, and an offset
    array: two objects for the whole data set (worker processes share them copy-on-write), where a
    list of dicts would take several times the memory and a Python object per turn."""

    def __init__(self, buf: bytes | bytearray, offsets: np.ndarray) -> None:
        self.buf, self.offsets = buf, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict:
        """{"image": name or None, "family": str or None, "turns": [[from, value], ...]}"""
        r = json.loads(self.buf[self.offsets[i] : self.offsets[i + 1]])
        image = r.get("image")
        turns = [[t.get("from"), t.get("value")] for t in r.get("conversations") or []]
        return {"image": image if isinstance(image, str) else None, "family": r.get("family"), "turns": turns}


def turn_problem(r) -> str | None:
    """Why a record's turns cannot be trained on, or None (no file is opened)."""
    turns = r.get("conversations") if isinstance(r, dict) else None
    if not isinstance(turns, list) or not turns:
        return "no 'conversations' list"
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
        return "a turn without a text 'value'"
    roles = [t.get("from") for t in turns]
    chat = roles[1:] if roles[0] == "system" else roles
    if not chat or chat[::2] != ["human"] * len(chat[::2]) or chat[1::2] != ["gpt"] * len(chat[1::2]):
        return f"turns must alternate human, gpt (after one optional system turn), got {roles}"
    if "gpt" not in chat:
        return "no assistant ('gpt') turn to train on"
    if "image" not in r:
        return None
    if not isinstance(r["image"], str):
        return f"'image' must be a file name, got {r['image']!r}"
    if sum(t["value"].count(IMAGE) for t in turns) != 1:
        return f"an image but not exactly one {IMAGE} in its turns"
    return None


RECORDS_FORMAT = 2  # bump when what `read_records` keeps changes: older cached copies are then re-read


def cache_root() -> Path:
    """Where lab keeps what it learned about data sets (LAB_CACHE_DIR, else ~/.cache/lab)."""
    return Path(os.environ.get("LAB_CACHE_DIR") or Path.home() / ".cache" / "lab")


def _cache_name(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


def read_records(path: str | Path) -> tuple[Records, list[tuple[int, str]], list[str | None]]:
    """The file's records, compact; the (index, why) of each whose turns are unusable; each record's
    image name (None: text only). A copy is cached by the file's identity (path, size, modification
    time): a second run or a resume reads it back instead of parsing the JSON again."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LLaVA data file {path} does not exist")
    st = path.stat()
    identity = [RECORDS_FORMAT, st.st_size, st.st_mtime_ns]
    stem = cache_root() / "records" / _cache_name(path)
    meta_file, buf_file, off_file = stem.with_suffix(".json"), stem.with_suffix(".bin"), stem.with_suffix(".npy")
    try:
        meta = json.loads(meta_file.read_text())
        if meta["identity"] == identity:
            records = Records(buf_file.read_bytes(), np.load(off_file))
            return records, [tuple(b) for b in meta["bad"]], meta["images"]
    except (OSError, ValueError, KeyError):
        pass  # no copy, or an unreadable one: parse
    buf, offsets, bad, images = bytearray(), [0], [], []
    try:
        for i, (r, text) in enumerate(iter_json_array(path, raw=True)):
            why = turn_problem(r)
            if why:
                bad.append((i, why))
            image = r.get("image") if isinstance(r, dict) else None
            images.append(image if isinstance(image, str) else None)
            buf += text.encode() if isinstance(r, dict) else b"{}"
            offsets.append(len(buf))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not valid JSON (not UTF-8 text)") from None
    if len(offsets) == 1:
        raise ValueError(f"{path} holds no records: an empty data set cannot be trained on")
    records = Records(buf, np.asarray(offsets, dtype=np.int64))  # the bytearray itself: no second copy
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        buf_file.write_bytes(records.buf)
        np.save(off_file, records.offsets)
        tmp = meta_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": identity, "source": str(path), "bad": bad, "images": images}))
        tmp.replace(meta_file)  # written last: a copy is used only when complete
    except OSError as e:
        log.warning("could not cache the parsed records of %s (%s); the next run parses them again", path, e)
    return records, bad, images


# ---- image checks, cached by file identity -------------------------------------------------------
class CheckCache:
    """What is known of each image file: {name in the folder: [size, mtime_ns, problem or "", decoded]},
    kept in one JSON file per image folder (by its resolved path). An entry stands while the file's
    size and modification time do."""

    def __init__(self, folder: Path) -> None:
        folder = folder.resolve()
        self.path = cache_root() / "image-checks" / (_cache_name(folder) + ".json")
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (json.JSONDecodeError, OSError):
            log.warning("%s: unreadable image-check cache; every image is checked again", self.path)
            self.entries = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, separators=(",", ":")))
        tmp.replace(self.path)  # atomic: a killed run never leaves half a cache


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) read from a PNG's or a JPEG's header bytes (the two formats of LLaVA's data:
    COCO, GQA, OCR-VQA, TextVQA, VG), or None for another format or a header that does not parse. A
    few reads instead of a full `PIL.Image.open`, which costs four times as much per file."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        while True:  # JPEG: marker segments up to the frame header (SOFn) that holds the size
            marker = f.read(4)
            if len(marker) < 4 or marker[0] != 0xFF:
                return None
            kind, length = marker[1], int.from_bytes(marker[2:4], "big")
            if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
                frame = f.read(5)
                return (
                    (int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")) if len(frame) == 5 else None
                )
            if length < 2:
                return None
            f.seek(length - 2, 1)


def _check(folder: str, names: list[str], decode: bool) -> list[list]:
    """[size, mtime_ns, problem or "", decoded] per file: its header (and, with `decode`, its pixels)."""
    from PIL import Image

    out = []
    for name in names:
        path = Path(folder) / name
        ident = _identity(path)
        if ident is None:
            out.append([0, 0, f"image {path} does not exist", False])
            continue
        problem, step = "", "open"
        if not decode:  # PNG and JPEG: the header's own bytes; anything else: PIL opens it
            try:
                size = header_size(path)
            except OSError as e:
                out.append([*ident, f"image {path} does not open ({type(e).__name__})", False])
                continue
            if size is not None:
                problem = f"image {path} is {size[0]}x{size[1]} pixels" if min(size) < 1 else ""
                out.append([*ident, problem, False])
                continue
        try:
            with Image.open(path) as im:
                if im.width < 1 or im.height < 1:
                    problem = f"image {path} is {im.width}x{im.height} pixels"
                elif decode:
                    step = "decode"
                    im.load()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            problem = f"image {path} does not {step} ({type(e).__name__})"
        out.append([*ident, problem, decode and not problem])
    return out


def _chunks(items: list, n: int) -> list[list]:
    size = max(1, -(-len(items) // n))
    return [items[i : i + size] for i in range(0, len(items), size)]


def check_images(folder: Path, names: list[str], workers: int, decode: bool | None = None) -> dict[str, str]:
    """{name: problem} for every unusable image among `names` (duplicates checked once). Headers are
    checked for files the cache does not know (or that changed); `decode`: True decodes every file
    not yet decoded, None decides by the estimated time (under `DECODE_BUDGET_S`), False never."""
    t0 = time.perf_counter()
    cache = CheckCache(folder)
    unique = list(dict.fromkeys(names))
    known = {}
    for n in unique:  # one stat per file: a changed file is checked again
        entry = cache.entries.get(n)
        if entry and entry[0] and tuple(entry[:2]) == _identity(folder / n):
            known[n] = entry
    todo = [n for n in unique if n not in known]

    def keep(batch: list[str], entries: list[list]) -> None:
        for n, entry in zip(batch, entries, strict=True):
            known[n] = entry
            if entry[0]:  # an existing file: cached under its identity
                cache.entries[n] = entry

    def run(batch: list[str], full: bool) -> None:
        procs = max(1, min(workers, len(batch) // 256 + 1))  # a pool costs more than a few files
        parts = _chunks(batch, procs * 4) if batch else []
        if procs == 1:
            results = [_check(str(folder), p, full) for p in parts]
        else:
            with ProcessPoolExecutor(procs) as pool:
                results = list(pool.map(_check, [str(folder)] * len(parts), parts, [full] * len(parts)))
        for part, res in zip(parts, results, strict=True):
            keep(part, res)

    run(todo, bool(decode))  # asked to decode: one pass reads headers and pixels together
    undecoded = [n for n in unique if not known[n][2] and not known[n][3]]
    if decode is None and undecoded:
        sample, t = undecoded[:16], time.perf_counter()
        keep(sample, _check(str(folder), sample, True))  # timed here, in this process
        estimate = (time.perf_counter() - t) / len(sample) * len(undecoded) / max(1, min(workers, len(undecoded)))
        decode = estimate < DECODE_BUDGET_S
        log.info(
            "decoding %d images before step 1 would take about %.0f s on %d process(es): %s",
            len(undecoded), estimate, workers, "decoding them now" if decode else "the loader decodes them",
        )  # fmt: skip
        undecoded = [n for n in undecoded if not known[n][3] and not known[n][2]]
    if decode:
        run(undecoded, True)
    cache.save()
    bad = {n: known[n][2] for n in unique if known[n][2]}
    log.info(
        "checked %d images (%d from the cache, %d now) in %.1f s", len(unique), len(unique) - len(todo),
        len(todo), time.perf_counter() - t0,
    )  # fmt: skip
    return bad


def llava_texts(records: Records):
    """Every turn's text: a tokenizer's corpus."""
    for i in range(len(records)):
        for _, text in records[i]["turns"]:
            yield text


class LlavaJSON:
    """A LLaVA JSON file as `Sample`s, checked before step 1 as the module's docstring says.

    `image_size`: images resized to a square of that side (what lab's training feeds the ViT,
    `image_processor.scene_processor`), or None for each file's own pixels (a processor prepares them).
    `bad_images`: "stop" (an unusable record is an error before step 1, an undecodable image one in
    the loader) or "skip" (left out before step 1, replaced by the next record in the loader; counted
    and logged either way). `decode`: see `check_images`."""

    def __init__(
        self,
        path: str | Path,
        image_folder: str | Path,
        image_size: int | None,
        workers: int = 1,
        bad_images: str = "stop",
        decode: bool | None = None,
    ) -> None:
        if bad_images not in ("stop", "skip"):
            raise ValueError(f"bad_images={bad_images!r}; choose 'stop' or 'skip'")
        path, self.folder, self.image_size, self.bad_images = Path(path), Path(image_folder), image_size, bad_images
        self.path, self.workers = path, max(1, workers)
        t0 = time.perf_counter()
        self.records, bad, names = read_records(path)
        n = len(self.records)
        t1 = time.perf_counter()
        if any(names):  # a batch is all-image or all-text
            bad += [(i, "no 'image', among records with images") for i, name in enumerate(names) if not name]
        problems = check_images(self.folder, [x for x in names if x], workers, decode) if any(names) else {}
        bad += [(i, problems[x]) for i, x in enumerate(names) if x and x in problems]
        self.timings = {"records_s": t1 - t0, "images_s": time.perf_counter() - t1}  # what start-up cost (benchmarks)
        bad = sorted(dict(reversed(bad)).items())  # one reason per record: its turns' first
        if bad and bad_images == "stop":
            shown = "; ".join(f"record {i}: {why}" for i, why in bad[:5])
            raise ValueError(f"{path}: {len(bad)} of {n} records are unusable ({shown})")
        if len(bad) == n:
            raise ValueError(f"{path}: none of its {n} records is usable (record 0: {bad[0][1]})")
        if bad:
            log.warning("%s: %d of %d records left out (bad_images=skip); the first: record %d: %s",
                        path, len(bad), n, *bad[0])  # fmt: skip
        self.left_out = len(bad)
        left_out = {i for i, _ in bad}
        self.index = np.asarray([i for i in range(n) if i not in left_out], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def text_sample(self, i: int) -> Sample:
        """Record i with its turns but without decoding its image (a 0-pixel stand-in marks that
        it has one): what a length check needs."""
        r = self.records[int(self.index[i])]
        image = np.zeros((0, 0, 3), dtype=np.uint8) if r["image"] else None
        return Sample(image, [tuple(t) for t in r["turns"]], family=r["family"] or "llava", record=int(self.index[i]))

    def _decode(self, r: dict, i: int) -> np.ndarray:
        from PIL import Image

        path = self.folder / r["image"]
        try:
            with Image.open(path) as im:
                im = im if im.mode == "RGB" else im.convert("RGB")  # converting to its own mode copies
                if self.image_size is not None:
                    im = im.resize((self.image_size, self.image_size), Image.BICUBIC)
                return np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise BadImage(f"record {i}: image {path} does not decode ({type(e).__name__}: {e})") from None

    def __getitem__(self, i: int) -> Sample:
        skipped = 0
        while True:
            index = int(self.index[(i + skipped) % len(self.index)])
            r = self.records[index]
            try:
                image = self._decode(r, index) if r["image"] else None
                break
            except BadImage:
                if self.bad_images == "stop" or skipped >= len(self.index):
                    raise
                skipped += 1  # the next record stands in: which sample fills slot i still depends on i alone
        turns = [tuple(t) for t in r["turns"]]  # human, gpt, or a leading system
        return Sample(image, turns, family=r["family"] or "llava", skipped=skipped, record=index)

    def lengths(self, collator) -> tuple[list[str], int] | None:
        """`collate.too_long` over every record, on this data set's processes, cached by the file's
        identity and the collator's (tokenizer, template, limits): a second run tokenizes nothing.
        None when counting every record's tokens is estimated to take over `LENGTH_BUDGET_S`: the
        loader then meets a record too long for the LLM, and stops naming it (or cuts it, with
        data.truncate)."""
        from lab.data.collate import too_long

        st = self.path.stat()
        kept = hashlib.sha256(self.index.tobytes()).hexdigest()  # the records left out change the answer
        key = json.dumps([RECORDS_FORMAT, str(self.path.resolve()), st.st_size, st.st_mtime_ns, kept,
                          _collator_identity(collator)])  # fmt: skip
        cache = cache_root() / "lengths" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
        try:
            hit = json.loads(cache.read_text())
            return hit["bad"], hit["cut"]
        except (OSError, ValueError, KeyError):
            pass
        n, probe = len(self), list(range(0, len(self), max(1, len(self) // 256)))
        t = time.perf_counter()
        too_long(self, collator, probe)
        estimate = (time.perf_counter() - t) / len(probe) * n / self.workers
        if estimate > LENGTH_BUDGET_S:
            log.info("counting the tokens of %d records would take about %.0f s: the loader checks each record's "
                     "length as it meets it", n, estimate)  # fmt: skip
            return None
        global _LENGTHS
        _LENGTHS = (self, collator)  # forked workers inherit it: nothing of the data set is pickled
        parts = _chunks(list(range(len(self))), self.workers * 4)
        if self.workers > 1 and len(self) > 4096:
            with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork")) as pool:
                results = list(pool.map(_too_long_part, parts))
        else:
            results = [too_long(self, collator, p) for p in parts]
        _LENGTHS = None
        bad, cut = [b for r in results for b in r[0]], sum(r[1] for r in results)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"bad": bad, "cut": cut}))
        return bad, cut


_LENGTHS = None


def _too_long_part(indices: list[int]) -> tuple[list[str], int]:
    from lab.data.collate import too_long

    data, collator = _LENGTHS
    return too_long(data, collator, indices)


def _collator_identity(collator) -> str:
    """What decides a record's token count: the tokenizer's vocabulary (or its full definition) and
    the collator's template and limits."""
    tok = collator.tok
    if hasattr(tok, "vocab"):
        vocab = json.dumps(tok.vocab)
    else:  # a transformers tokenizer
        backend = getattr(tok.tok, "backend_tokenizer", None)
        vocab = backend.to_str() if backend is not None else f"{tok.tok.name_or_path}:{len(tok.tok)}"
    parts = [vocab, collator.image_tokens, collator.instruction, collator.train_on, collator.max_length,
             collator.truncate, collator.user, collator.assistant, type(tok).__name__]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
