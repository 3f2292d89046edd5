"""XXH3-64 (seed 0, default secret) in pure Python: the checksum of the
outcome's output manifest (`"checksum": "xxh3-64:<16 hex digits>"`).

A port of the scalar reference algorithm (xxHash 0.8, `XXH3_64bits`), so an
executor with nothing but the standard library can verify what it reads.
It is exact but slow (about 2 MB/s); an executor in another language uses
its xxHash binding instead:

    C        XXH3_64bits(buf, len)                        (xxhash.h)
    Go       xxh3.Hash(buf)                               (github.com/zeebo/xxh3)
    Java     LongHashFunction.xx3().hashBytes(buf)        (net.openhft:zero-allocation-hashing)
    Rust     xxhash_rust::xxh3::xxh3_64(buf)              (xxhash-rust, feature "xxh3")
    Python   xxhash.xxh3_64_hexdigest(buf)                (the `xxhash` package)

and formats the 64-bit value as 16 lower-case hex digits, most significant
first, after the prefix `xxh3-64:`.
"""

import struct

__all__ = ["xxh3_64", "checksum"]

_M64 = (1 << 64) - 1

_P32_1 = 0x9E3779B1
_P32_2 = 0x85EBCA77
_P32_3 = 0xC2B2AE3D
_P64_1 = 0x9E3779B185EBCA87
_P64_2 = 0xC2B2AE3D27D4EB4F
_P64_3 = 0x165667B19E3779F9
_P64_4 = 0x85EBCA77C2B2AE63
_P64_5 = 0x27D4EB2F165667C5
_PMX1 = 0x165667919E3779F9
_PMX2 = 0x9FB21C651E98DF25

_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_STRIPE = 64
_CONSUME = 8
_STRIPES_PER_BLOCK = (len(_SECRET) - _STRIPE) // _CONSUME  # 16
_BLOCK = _STRIPE * _STRIPES_PER_BLOCK  # 1024


def _u32(b, i):
    return struct.unpack_from("<I", b, i)[0]


def _u64(b, i):
    return struct.unpack_from("<Q", b, i)[0]


def _avalanche(h):
    h ^= h >> 37
    h = (h * _PMX1) & _M64
    return h ^ (h >> 32)


def _xxh64_avalanche(h):
    h ^= h >> 33
    h = (h * _P64_2) & _M64
    h ^= h >> 29
    h = (h * _P64_3) & _M64
    return h ^ (h >> 32)


def _rrmxmx(h, length):
    h ^= ((h << 49) | (h >> 15)) & _M64 ^ ((h << 24) | (h >> 40)) & _M64
    h = (h * _PMX2) & _M64
    h ^= (h >> 35) + length
    h = (h * _PMX2) & _M64
    return h ^ (h >> 28)


def _fold(a, b):
    p = a * b
    return (p & _M64) ^ (p >> 64)


def _mix16(data, i, s):
    return _fold(_u64(data, i) ^ _u64(_SECRET, s), _u64(data, i + 8) ^ _u64(_SECRET, s + 8))


def _short(data):
    n = len(data)
    if n > 8:
        lo = _u64(data, 0) ^ (_u64(_SECRET, 24) ^ _u64(_SECRET, 32))
        hi = _u64(data, n - 8) ^ (_u64(_SECRET, 40) ^ _u64(_SECRET, 48))
        swapped = int.from_bytes(lo.to_bytes(8, "little"), "big")
        return _avalanche((n + swapped + hi + _fold(lo, hi)) & _M64)
    if n >= 4:
        x = (_u32(data, n - 4) + (_u32(data, 0) << 32)) ^ (_u64(_SECRET, 8) ^ _u64(_SECRET, 16))
        return _rrmxmx(x, n)
    if n > 0:
        combo = (data[0] << 16) | (data[n >> 1] << 24) | data[n - 1] | (n << 8)
        return _xxh64_avalanche(combo ^ (_u32(_SECRET, 0) ^ _u32(_SECRET, 4)))
    return _xxh64_avalanche(_u64(_SECRET, 56) ^ _u64(_SECRET, 64))


