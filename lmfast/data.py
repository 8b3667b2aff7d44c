"""Token data on disk → training batches: memory-mapped token files, a cached text → token step, and sampling.

Token files are never read whole: ``.npy`` opens with ``np.load(mmap_mode="r")``, raw ``.bin`` (nanoGPT's
uint16 format) with ``np.memmap``, and an uncompressed ``.npz`` member is mapped in place inside the zip;
a compressed member is extracted once to a cached ``.npy``. A ``.txt`` file is tokenized once into a
``.npy`` keyed by the sha256 of its content and a fingerprint of the tokenizer, and later runs reuse it.

Batches follow CS336's ``get_batch``: starts drawn uniformly from ``[0, len - context_length)``, ``x`` the
window and ``y`` the same window shifted by one, both int64 ``(batch_size, context_length)``.
:class:`BatchSampler` owns its RNG so the position in the random stream goes into checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lmfast._pypi import cache_dir as _lmfast_cache_dir

__all__ = [
    "TOKEN_SUFFIXES",
    "BatchSampler",
    "get_batch",
    "open_tokens",
    "check_length",
    "check_vocab",
    "prepare_tokens",
    "tokenizer_fingerprint",
    "load_dataset",
]

logger = logging.getLogger(__name__)

TOKEN_SUFFIXES = (".npy", ".npz", ".bin")
TEXT_SUFFIXES = (".txt",)
_SCAN_CHUNK = 1 << 24  # elements per chunk when scanning a token file for its max id (64 MiB at uint32)
_COPY_CHUNK = 1 << 26  # bytes per read when copying files into .npy
_HASH_PROGRESS_MIN = 1 << 28  # show a progress bar when hashing files at least this big


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def _check_batch_args(dataset, batch_size: int, context_length: int) -> None:
    if getattr(dataset, "ndim", None) != 1:
        raise ValueError(
            f"dataset must be a 1-D array of token ids, got {type(dataset).__name__} with shape "
            f"{getattr(dataset, 'shape', None)}; open token files with lmfast.data.open_tokens"
        )
    if batch_size < 1 or context_length < 1:
        raise ValueError(f"batch_size and context_length must be >= 1, got {batch_size} and {context_length}")
    check_length(dataset, context_length, "dataset")


def _sample_starts(n: int, context_length: int, batch_size: int, generator) -> np.ndarray:
    """``batch_size`` window starts, uniform over ``[0, n - context_length)``, as int64."""
    high = n - context_length
    if generator is None:
        return np.random.randint(0, high, size=batch_size).astype(np.int64)
    if isinstance(generator, np.random.Generator):
        return generator.integers(0, high, size=batch_size, dtype=np.int64)
    if isinstance(generator, torch.Generator):
        return torch.randint(0, high, (batch_size,), generator=generator, dtype=torch.int64).numpy()
    raise TypeError(f"generator must be a numpy Generator, a torch.Generator or None, got {type(generator).__name__}")


def _gather(
    dataset, starts: np.ndarray, context_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fancy-index read of every window, one host → device copy, then x / y as contiguous slices."""
    idx = starts[:, None] + np.arange(context_length + 1, dtype=np.int64)
    if device.type == "cuda":
        # Pinned staging lets the copy run asynchronously; numpy writes the gathered ids straight into it.
        host = torch.empty(idx.shape, dtype=torch.int64, pin_memory=True)
        host.numpy()[...] = dataset[idx]
        both = host.to(device, non_blocking=True)
    else:
        both = torch.from_numpy(np.asarray(dataset[idx], dtype=np.int64)).to(device)
    return both[:, :-1].contiguous(), both[:, 1:].contiguous()


