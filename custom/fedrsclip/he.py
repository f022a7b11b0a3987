"""CKKS encryption of the shared prompt (TenSEAL), without FLARE.

The protocol, per round:
  site:   c_k = Enc(n_k * x_k)            x_k its shared prompt (after DP noise, if on), n_k its training samples
  server: C = sum_k c_k, N = sum_k n_k    additions only: no multiplicative depth, no relinearisation keys
  site:   x = Dec(C) / N                  eq. 6, the sample-weighted mean, with every site's weight applied

The server holds a context without the secret key, so it can add ciphertexts but never read one. Every site holds
the same secret key (FLARE's HEBuilder model): the server together with any one site could decrypt any site's
update - the README's threat model says so.

Parameters: 2,048 values fill the 2,048 slots of one ciphertext at poly modulus degree 4096. Coefficient moduli
[60, 40] (100 bits, within the 109 that 128-bit security allows at N=4096) with a 2^35 scale leave 2^24 of
headroom for the weighted sum (40 sites x 30,000 images x |x| = 5 still fits) and an aggregation error near 1e-8.
One ciphertext is 65,676 bytes; the server's context is under 100 bytes, because no evaluation keys are needed.

On the wire an encrypted update is a dict of uint8 arrays, so FLARE's serializer and the server's .npz model files
carry it as they are: one serialized CKKS vector per payload key, and `HEADER_KEY` holding a small JSON header
(shapes, total weight, key id, number of contributions).

Multi-modal federations (MF): each modality's adapter is sent by the sites holding it only, so each averaging group
(`protocol.key_group`) has its own total weight: the header's "group_weights" {modality: sum of its senders' n_k},
and a site decrypts an adapter entry as Dec(C) / N_modality. The shared prompt keeps the total weight. Each group is
encrypted as it is today (one CKKS vector per entry); the server adds a group's ciphertexts only to the same
group's.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .protocol import COMMON, ContributionError, as_float32, check_fits, groups_of, key_group

CLIENT_CONTEXT_FILE = "client_context.tenseal"  # FLARE's names (nvflare.lighter ProvFileName), made by HEBuilder
SERVER_CONTEXT_FILE = "server_context.tenseal"
HEADER_KEY = "__ckks__"
FORMAT = 1


@dataclass(frozen=True)
class CKKSParams:
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40)
    scale_bits: int = 35


DEFAULT_PARAMS = CKKSParams()


class HEError(ValueError):
    """An encrypted update or HE context that cannot be used; the message says which file or setting to fix."""


def _ts():
    import tenseal  # a compiled extension: imported only where HE is used

    return tenseal


# ---- contexts ----------------------------------------------------------------------------------------------------
def make_contexts(params: CKKSParams = DEFAULT_PARAMS) -> tuple[bytes, bytes]:
    """(client context with the secret key, server context without it), serialized."""
    ts = _ts()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.global_scale = 2**params.scale_bits
    client = ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    server = ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return client, server


def load_context(data: bytes | None, source: str, need_secret: bool):
    """A TenSEAL CKKS context from serialized bytes; `source` names the file in errors."""
    ts = _ts()
    if not data:
        raise HEError(f"the HE context {source} is missing or empty")
    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on garbage
        raise HEError(
            f"{source} is not a TenSEAL context ({type(exc).__name__}: {exc}); regenerate it "
            "(fedrsclip he-context, poc/prepare.sh --he, or provisioning with HEBuilder)"
        ) from None
    try:
        ctx.global_scale
    except Exception:
        raise HEError(f"{source} is not a CKKS context (no scale): the job needs CKKS, not BFV") from None
    if need_secret and not ctx.is_private():
        raise HEError(
            f"{source} holds no secret key, so this site could not decrypt the global model; a site "
            f"needs {CLIENT_CONTEXT_FILE} (the server's {SERVER_CONTEXT_FILE} is the keyless one)"
        )
    if not need_secret and ctx.is_private():
        raise HEError(
            f"{source} holds the secret key: the server must never have it; give the server "
            f"{SERVER_CONTEXT_FILE} (made without the secret key) instead"
        )
    return ctx


def key_id(ctx) -> str:
    """A short public tag of the secret key: lets sites detect a context that differs from the others'.

    A domain-separated hash of the serialized secret key: revealing it tells nothing usable about the key."""
    blob = ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    return hashlib.sha256(b"fedrsclip-ckks-key-id:" + blob).hexdigest()[:16]


def write_contexts(params: CKKSParams, client_dirs: list[Path], server_dirs: list[Path]) -> None:
    """One fresh key: the client context into every client folder, the server context into every server folder."""
    from .atomic import atomic_write

    client, server = make_contexts(params)
    for folder in client_dirs:
        Path(folder).mkdir(parents=True, exist_ok=True)  # the secret key: owner-only
        atomic_write(Path(folder) / CLIENT_CONTEXT_FILE, lambda h: h.write(client), mode=0o600)
    for folder in server_dirs:
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(folder) / SERVER_CONTEXT_FILE, lambda h: h.write(server))


# ---- encrypted updates -------------------------------------------------------------------------------------------
@dataclass
class EncryptedUpdate:
    vectors: dict[str, bytes]
    shapes: dict[str, tuple[int, ...]]
    weight: float
    key_id: str
    contributions: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.vectors.values())

    @property
    def group_weights(self) -> dict[str, float]:
        """{adapter group: the total weight of its senders} (multi-modal federations); {} otherwise."""
        return {str(g): float(w) for g, w in (self.extra.get("group_weights") or {}).items()}

    def weight_of(self, key: str) -> float:
        """The total weight the entry `key` was summed with: its group's, else the update's."""
        return self.group_weights.get(key_group(key), self.weight)

    def to_data(self) -> dict[str, np.ndarray]:
        header = {
            "format": FORMAT,
            "shapes": {k: list(s) for k, s in self.shapes.items()},
            "weight": self.weight,
            "key_id": self.key_id,
            "contributions": self.contributions,
            **self.extra,
        }
        data = {k: np.frombuffer(v, dtype=np.uint8) for k, v in self.vectors.items()}
        data[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any], source: str) -> "EncryptedUpdate":
        """Parse a DXO's data; refuses plaintext (a float array where ciphertext is expected)."""
        if HEADER_KEY not in data:
            floats = [k for k, v in data.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
            what = f"plaintext values ({floats[:3]})" if floats else f"entries {sorted(data)[:3]}"
            raise HEError(
                f"{source} carries {what} where a CKKS-encrypted update was expected: the sender is not "
                "running the CKKS job (every site and the server must run the job made with --he)"
            )
        try:
            header = json.loads(np.asarray(data[HEADER_KEY], dtype=np.uint8).tobytes().decode())
            shapes = {k: tuple(int(d) for d in s) for k, s in header["shapes"].items()}
            weight, kid = float(header["weight"]), str(header["key_id"])
        except Exception as exc:
            raise HEError(f"{source}: unreadable CKKS header ({type(exc).__name__}: {exc})") from None
        if header.get("format") != FORMAT:
            raise HEError(f"{source}: CKKS update format {header.get('format')}, this version reads {FORMAT}")
        if set(shapes) != set(data) - {HEADER_KEY}:
            raise HEError(
                f"{source}: the CKKS header lists {sorted(shapes)} but the update holds "
                f"{sorted(set(data) - {HEADER_KEY})}"
            )
        vectors = {}
        for key in shapes:
            array = np.asarray(data[key])
            if array.dtype != np.uint8 or array.ndim != 1:
                raise HEError(
                    f"{source}: {key!r} is {array.dtype} of shape {array.shape}, not a serialized "
                    "ciphertext (plaintext where ciphertext is expected)"
                )
            vectors[key] = array.tobytes()
        if not (math.isfinite(weight) and weight > 0):
            raise HEError(f"{source}: the CKKS update's weight {weight} is not a positive number")
        extra = {k: v for k, v in header.items() if k not in ("format", "shapes", "weight", "key_id", "contributions")}
        groups = extra.get("group_weights", {})
        if not isinstance(groups, dict) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0
            for w in groups.values()
        ):
            raise HEError(f"{source}: the CKKS header's group_weights {groups!r} are not positive weights per modality")
        return cls(vectors, shapes, weight, kid, int(header.get("contributions", 1)), extra)