def _medium(data):
    n = len(data)
    acc = (n * _P64_1) & _M64
    if n > 32:
        if n > 64:
            if n > 96:
                acc += _mix16(data, 48, 96) + _mix16(data, n - 64, 112)
            acc += _mix16(data, 32, 64) + _mix16(data, n - 48, 80)
        acc += _mix16(data, 16, 32) + _mix16(data, n - 32, 48)
    acc += _mix16(data, 0, 0) + _mix16(data, n - 16, 16)
    return _avalanche(acc & _M64)


def _mid(data):
    n = len(data)
    acc = (n * _P64_1) & _M64
    for i in range(8):
        acc += _mix16(data, 16 * i, 16 * i)
    acc = _avalanche(acc & _M64)
    for i in range(8, n // 16):
        acc += _mix16(data, 16 * i, 16 * (i - 8) + 3)
    acc += _mix16(data, n - 16, 136 - 17)
    return _avalanche(acc & _M64)


# The secret's eight lanes at each stripe offset, unpacked once.
_KEYS = [struct.unpack_from("<8Q", _SECRET, s * _CONSUME) for s in range(_STRIPES_PER_BLOCK)]
_LAST_KEY = struct.unpack_from("<8Q", _SECRET, len(_SECRET) - _STRIPE - 7)
_SCRAMBLE = struct.unpack_from("<8Q", _SECRET, len(_SECRET) - _STRIPE)


def _accumulate(acc, data, off, key):
    # One 64-byte stripe, unrolled over the eight lanes (pairs swap their
    # plain additions: lane i adds to lane i^1).
    v0, v1, v2, v3, v4, v5, v6, v7 = struct.unpack_from("<8Q", data, off)
    k0, k1, k2, k3, k4, k5, k6, k7 = key
    k0 ^= v0; k1 ^= v1; k2 ^= v2; k3 ^= v3; k4 ^= v4; k5 ^= v5; k6 ^= v6; k7 ^= v7
    acc[0] = (acc[0] + v1 + (k0 & 0xFFFFFFFF) * (k0 >> 32)) & _M64
    acc[1] = (acc[1] + v0 + (k1 & 0xFFFFFFFF) * (k1 >> 32)) & _M64
    acc[2] = (acc[2] + v3 + (k2 & 0xFFFFFFFF) * (k2 >> 32)) & _M64
    acc[3] = (acc[3] + v2 + (k3 & 0xFFFFFFFF) * (k3 >> 32)) & _M64
    acc[4] = (acc[4] + v5 + (k4 & 0xFFFFFFFF) * (k4 >> 32)) & _M64
    acc[5] = (acc[5] + v4 + (k5 & 0xFFFFFFFF) * (k5 >> 32)) & _M64
    acc[6] = (acc[6] + v7 + (k6 & 0xFFFFFFFF) * (k6 >> 32)) & _M64
    acc[7] = (acc[7] + v6 + (k7 & 0xFFFFFFFF) * (k7 >> 32)) & _M64


def _long(data):
    n = len(data)
    acc = [_P32_3, _P64_1, _P64_2, _P64_3, _P64_4, _P32_2, _P64_5, _P32_1]
    blocks = (n - 1) // _BLOCK
    for b in range(blocks):
        base = b * _BLOCK
        for s in range(_STRIPES_PER_BLOCK):
            _accumulate(acc, data, base + s * _STRIPE, _KEYS[s])
        for i in range(8):
            a = acc[i]
            acc[i] = ((a ^ (a >> 47) ^ _SCRAMBLE[i]) * _P32_1) & _M64
    base = blocks * _BLOCK
    for s in range(((n - 1) - base) // _STRIPE):
        _accumulate(acc, data, base + s * _STRIPE, _KEYS[s])
    _accumulate(acc, data, n - _STRIPE, _LAST_KEY)
    result = (n * _P64_1) & _M64
    for i in range(4):
        result += _fold(acc[2 * i] ^ _u64(_SECRET, 11 + 16 * i), acc[2 * i + 1] ^ _u64(_SECRET, 19 + 16 * i))
    return _avalanche(result & _M64)


def xxh3_64(data):
    """The XXH3-64 hash (seed 0) of `data` (bytes-like), as an int."""
    data = bytes(data)
    n = len(data)
    if n <= 16:
        return _short(data)
    if n <= 128:
        return _medium(data)
    if n <= 240:
        return _mid(data)
    return _long(data)


def checksum(data):
    """`xxh3-64:<16 hex digits>`: the manifest's checksum of `data`."""
    return f"xxh3-64:{xxh3_64(data):016x}"