def get_batch(
    dataset,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: np.random.Generator | torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows from a 1-D token array (CS336's ``get_batch``).

    Returns ``x, y``: int64 tensors ``(batch_size, context_length)`` on ``device`` with ``y[:, i] = x[:, i+1]``
    in the underlying data. ``generator`` makes the draw reproducible; ``None`` uses numpy's global RNG
    (``np.random.seed`` controls it), as the CS336 reference does.

    >>> x, y = get_batch(np.arange(100), 4, 8, "cpu")
    >>> bool((x[:, 1:] == y[:, :-1]).all())
    True
    """
    _check_batch_args(dataset, batch_size, context_length)
    starts = _sample_starts(len(dataset), context_length, batch_size, generator)
    return _gather(dataset, starts, context_length, torch.device(device))


class BatchSampler:
    """Random training batches from one token array, with an RNG whose state is saved in checkpoints.

    ``seed`` is anything ``np.random.default_rng`` takes; give each data-parallel rank its own stream with
    ``seed=[base_seed, rank]``. Call the sampler (or ``next()`` it) for an ``(x, y)`` pair. Restoring
    ``state_dict()`` into a sampler over the same data continues with exactly the batches the saved one
    would have drawn next. The state holds only ints, strings and dicts, so ``torch.load(weights_only=True)``
    reads it back.
    """

    def __init__(self, dataset, batch_size: int, context_length: int, device: str | torch.device = "cpu", seed=None):
        _check_batch_args(dataset, batch_size, context_length)
        self.dataset = dataset
        self.batch_size = batch_size
        self.context_length = context_length
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.batches_drawn = 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = _sample_starts(len(self.dataset), self.context_length, self.batch_size, self.rng)
        self.batches_drawn += 1
        return _gather(self.dataset, starts, self.context_length, self.device)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self()

    def state_dict(self) -> dict:
        """The RNG state and the number of batches drawn so far (plus the shape, for a warning on mismatch)."""
        return {
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "batches_drawn": self.batches_drawn,
            "batch_size": self.batch_size,
            "context_length": self.context_length,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict`)."""
        missing = {"rng", "batches_drawn"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; pass the dict BatchSampler.state_dict() returned")
        rng_state = state["rng"]
        name = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
        bit_generator_cls = getattr(np.random, name, None) if isinstance(name, str) else None
        if not (isinstance(bit_generator_cls, type) and issubclass(bit_generator_cls, np.random.BitGenerator)):
            raise ValueError(
                f"sampler state names an unknown numpy bit generator {name!r}; it must come from state_dict()"
            )
        if (state.get("batch_size"), state.get("context_length")) != (self.batch_size, self.context_length):
            logger.warning(
                "resuming the data sampler with batch_size=%s, context_length=%s (saved: %s, %s); the random stream "
                "continues but the batches differ from the uninterrupted run",
                self.batch_size,
                self.context_length,
                state.get("batch_size"),
                state.get("context_length"),
            )
        bit_generator = bit_generator_cls()
        bit_generator.state = copy.deepcopy(rng_state)
        self.rng = np.random.Generator(bit_generator)
        self.batches_drawn = int(state["batches_drawn"])


# ----------------------------------------------------------------------------------------------------------------
# Opening token files


def _missing(path: Path, key: str | None) -> FileNotFoundError:
    fix = f"set `{key}` to" if key else "pass"
    supported = ", ".join(TOKEN_SUFFIXES + TEXT_SUFFIXES)
    return FileNotFoundError(f"token file {path} does not exist; {fix} an existing {supported} file")


def _unsupported(path: Path) -> ValueError:
    return ValueError(
        f"cannot read {path}: unsupported suffix {path.suffix!r}; token files are .npy, .npz or .bin (raw uint16 "
        f"ids), and a .txt file is tokenized first (see lmfast.data.load_dataset)"
    )


def _check_header(path: Path, shape: tuple, dtype: np.dtype) -> None:
    """The checks that need only the header: 1-D, integer ids, not empty."""
    if len(shape) != 1:
        raise ValueError(
            f"{path} holds an array of shape {shape}; token files must be 1-D, so flatten it "
            f"(np.save(path, tokens.reshape(-1)))"
        )
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"{path} holds {dtype} values; token files must hold integer ids (e.g. uint16 / int32), "
            f"so convert them with tokens.astype(np.uint16) or re-tokenize"
        )
    if shape[0] == 0:
        raise ValueError(f"{path} holds no tokens; re-tokenize the text or point the config at a non-empty file")


def _read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _open_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            shape, _, dtype = _read_npy_header(f)
    except ValueError as e:
        raise ValueError(f"{path} is not a valid .npy file ({e}); re-create it with np.save") from e
    _check_header(path, shape, dtype)
    return np.load(path, mmap_mode="r")


def _pick_npz_member(path: Path, names: list[str]) -> str:
    arrays = [n for n in names if n.endswith(".npy")]
    if len(arrays) == 1:
        return arrays[0]
    for preferred in ("tokens.npy", "arr_0.npy"):
        if preferred in arrays:
            return preferred
    found = ", ".join(n[:-4] for n in arrays) or "none"
    raise ValueError(
        f"{path} holds arrays [{found}]; a token .npz must hold a single array or one named 'tokens' "
        f"(np.savez(path, tokens=ids))"
    )


def _npz_member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored member's data: past the local header, whose extra field may differ from the index."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"{path} is not a valid .npz file (bad local header for {info.filename}); re-create it")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _open_npz(path: Path, cache: Path) -> np.ndarray:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not a valid .npz file ({e}); re-create it with np.savez") from e
    with zf:
        member = _pick_npz_member(path, zf.namelist())
        info = zf.getinfo(member)
        with zf.open(member) as src:
            shape, fortran, dtype = _read_npy_header(src)
            _check_header(path, shape, dtype)
            if info.compress_type == zipfile.ZIP_STORED:
                # np.savez stores members uncompressed: map the array where it lies inside the zip.
                offset = _npz_member_offset(path, info) + src.tell()
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
            out = cache / f"{path.stem}-{member[:-4]}-{_content_sha256(path, cache)[:16]}.npy"
            with _file_lock(out):
                if not out.exists():
                    logger.info("extracting compressed %s from %s to %s (once)", member, path, out)
                    with _atomic_path(out) as tmp:
                        dst = np.lib.format.open_memmap(tmp, "w+", dtype=dtype, shape=shape, fortran_order=fortran)
                        _copy_stream(src, dst.reshape(-1).view(np.uint8), desc=f"extract {path.name}")
                        dst.flush()
                        del dst
    return np.load(out, mmap_mode="r")


def _open_bin(path: Path, dtype) -> np.ndarray:
    dtype = np.dtype(np.uint16 if dtype is None else dtype)
    _check_header(path, (1,), dtype)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(
            f"{path} has {size} bytes, not a whole number of {dtype} ids ({dtype.itemsize} bytes each); "
            f"raw .bin files are uint16 by default, pass the dtype they were written with"
        )
    return np.memmap(path, dtype=dtype, mode="r")


def check_vocab(tokens: np.ndarray, vocab_size: int, what: str = "tokens") -> None:
    """Raise ValueError if any id is negative or ``>= vocab_size``; scans in chunks, so memory stays bounded."""
    info = np.iinfo(tokens.dtype)
    if info.min >= 0 and info.max < vocab_size:
        return  # the dtype cannot hold an out-of-range id (e.g. uint8 bytes with vocab 256)
    for lo in range(0, len(tokens), _SCAN_CHUNK):
        chunk = np.asarray(tokens[lo : lo + _SCAN_CHUNK])
        bad = (chunk >= vocab_size) | (chunk < 0) if info.min < 0 else chunk >= vocab_size
        if bad.any():
            i = int(np.argmax(bad))
            fix = (
                "ids cannot be negative, so re-create the file"
                if chunk[i] < 0
                else "the file was made with another tokenizer: re-tokenize it with this run's tokenizer, or set "
                "vocab_size above the largest id in the file"
            )
            raise ValueError(
                f"{what} holds token id {int(chunk[i])} at position {lo + i}, outside [0, {vocab_size}); {fix}"
            )


def check_length(tokens, context_length: int, what: str = "tokens") -> None:
    """Raise ValueError unless ``tokens`` has at least ``context_length + 1`` ids (one window plus its target)."""
    if len(tokens) < context_length + 1:
        raise ValueError(
            f"{what} has {len(tokens)} tokens, but context_length={context_length} needs at least "
            f"{context_length + 1}; use more data or a smaller context_length"
        )


def open_tokens(
    path: str | os.PathLike,
    vocab_size: int | None = None,
    *,
    dtype=None,
    key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Memory-map a token file as a 1-D integer array, checking it on the way.

    ``.npy`` → ``np.load(mmap_mode="r")``; ``.npz`` → its single array (or the one named ``tokens`` /
    ``arr_0``), mapped in place when stored uncompressed, else extracted once to ``cache_dir``; ``.bin`` →
    raw ids of ``dtype`` (uint16 by default, nanoGPT's format). With ``vocab_size`` every id is checked to
    lie in ``[0, vocab_size)``. ``key`` (a config key) is named in the error for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path, key)
    suffix = path.suffix.lower()
    if suffix not in TOKEN_SUFFIXES:
        raise _unsupported(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); re-create the token file")
    if suffix == ".npy":
        tokens = _open_npy(path)
    elif suffix == ".npz":
        tokens = _open_npz(path, _resolve_cache(cache_dir))
    else:
        tokens = _open_bin(path, dtype)
    info = np.iinfo(tokens.dtype)
    if vocab_size is not None and (info.min < 0 or info.max >= vocab_size):
        what = f"range-{tokens.dtype.name}-{len(tokens)}"
        lo, hi = _memoized(path, _resolve_cache(cache_dir), what, lambda: _id_range(tokens))
        if lo < 0 or hi >= vocab_size:
            check_vocab(tokens, vocab_size, str(path))  # finds the first bad id for the error message
    return tokens


# ----------------------------------------------------------------------------------------------------------------
# Text → cached tokens


def _resolve_cache(cache_dir: str | os.PathLike | None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else _lmfast_cache_dir() / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@contextlib.contextmanager
def _file_lock(target: Path):
    """Hold an exclusive lock on ``.<name>.lock`` beside ``target``, so data-parallel ranks do one-time work once.

    POSIX ``flock``; where it does not exist (Windows) this is a no-op and concurrent ranks merely repeat work,
    which the atomic writes keep safe.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(target.with_name(f".{target.name}.lock"), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _atomic_path:
    """Context manager yielding a temp path beside ``final``; on success it is fsynced and renamed over ``final``."""

    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.final.parent, prefix=f".{self.final.stem}.", suffix=".tmp.npy")
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.final)
        else:
            self.tmp.unlink(missing_ok=True)


def _copy_stream(src, dst: np.ndarray, desc: str, progress: bool = True) -> None:
    """Fill the uint8 view ``dst`` from the binary stream ``src`` in bounded chunks, with a progress bar."""
    view = memoryview(dst)
    with tqdm(
        total=len(dst), unit="B", unit_scale=True, desc=desc, disable=not progress or len(dst) < _COPY_CHUNK
    ) as bar:
        pos = 0
        while pos < len(dst):
            got = src.readinto(view[pos : pos + _COPY_CHUNK])
            if not got:
                raise ValueError(f"{desc}: the source ended after {pos} of {len(dst)} bytes; the file is truncated")
            pos += got
            bar.update(got)


def _memoized(path: Path, cache: Path, what: str, compute):
    """``compute()`` once per (file, size, mtime) and ``what``: the JSON result is kept under ``cache/memo/``.

    Hashing or scanning a multi-GB file costs seconds to minutes; an unchanged file should not pay it each run.
    """
    st, resolved = path.stat(), str(path.resolve())
    memo = cache / "memo" / f"{hashlib.sha1(resolved.encode()).hexdigest()[:20]}-{what}.json"
    stamp = {"path": resolved, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text())
        if saved["stamp"] == stamp:
            return saved["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = compute()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"stamp": stamp, "value": value}))
    os.replace(tmp, memo)
    return value


def _content_sha256(path: Path, cache: Path, progress: bool = True) -> str:
    """sha256 of the file's bytes, streamed, and remembered while the file is unchanged."""

    def compute() -> str:
        h, size = hashlib.sha256(), path.stat().st_size
        disable = not progress or size < _HASH_PROGRESS_MIN
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"hash {path.name}", disable=disable)
        with open(path, "rb") as f, bar:
            while block := f.read(_COPY_CHUNK):
                h.update(block)
                bar.update(len(block))
        return h.hexdigest()

    return _memoized(path, cache, "sha256", compute)


def _id_range(tokens: np.ndarray) -> list[int]:
    """[min, max] of the ids, scanned in chunks so memory stays bounded."""
    lo, hi = int(np.iinfo(tokens.dtype).max), int(np.iinfo(tokens.dtype).min)
    for i in range(0, len(tokens), _SCAN_CHUNK):
        chunk = np.asarray(tokens[i : i + _SCAN_CHUNK])
        lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
    return [lo, hi]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash that changes whenever the tokenizer would produce other ids: its vocab, merges and specials.

    ``None`` (byte-level: the UTF-8 bytes are the ids) → ``"bytes"``. An object with a ``fingerprint()``
    method is trusted; otherwise ``vocab`` (dict id → bytes), ``merges`` and ``special_tokens`` attributes are
    hashed, and failing those, the files ``tokenizer.save(dir)`` writes.
    """
    if tokenizer is None:
        return "bytes"
    own = getattr(tokenizer, "fingerprint", None)
    if own is not None:
        return str(own() if callable(own) else own)
    h = hashlib.sha256()
    if hasattr(tokenizer, "vocab") and hasattr(tokenizer, "merges"):
        for i, tok in sorted(tokenizer.vocab.items()):
            h.update(b"v%d:%d:" % (i, len(tok)) + bytes(tok))
        for a, b in tokenizer.merges:
            h.update(b"m%d:%d:" % (len(a), len(b)) + bytes(a) + bytes(b))
        specials = getattr(tokenizer, "special_tokens", None) or []
        # A dict (name → id) is hashed with its ids; a list in order, since the order assigns the ids.
        for s in sorted(specials.items()) if isinstance(specials, dict) else specials:
            h.update(b"s" + repr(s).encode() + b"\0")
    elif hasattr(tokenizer, "save"):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(tmp)
            for f in sorted(Path(tmp).rglob("*")):
                if f.is_file():
                    h.update(f.relative_to(tmp).as_posix().encode() + b"\0" + f.read_bytes())
    else:
        raise TypeError(
            f"cannot fingerprint a {type(tokenizer).__name__}: it needs vocab/merges attributes or a save(dir) "
            f"method (lmfast.tokenizer.Tokenizer has both)"
        )
    return h.hexdigest()[:16]


def _bytes_to_npy(text_path: Path, out: Path, progress: bool) -> None:
    """Byte-level tokens: the file's bytes, copied in chunks into a uint8 .npy (no tokenizer, no decoding)."""
    n = text_path.stat().st_size
    dst = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(n,))
    with open(text_path, "rb") as src:
        _copy_stream(src, dst, desc=f"bytes {text_path.name}", progress=progress)
    dst.flush()
    del dst


def prepare_tokens(
    text_path: str | os.PathLike,
    tokenizer=None,
    cache_dir: str | os.PathLike | None = None,
    *,
    num_threads: int | None = None,
    progress: bool = True,
    key: str | None = None,
) -> Path:
    """Tokenize a text file once into ``cache_dir`` and return the cached ``.npy`` path.

    The cache name carries the sha256 of the text and :func:`tokenizer_fingerprint`, so an edited text or
    another tokenizer makes a new file and an unchanged pair reuses the old one. ``tokenizer=None`` is
    byte-level: the ids are the file's UTF-8 bytes (vocab 256, stored as uint8). Otherwise
    ``tokenizer.encode_file(text, out, num_threads=..., progress=...)`` does the work. The file appears
    atomically (temp file + ``os.replace``), so an interrupted run leaves no half-written cache.
    """
    text_path = Path(text_path)
    if not text_path.is_file():
        raise _missing(text_path, key)
    if text_path.stat().st_size == 0:
        raise ValueError(f"{text_path} is empty (0 bytes); there is nothing to tokenize")
    cache = _resolve_cache(cache_dir)
    digest = _content_sha256(text_path, cache, progress)
    out = cache / f"{text_path.stem}-{digest[:16]}-{tokenizer_fingerprint(tokenizer)}.npy"
    if out.exists():
        logger.info("using cached tokens %s for %s", out, text_path)
        return out
    with _file_lock(out):
        if out.exists():  # another process (a data-parallel rank) made it while this one waited
            logger.info("using cached tokens %s for %s", out, text_path)
            return out
        logger.info("tokenizing %s into %s (%s)", text_path, out, "byte-level" if tokenizer is None else "BPE")
        with _atomic_path(out) as tmp:
            if tokenizer is None:
                _bytes_to_npy(text_path, tmp, progress)
            else:
                written = Path(tokenizer.encode_file(text_path, tmp, num_threads=num_threads, progress=progress))
                if written.resolve() != tmp.resolve():
                    os.replace(written, tmp)
            with open(tmp, "rb") as f:  # never cache something that is not a readable token file
                shape, _, dtype = _read_npy_header(f)
            _check_header(tmp, shape, dtype)
    return out


def load_dataset(
    path: str | os.PathLike,
    *,
    tokenizer=None,
    vocab_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    context_length: int,
    key: str | None = None,
    dtype=None,
) -> np.ndarray:
    """Open training/validation data for ``get_batch``: a token file as is, a ``.txt`` through the token cache.

    ``vocab_size`` (default: the tokenizer's, or 256 for byte-level text) bounds the ids; the data must
    hold at least ``context_length + 1`` tokens. ``key`` names the config key in errors.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        path = prepare_tokens(path, tokenizer, cache_dir, key=key)
        if vocab_size is None:
            vocab_size = 256 if tokenizer is None else tokenizer.vocab_size
    elif suffix not in TOKEN_SUFFIXES:
        if not path.exists():
            raise _missing(path, key)
        raise _unsupported(path)
    if vocab_size is None and tokenizer is not None:
        vocab_size = tokenizer.vocab_size
    tokens = open_tokens(path, vocab_size, dtype=dtype, key=key, cache_dir=cache_dir)
    check_length(tokens, context_length, key or str(path))
    return tokens
