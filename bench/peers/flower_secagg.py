"""Time Flower's SecAgg+ primitives (flwr 1.32.1) on the sizes bench/secagg.py uses.

Runs inside bench/peers/.venv-flower (see bench/README.md), never in the project venv.
Flower's protocol runs inside its ServerApp/ClientApp runtime; here its primitives are called
in the order its client mod (secaggplus_mod.py) and server workflow (secaggplus_workflow.py)
call them, for one representative silo and for the server:

  advertise  2 x generate_key_pairs + public_key_to_bytes
  share      create_shares(seed), create_shares(sk1), per neighbour: generate_shared_key +
             Fernet encrypt
  masked     per neighbour: decrypt; quantize (stochastic rounding); self mask; per neighbour:
             generate_shared_key + pseudo_rand_gen + add/sub; parameters_mod
  unmask     server: per survivor combine_shares + pseudo_rand_gen + subtract; per dropped silo
             combine_shares + per surviving neighbour generate_shared_key + pseudo_rand_gen

Usage: flower_secagg.py '<json list of {"n","d","drops","t"}>'  -> JSON list of timings.
"""

import json
import os
import sys
import time

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

MOD = 2**32
QRANGE = 2**22
CLIP = 8.0


def _time(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(n: int, d: int, drops: int, t: int) -> dict:
    keys = [(generate_key_pairs(), generate_key_pairs()) for _ in range(n)]
    pks = [(public_key_to_bytes(a[1]), public_key_to_bytes(b[1])) for a, b in keys]
    t_adv, _ = _time(lambda: [public_key_to_bytes(generate_key_pairs()[1]) for _ in range(2)])
    me, (sk1, _), (sk2, _) = 0, keys[0][0], keys[0][1]
    seed = os.urandom(32)

    def share():
        b_sh = create_shares(seed, t, n)
        s_sh = create_shares(private_key_to_bytes(sk1), t, n)
        out = []
        for j in range(1, n):
            k = generate_shared_key(sk2, bytes_to_public_key(pks[j][1]))
            out.append(encrypt(k, share_keys_plaintext_concat(me, j, b_sh[j], s_sh[j])))
        return b_sh, s_sh, out

    t_share, (b_sh, s_sh, cts) = _time(share)
    x = [np.random.default_rng(0).uniform(-1, 1, d).astype(np.float32)]

    def masked():
        for j, ct in enumerate(cts, start=1):  # as many ciphertexts as this silo receives
            decrypt(generate_shared_key(sk2, bytes_to_public_key(pks[j][1])), ct)
        q = quantize(x, CLIP, QRANGE)
        q = parameters_addition(q, pseudo_rand_gen(seed, MOD, [(d,)]))
        for j in range(1, n):
            k = generate_shared_key(sk1, bytes_to_public_key(pks[j][0]))
            mask = pseudo_rand_gen(k, MOD, [(d,)])
            q = (parameters_addition if me > j else parameters_subtraction)(q, mask)
        return parameters_mod(q, MOD)

    t_quant, _ = _time(lambda: quantize(x, CLIP, QRANGE))
    t_masked, masked_vec = _time(masked)
    survivors, dropped = list(range(drops, n)), list(range(drops))

    def unmask():
        total = [masked_vec[0].copy()]
        for _ in survivors:
            secret = combine_shares(b_sh[:t])
            total = parameters_subtraction(total, pseudo_rand_gen(secret, MOD, [(d,)]))
        for gone in dropped:
            sk = bytes_to_private_key(combine_shares(s_sh[:t]))
            for j in survivors:
                k = generate_shared_key(sk, bytes_to_public_key(pks[j][0]))
                mask = pseudo_rand_gen(k, MOD, [(d,)])
                total = (parameters_addition if gone > j else parameters_subtraction)(total, mask)
        return parameters_mod(total, MOD)

    t_unmask, _ = _time(unmask)
    return {
        "n": n, "d": d, "drops": drops, "advertise": t_adv, "share": t_share,
        "quantize": t_quant, "masked": t_masked, "unmask": t_unmask,
    }


if __name__ == "__main__":
    configs = json.loads(sys.argv[1])
    run(4, 1000, 1, 3)  # warm up: first calls pay for imports and thread pools
    print(json.dumps([run(c["n"], c["d"], c["drops"], c["t"]) for c in configs]))
