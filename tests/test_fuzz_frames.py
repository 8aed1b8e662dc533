"""Arbitrary bytes through the kernel's parser: nothing crashes, and for
every frame the kernel's input result and class equal the Python twin's."""
import os

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

from xdpnn.loader import compile  # noqa: E402
from xdpnn.loader.testrun import Runner, expected  # noqa: E402
from xdpnn.trainer.model import random_model  # noqa: E402
from xdpnn.traffic import packets  # noqa: E402

PORT = 9595


def mutants(rng, n):
    """Valid frames with random bytes overwritten, cut or appended, plus noise."""
    base = packets.random_frames(rng, 50) + [
        packets.request(rng.integers(0, 256, 13, dtype=np.uint8).tobytes(), PORT)
        for _ in range(50)]
    out = []
    for i in range(n):
        f = bytearray(base[i % len(base)])
        kind = i % 4
        if kind == 0:  # overwrite a few header bytes
            for _ in range(int(rng.integers(1, 4))):
                f[int(rng.integers(0, min(len(f), 64)))] = int(rng.integers(0, 256))
        elif kind == 1:  # cut anywhere
            f = f[:int(rng.integers(0, len(f) + 1))]
        elif kind == 2:  # garbage appended
            f += rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
        else:  # pure noise, sometimes with an IPv4 EtherType
            f = bytearray(rng.integers(0, 256, int(rng.integers(0, 120)), dtype=np.uint8))
            if len(f) >= 15 and rng.random() < 0.7:
                f[12:15] = b"\x08\x00\x45"
        out.append(bytes(f))
    return out


@pytest.mark.parametrize("mode,sizes", [("payload", [100, 16, 4]), ("headers", [256, 32, 8])])
def test_mutated_and_random_frames_follow_the_twin(mode, sizes):
    model = random_model(sizes, seed=11, mode=mode, port=PORT)
    prog = compile.build(model)
    try:
        runner = Runner(prog, PORT)
        seen = set()
        for frame in mutants(np.random.default_rng(3), 3000):
            k = runner.run(frame) if len(frame) >= 14 else None
            if k is None:  # BPF_PROG_TEST_RUN refuses frames shorter than Ethernet
                continue
            result, cls, _ = expected(model, frame, PORT)
            assert (k.result, k.cls) == (result, cls), frame.hex()
            seen.add(result)
    finally:
        prog.close()
    # The mutations reach most of the parser's verdicts.
    assert {"classified", "truncated", "malformed", "fragment", "non_ip"} <= seen
