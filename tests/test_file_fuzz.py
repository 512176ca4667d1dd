"""Files from others: mutated model files never load half-way.

Every mutation of a valid file either fails with a clear ``ValueError`` or, if
it changed nothing that matters, loads the exact original model.
"""

import json
import struct

import numpy as np
import pytest

import portnn as pn

pytest.importorskip("safetensors")

MUTATIONS = 300


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    with pn.use_backend("numpy"):
        rng = np.random.default_rng(0)
        X, y = rng.normal(size=(32, 4)), rng.integers(0, 3, size=32)
        model = pn.Sequential(pn.Dense(4, 8, seed=0), pn.BatchNorm(8), pn.ReLU(), pn.Dropout(0.1, seed=1), pn.Dense(8, 3, seed=2))
        model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=2, batch_size=8, verbose=0)
        path = tmp_path_factory.mktemp("fuzz") / "model.safetensors"
        model.save(path)
    return path.read_bytes(), _state(pn.load(path, backend="numpy"))


def _state(model):
    arrays = {**model.parameters(), **{f"buffer:{k}": v for k, v in model.buffers().items()}}
    for name, slots in (model.optimizer_state or {}).get("slots", {}).items():
        arrays.update({f"optim:{name}:{k}": v for k, v in slots.items()})
    return (
        {k: pn.to_numpy(v).tobytes() + str(pn.to_numpy(v).dtype).encode() for k, v in arrays.items()},
        repr(model),
        repr(model.optimizer),
        repr(model.loss),
    )


def _mutations(data: bytes, rng: np.random.Generator):
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    for i in range(MUTATIONS):
        kind = i % 6
        blob = bytearray(data)
        if kind == 0:  # truncated anywhere
            yield "truncate", bytes(blob[: int(rng.integers(0, len(blob)))])
        elif kind == 1:  # one bit flipped anywhere
            pos = int(rng.integers(0, len(blob)))
            blob[pos] ^= 1 << int(rng.integers(0, 8))
            yield "bitflip", bytes(blob)
        elif kind == 2:  # a bit flipped in the tensor data
            pos = int(rng.integers(8 + header_len, len(blob)))
            blob[pos] ^= 1 << int(rng.integers(0, 8))
            yield "data bitflip", bytes(blob)
        elif kind == 3:  # an oversized or wrong header length
            bad = int(rng.choice([2**63, 2**40, header_len + 1, header_len - 1, 0]))
            yield "header length", struct.pack("<Q", bad % 2**64) + bytes(blob[8:])
        elif kind == 4:  # a tensor's dtype or shape changed in the safetensors header
            h = json.loads(json.dumps(header))
            name = rng.choice([k for k in h if k != "__metadata__"])
            if rng.random() < 0.5:
                h[name]["dtype"] = str(rng.choice(["F64", "I32", "F16", "U8"]))
            else:
                h[name]["shape"] = list(reversed(h[name]["shape"])) + [1]
            yield "tensor header", _rebuild(h, data, header_len)
        else:  # the portnn config edited: numbers, class names, versions
            h = json.loads(json.dumps(header))
            meta = json.loads(h["__metadata__"]["portnn"])
            text = json.dumps(meta)
            digits = [j for j, c in enumerate(text) if c.isdigit()]
            j = int(rng.choice(digits))
            text = text[:j] + str((int(text[j]) + int(rng.integers(1, 9))) % 10) + text[j + 1 :]
            if rng.random() < 0.2:
                text = text.replace('"Dense"', '"os.system"', 1)
            h["__metadata__"]["portnn"] = text
            yield "config", _rebuild(h, data, header_len)


def _rebuild(header: dict, data: bytes, header_len: int) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + header_len :]


def test_mutated_files_fail_clearly_or_load_the_original(valid_file, tmp_path):
    data, original = valid_file
    rng = np.random.default_rng(2026)
    outcomes = {"rejected": 0, "unchanged": 0}
    for i, (kind, blob) in enumerate(_mutations(data, rng)):
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(blob)
        try:
            loaded = pn.load(path, backend="numpy")
        except ValueError as e:
            assert str(path) in str(e), (kind, e)
            outcomes["rejected"] += 1
            continue
        assert _state(loaded) == original, f"mutation {i} ({kind}) loaded a different model"
        outcomes["unchanged"] += 1
    assert outcomes["rejected"] > MUTATIONS * 0.9, outcomes