def encrypt_update(ctx, payload: Mapping[str, np.ndarray], weight: float) -> EncryptedUpdate:
    """Enc(weight * x) per payload entry, with the site's secret-key context."""
    ts = _ts()
    if not (math.isfinite(weight) and weight > 0):
        raise HEError(f"cannot encrypt with weight {weight}: the training sample count must be positive")
    vectors, shapes = {}, {}
    for key, value in payload.items():
        array = np.asarray(value, dtype=np.float64)
        if not np.isfinite(array).all():
            raise HEError(f"refusing to encrypt {key!r}: it holds NaN or Inf values")
        try:
            vectors[key] = ts.ckks_vector(ctx, (array.ravel() * weight).tolist()).serialize()
        except ValueError as exc:  # SEAL: "encoded values are too large" for the scale/moduli
            raise HEError(
                f"cannot encrypt {key!r} (|values| up to {np.abs(array).max():.3g} x weight {weight:g}): "
                f"{exc}; the CKKS parameters leave too little headroom, use a context with a smaller "
                "scale (fedrsclip he-context --scale-bits)"
            ) from None
        shapes[key] = tuple(array.shape)
    groups = sorted({key_group(k) for k in payload} - {COMMON})
    extra = {"group_weights": {g: float(weight) for g in groups}} if groups else {}
    return EncryptedUpdate(vectors, shapes, float(weight), key_id(ctx), extra=extra)


