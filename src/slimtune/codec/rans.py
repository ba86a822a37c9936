"""Entropy coding of a stream of non-negative integers: static rANS with its frequency table.

Why rANS and not Huffman (docs/DESIGN-NOTES.md, "Entropy-coded artifact"): a Huffman code
spends at least one bit per symbol, and a 2-bit layer whose codes sit mostly on zero, or the
gaps of a lightly pruned layer, carry well under one bit each; rANS gets within a fraction
of a percent of the zeroth-order entropy plus its table, and its lanes decode in numpy.

A coded stream of ``count`` symbols, each at most ``top`` (both known to the reader from
the plan, never from the stream)::

    u8 scale k           the frequencies sum to M = 2**k (0 <= k <= 16)
    u8 escape width w    0: none; else symbol A-1 stands for A-1 + a w-bit raw value
    varint A             the alphabet: symbols 0 .. A-1 (1 <= A <= 4096)
    table                A frequencies, each as the Elias-gamma code of f + 1, MSB first,
                         padded to a byte; they sum to M
    u32 x lanes          each lane's final encoder state, in [2**16, 2**32)
    varint W, u16 x W    the renormalization words, in the order the decoder reads them
    raw                  the escaped values, w bits each (LSB first), padded to a byte

Symbol ``i`` belongs to lane ``i % lanes`` (``lanes`` follows from ``count``: one under
131072 symbols, decoded in plain Python; above, about one per 4096 symbols, a power of two,
at most 1024, and the decoder advances every lane in one numpy step). A lane's state is
32 bits with 16-bit renormalization (ryg_rans's "word" variant); the encoder starts each
lane at 2**16, and the decoder checks that it ends there and consumed exactly the W
words, and that the table sums to M with zero padding: a flipped table or state is
refused (a flipped word almost always). A stream of one symbol value has scale 0 and
neither states nor words: it costs its table.
"""

from __future__ import annotations

import math

import numpy as np

from slimtune.codec.bits import Reader, pack, unpack, varint
from slimtune.errors import ArtifactError

__all__ = ["encode", "decode", "lanes_for", "entropy_bits", "LOW", "MAX_SCALE",
           "MAX_ALPHABET"]

LOW = 1 << 16  # a lane's state lies in [LOW, 2**32)
MAX_SCALE = 16  # M = 2**scale <= LOW
MAX_ALPHABET = 4096
SYMBOLS_PER_LANE = 4096  # a lane's final state (32 bits) is under 1 % of its symbols' bits
#: below this many lanes one plain-Python lane is faster than a numpy step per symbol row
MIN_LANES = 32
MAX_LANES = 1024


def lanes_for(count: int) -> int:
    """How many interleaved lanes a stream of ``count`` symbols has: one below
    ``MIN_LANES x SYMBOLS_PER_LANE`` symbols, else a power of two near one per
    ``SYMBOLS_PER_LANE``, at most ``MAX_LANES``."""
    n = count // SYMBOLS_PER_LANE
    return 1 if n < MIN_LANES else min(1 << (n.bit_length() - 1), MAX_LANES)


def entropy_bits(symbols: np.ndarray) -> float:
    """The zeroth-order entropy bound of ``symbols``: ``count x H0`` bits."""
    _, counts = np.unique(np.asarray(symbols), return_counts=True)
    n = counts.sum()
    return float(-(counts * np.log2(counts / n)).sum()) if n else 0.0


# -- choosing the model (alphabet, escape width, scale, frequencies) ----------------------
def _quantize(counts: np.ndarray, k: int) -> np.ndarray | None:
    """Frequencies summing to 2**k, at least 1 for every present symbol (None: too many
    symbols for 2**k slots)."""
    m, n = 1 << k, int(counts.sum())
    present = counts > 0
    if int(present.sum()) > m:
        return None
    ideal = counts * (m / n)
    f = np.where(present, np.maximum(1, np.floor(ideal)), 0).astype(np.int64)
    short = m - int(f.sum())
    if short > 0:  # the largest remainders get one more
        f[np.argsort(-np.where(present, ideal - f, -1.0), kind="stable")[:short]] += 1
    while short < 0:  # too many rare symbols lifted to 1: take from the most frequent
        j = int(np.argmax(f))
        take = min(-short, int(f[j]) - 1)
        f[j] -= take
        short += take
    return f


def _gamma_bits(f: np.ndarray) -> int:
    v = f + 1
    return int((2 * np.floor(np.log2(v)).astype(np.int64) + 1).sum())


def _cost(counts: np.ndarray, f: np.ndarray) -> float:
    present = counts > 0
    return float((counts[present] * np.log2((f.sum()) / f[present])).sum())


