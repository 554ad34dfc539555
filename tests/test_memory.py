"""rt.keep_memory: glibc's malloc keeps the buffers XLA frees and JAX runs CPU calls on
the calling thread, so a call does not fault its temporaries in again; it refuses,
changing nothing, once JAX's backend runs."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from kgen.runtime import memory

pytestmark = pytest.mark.skipif(
    memory._glibc() is None, reason="keep_memory sets glibc's malloc; this C library is not glibc"
)

# A 38.5 MB temporary (8 x 112 x 112 x 96 float32, above glibc's 32 MiB mmap ceiling)
# between two XLA ops that do not fuse; minor page faults counted over 5 calls.
_FAULTS = textwrap.dedent(
    """
    import json, resource, sys
    import jax
    if sys.argv[1] == "keep":
        from kgen.runtime import keep_memory
        assert keep_memory() is True
        jax.numpy.ones(1).block_until_ready()
        assert keep_memory() is True  # a later call: already in effect, no error
        assert jax.config.values["jax_cpu_enable_async_dispatch"] is False
    import jax.numpy as jnp
    x = jnp.ones((8, 112, 112, 96))
    w = jnp.ones((96, 4))
    f = jax.jit(lambda x: jnp.sum(jnp.tanh(x).reshape(-1, 96) @ w))
    for _ in range(3):
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        f(x).block_until_ready()
    print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5))
    """
)


def _faults_per_call(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_memory_stops_the_page_faults_of_large_temporaries():
    plain = _faults_per_call("plain")
    if plain < 1000:  # e.g. transparent huge pages always on: nothing to tell apart
        pytest.skip(f"only {plain:.0f} faults per call without it on this kernel")
    kept = _faults_per_call("keep")
    assert kept < plain / 20, (plain, kept)


def test_keep_memory_after_the_backend_started_raises_and_changes_nothing(monkeypatch):
    jnp.ones(1).block_until_ready()  # the backend runs
    calls = []
    dispatch = jax.config.values["jax_cpu_enable_async_dispatch"]
    monkeypatch.setattr(memory, "_kept", False)
    monkeypatch.setattr(memory, "_glibc", lambda: type("C", (), {"mallopt": calls.append})())
    with pytest.raises(RuntimeError, match="before JAX starts its backend"):
        memory.keep_memory()
    assert calls == [] and jax.config.values["jax_cpu_enable_async_dispatch"] == dispatch


def test_keep_memory_without_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(memory, "_kept", False)
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.keep_memory() is False
