"""The opt-in persistent compilation cache (`kltrust.compile_cache`, ``--compilation_cache``).

What is checked: which directory each setting names; bad settings refused in one line; and, in two
fresh processes (JAX sets its cache up once per process), that the second loads the first's
compiled program from disk instead of compiling it (JAX's own cache-hit event) and computes
bit-identical numbers.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from kltrust import compile_cache
from kltrust.errors import ConfigError
import subprocs

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A program with a scan, a reduction and a transcendental: enough XLA work that a recompile would
# be a separate, observable event; the output is printed exactly (float.hex) to compare bits.
PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from kltrust import compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
compile_cache.enable(sys.argv[1])
def f(x):
    def body(c, _):
        c = jnp.tanh(c @ c.T) + 0.1 * jnp.sin(c)
        return c, c.sum()
    return jax.lax.scan(body, x, None, length=5)[1]
x = jax.random.normal(jax.random.PRNGKey(0), (16, 16))
out = jax.jit(f)(x)
print(json.dumps({"hits": len(hits), "out": [float(v).hex() for v in out.tolist()]}))
"""


def test_settings_name_their_directories(tmp_path, monkeypatch):
    assert compile_cache.resolve("off") is None
    monkeypatch.setenv("KLTRUST_CACHE", str(tmp_path / "cache"))
    assert compile_cache.resolve("user") == tmp_path / "cache" / "xla"
    monkeypatch.delenv("KLTRUST_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.resolve("user") == tmp_path / "home" / ".cache" / "kltrust" / "xla"
    assert compile_cache.resolve(str(tmp_path / "new")) == tmp_path / "new"  # made by `enable`


def test_bad_settings_are_one_line_errors(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"^--compilation_cache='.*a_file': exists and is not a "
                                          r"directory; must be 'off', 'user' or a directory$"):
        compile_cache.resolve(str(a_file))
    with pytest.raises(ConfigError, match=r"^--compilation_cache='': must be"):
        compile_cache.resolve(" ")
    assert a_file.read_text() == "x"  # nothing written over


def test_a_second_process_loads_the_program_and_computes_the_same_bits(tmp_path):
    cache = tmp_path / "xla"

    def run() -> dict:
        result = subprocs.run([sys.executable, "-c", PROGRAM, str(cache)], cwd=ROOT, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    first = run()
    assert first["hits"] == 0
    entries = sorted(p.name for p in cache.iterdir())
    assert entries  # the compiled programs were written
    second = run()
    assert second["hits"] >= 1  # loaded, not compiled
    assert second["out"] == first["out"]
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new had to be compiled