class EncryptedSum:
    """The server's running sum of encrypted updates (needs only the keyless context)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.sums: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...]] | None = None
        self.weight = 0.0
        self.group_weights: dict[str, float] = {}
        self.key_id: str | None = None
        self.count = 0

    def check(self, update: EncryptedUpdate, source: str, expected_shapes: Mapping[str, tuple] | None = None):
        """Deserialized vectors of `update` after checking its keys, shapes, sizes, group weights and key id;
        HEError otherwise. Shapes fit the sum so far, or `expected_shapes` (the previous global model's), as
        `protocol.check_fits` says (an update carries the adapters of its own modalities only)."""
        ts = _ts()
        shapes = self.shapes or (dict(expected_shapes) if expected_shapes else None)
        try:
            groups_of(update.shapes)
            if shapes is not None:
                check_fits(update.shapes, shapes)
        except ContributionError as exc:
            raise HEError(
                f"{source}: update shapes {update.shapes} do not match {shapes} ({exc}; a site running "
                "another model or algorithm)"
            ) from None
        groups = {key_group(k) for k in update.shapes} - {COMMON}
        if set(update.group_weights) != groups or (
            update.contributions == 1
            and any(abs(w - update.weight) > 1e-9 * max(1.0, update.weight) for w in update.group_weights.values())
        ):
            raise HEError(
                f"{source}: its group weights {update.group_weights} do not match its adapter groups "
                f"{sorted(groups)} and weight {update.weight:g}"
            )
        if self.key_id is not None and update.key_id != self.key_id:
            raise HEError(
                f"{source}: encrypted under key {update.key_id}, the others under {self.key_id}: this "
                f"site's {CLIENT_CONTEXT_FILE} is not the one the other sites use"
            )
        vectors = {}
        for key, blob in update.vectors.items():
            try:
                vector = ts.ckks_vector_from(self.ctx, blob)
            except Exception as exc:
                raise HEError(
                    f"{source}: {key!r} is not a ciphertext for this server's context ({type(exc).__name__}: {exc})"
                ) from None
            expected = int(np.prod(update.shapes[key]))
            if vector.size() != expected:
                raise HEError(
                    f"{source}: {key!r} holds {vector.size()} encrypted values, its shape "
                    f"{update.shapes[key]} needs {expected}"
                )
            vectors[key] = vector
        return vectors

    def add(self, update: EncryptedUpdate, source: str, expected_shapes: Mapping[str, tuple] | None = None) -> None:
        vectors = self.check(update, source, expected_shapes)
        for key, vector in vectors.items():
            self.sums[key] = vector if key not in self.sums else self.sums[key] + vector
        self.shapes = {**(self.shapes or {}), **update.shapes}
        self.key_id = update.key_id
        self.weight += update.weight
        for group, weight in update.group_weights.items():  # each modality's adapter: its senders' weights only
            self.group_weights[group] = self.group_weights.get(group, 0.0) + weight
        self.count += update.contributions

    def result(self) -> EncryptedUpdate:
        if not self.count:
            raise HEError("no encrypted update to aggregate")
        extra = {"group_weights": dict(self.group_weights)} if self.group_weights else {}
        return EncryptedUpdate(
            {k: v.serialize() for k, v in self.sums.items()},
            dict(self.shapes),
            self.weight,
            self.key_id,
            self.count,
            extra,
        )


def decrypt_average(ctx, update: EncryptedUpdate, source: str) -> dict[str, np.ndarray]:
    """x = Dec(sum) / total weight, reshaped: the sample-weighted mean of the sites' updates, as float32.

    Refused (HEError): another key id; a header whose total weight is not a sum of `contributions` sample counts
    (a whole number >= contributions); values that are not finite as float32. A sum that mixes in a ciphertext
    made under another key (with this key's id written into its header) decrypts to finite noise around 1e7: only
    the site's plausibility check on the result (`PromptTrainer.set_global`) can tell it."""
    ts = _ts()
    own = key_id(ctx)
    if update.key_id != own:
        raise HEError(
            f"{source} was encrypted under key {update.key_id}, this site's {CLIENT_CONTEXT_FILE} has "
            f"key {own}: every site must have the same client context (from one provisioning or one "
            "fedrsclip he-context run)"
        )
    if not (update.contributions >= 1 and update.weight >= update.contributions and float(update.weight).is_integer()):
        raise HEError(
            f"{source}: its header gives a total weight of {update.weight:g} over {update.contributions} "
            "contributions, which is not a sum of that many training sample counts; not decrypted"
        )
    out = {}
    for key, blob in update.vectors.items():
        try:
            values = np.asarray(ts.ckks_vector_from(ctx, blob).decrypt(), dtype=np.float64)
        except Exception as exc:
            raise HEError(f"{source}: cannot decrypt {key!r} ({type(exc).__name__}: {exc})") from None
        shape = update.shapes[key]
        if values.size != int(np.prod(shape)):
            raise HEError(
                f"{source}: {key!r} decrypts to {values.size} values, its shape {shape} needs {int(np.prod(shape))}"
            )
        mean, bad = as_float32(values / update.weight_of(key))  # checked as it is used: float32
        if bad:
            raise HEError(
                f"{source}: {key!r} decrypts to {bad} NaN or Inf values (beyond float32's range counts as Inf)"
            )
        out[key] = mean.reshape(shape)
    return out