def _choose(symbols: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """(alphabet A, escape width w, scale k, frequencies) of the smallest estimated stream."""
    n, top_seen = len(symbols), int(symbols.max())
    low = np.bincount(np.minimum(symbols, MAX_ALPHABET - 1), minlength=MAX_ALPHABET)
    alphabets = [(top_seen + 1, 0)] if top_seen < MAX_ALPHABET else []
    for j in range(1, 13):  # escapes: symbol A-1 means "A-1 or more"
        a = (1 << j) + 1 if (1 << j) + 1 < MAX_ALPHABET else MAX_ALPHABET
        if a - 1 < top_seen:
            alphabets.append((a, max(1, (top_seen - (a - 1)).bit_length())))
    best: tuple[float, int, int, int, np.ndarray] | None = None
    k_high = min(MAX_SCALE, max(1, math.ceil(math.log2(n))) + 2)
    for a, w in alphabets:
        counts = low[:a].copy()
        if w:
            counts[a - 1] = int(low[a - 1:].sum())
        escapes = int(counts[a - 1]) if w else 0
        distinct = int((counts > 0).sum())
        k_low = max(0, math.ceil(math.log2(distinct))) if distinct > 1 else 0
        for k in range(k_low, max(k_low, k_high) + 1):
            f = _quantize(counts, k)
            if f is None:
                continue
            bits = _cost(counts, f) + _gamma_bits(f) + escapes * w + 8 * len(varint(a))
            if best is None or bits < best[0]:
                best = (bits, a, w, k, f)
            if distinct == 1:
                break  # one symbol: k = 0 costs nothing
    assert best is not None
    return best[1], best[2], best[3], best[4]


def _table(f: np.ndarray) -> bytes:
    bits: list[int] = []
    for v in (f + 1).tolist():
        nb = v.bit_length()
        bits.extend([0] * (nb - 1))
        bits.extend((v >> (nb - 1 - i)) & 1 for i in range(nb))
    return np.packbits(np.array(bits, dtype=np.uint8)).tobytes()


def _read_table(reader: Reader, a: int, k: int, what: str) -> np.ndarray:
    raw = reader.peek(-(-a * (2 * MAX_SCALE + 3) // 8))
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8)).tolist()
    f, i = [], 0
    for _ in range(a):
        z = 0
        while i + z < len(bits) and bits[i + z] == 0:
            z += 1
            if z > MAX_SCALE + 1:
                raise ArtifactError(f"the artifact's frequency table of {what} is corrupted")
        if i + 2 * z + 1 > len(bits):
            raise ArtifactError(f"the artifact's frequency table of {what} is truncated")
        v = 0
        for b in bits[i + z : i + 2 * z + 1]:
            v = (v << 1) | b
        f.append(v - 1)
        i += 2 * z + 1
    reader.take(-(-i // 8))
    out = np.array(f, dtype=np.int64)
    if any(bits[i:-(-i // 8) * 8]) or int(out.sum()) != 1 << k or (out > 1 << k).any():
        raise ArtifactError(f"the artifact's frequency table of {what} is corrupted "
                            f"(its frequencies do not sum to 2**{k}, or its padding is not 0)")
    return out


# -- the coder ------------------------------------------------------------------------------
def encode(symbols: np.ndarray) -> bytes:
    """The coded stream of ``symbols`` (non-negative integers, at least one)."""
    sym = np.asarray(symbols, dtype=np.int64)
    a, w, k, f = _choose(sym)
    lit = np.minimum(sym, a - 1) if w else sym
    cum = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.int64)
    head = [bytes([k, w]), varint(a), _table(f)]
    tail = [pack(sym[sym >= a - 1] - (a - 1), w)] if w else []
    if k == 0:  # one value: nothing to code
        return b"".join(head + tail)
    lanes = lanes_for(len(sym))
    if lanes == 1:
        states, words = _encode_one(lit.tolist(), f.tolist(), cum.tolist(), k)
    else:
        states, words = _encode_lanes(lit, f, cum, k, lanes)
    return b"".join(head + [states.astype("<u4").tobytes(), varint(len(words)),
                            words.astype("<u2").tobytes()] + tail)


def decode(reader: Reader, count: int, top: int, what: str) -> np.ndarray:
    """The ``count`` symbols (each at most ``top``) of the coded stream at ``reader``;
    :class:`ArtifactError` naming ``what`` if the stream is corrupt."""
    k, w = reader.take(2)
    a = reader.varint(what)
    if k > MAX_SCALE or w > 32 or not 1 <= a <= MAX_ALPHABET or (not w and a - 1 > top) \
            or count < 1:
        raise ArtifactError(f"the artifact's entropy-coded {what} has an invalid model "
                            f"(scale {k}, escape width {w}, alphabet {a})")
    f = _read_table(reader, a, k, what)
    if k == 0:
        sym = np.full(count, int(np.argmax(f)), dtype=np.int64)
    else:
        sym = _decode_body(reader, f, k, count, what)
    if w:
        esc = np.flatnonzero(sym == a - 1)
        sym[esc] = a - 1 + unpack(reader.take(-(-len(esc) * w // 8)), len(esc), w)
    if int(sym.max()) > top:
        raise ArtifactError(f"the artifact's entropy-coded {what} holds out-of-range values")
    return sym


def _decode_body(reader: Reader, f: np.ndarray, k: int, count: int, what: str) -> np.ndarray:
    """The lanes' states and words, decoded to ``count`` symbols."""
    a = len(f)
    lanes = lanes_for(count)
    states = np.frombuffer(reader.take(4 * lanes), dtype="<u4").astype(np.int64)
    if (states < LOW).any():
        raise ArtifactError(f"the artifact's entropy-coded {what} is corrupted (bad state)")
    n_words = reader.varint(what)
    words = np.frombuffer(reader.take(2 * n_words), dtype="<u2").astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.int64)
    slot_symbol = np.repeat(np.arange(a, dtype=np.int64), f)
    if lanes == 1:
        sym, ok = _decode_one(int(states[0]), words.tolist(), f.tolist(), cum.tolist(),
                              slot_symbol.tolist(), k, count)
    else:
        sym, ok = _decode_lanes(states, words, f, cum, slot_symbol, k, count)
    if not ok:
        raise ArtifactError(f"the artifact's entropy-coded {what} is corrupted (it does not "
                            f"decode to its final state)")
    return sym


def _encode_one(sym: list[int], f: list[int], cum: list[int], k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """One lane, in plain Python (a stream under 8192 symbols: faster than numpy steps)."""
    x, out, shift = LOW, [], 32 - k
    for s in reversed(sym):
        fs = f[s]
        if x >= fs << shift:
            out.append(x & 0xFFFF)
            x >>= 16
        x = ((x // fs) << k) + x % fs + cum[s]
    out.reverse()
    return np.array([x], dtype=np.int64), np.array(out, dtype=np.int64)


def _encode_lanes(sym: np.ndarray, f: np.ndarray, cum: np.ndarray, k: int, lanes: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Every lane at once: step ``t`` codes symbols ``t*lanes .. t*lanes + lanes - 1``,
    the steps in reverse; a step's renormalization words are read by the decoder after
    it decodes that step, in lane order."""
    n = len(sym)
    steps = -(-n // lanes)
    fs, cs = f[sym], cum[sym]
    limit = fs << (32 - k)
    x = np.full(lanes, LOW, dtype=np.int64)
    emitted = np.zeros((steps, lanes), dtype=bool)
    low16 = np.zeros((steps, lanes), dtype=np.int64)
    for t in range(steps - 1, -1, -1):
        lo, hi = t * lanes, min(t * lanes + lanes, n)
        m = hi - lo
        xs = x[:m]
        e = xs >= limit[lo:hi]
        emitted[t, :m] = e
        low16[t, :m] = xs & 0xFFFF
        xs = np.where(e, xs >> 16, xs)
        q, r = np.divmod(xs, fs[lo:hi])
        x[:m] = (q << k) + r + cs[lo:hi]
    return x, low16[emitted]


def _decode_one(x: int, words: list[int], f: list[int], cum: list[int], slot_symbol: list[int],
                k: int, count: int) -> tuple[np.ndarray, bool]:
    mask, pos, out = (1 << k) - 1, 0, [0] * count
    for i in range(count):
        slot = x & mask
        s = slot_symbol[slot]
        out[i] = s
        x = f[s] * (x >> k) + slot - cum[s]
        if x < LOW:
            if pos == len(words):
                return np.array(out, dtype=np.int64), False
            x = (x << 16) | words[pos]
            pos += 1
    return np.array(out, dtype=np.int64), pos == len(words) and x == LOW


def _decode_lanes(x: np.ndarray, words: np.ndarray, f: np.ndarray, cum: np.ndarray,
                  slot_symbol: np.ndarray, k: int, count: int) -> tuple[np.ndarray, bool]:
    lanes = len(x)
    x = x.copy()
    mask, pos = (1 << k) - 1, 0
    out = np.empty(count, dtype=np.int64)
    for lo in range(0, count, lanes):
        m = min(lanes, count - lo)
        xs = x[:m]
        slot = xs & mask
        s = slot_symbol[slot]
        out[lo:lo + m] = s
        xs = f[s] * (xs >> k) + slot - cum[s]
        need = xs < LOW
        c = int(np.count_nonzero(need))
        if c:
            if pos + c > len(words):
                return out, False
            xs[need] = (xs[need] << 16) | words[pos:pos + c]
            pos += c
        x[:m] = xs
    return out, pos == len(words) and bool((x == LOW).all())
