"""The simulator randomness of trial j, independent of which process runs it.

LIBERO's `env.seed(s)` is `np.random.seed(s)`, and every `env.reset()` (a hard reset: the MuJoCo model
is rebuilt) draws from the global numpy RNG to place the fixtures (stove, cabinet, rack...), which the
init state does not cover; `set_init_state` and `step` draw nothing. In the official loop one process
seeds the env once per task and then runs trials 0, 1, 2, ... in order, so the RNG state before the
reset of trial j is S_j = seed(env_seed) followed by j resets. `ResetRngChain` reproduces S_j for any
j: from memory, from a cache file written by another worker or an earlier (killed) run, or by
fast-forwarding with bare resets from the nearest known state. `ChainedEnv` applies it around reset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RngState = tuple  # numpy's legacy ('MT19937', keys, pos, has_gauss, cached_gaussian)


def _same(a: RngState, b: RngState) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])


class ResetRngChain:
    def __init__(self, env_seed: int, cache_dir: Path | None = None):
        rng = np.random.RandomState(env_seed)
        self.states: dict[int, RngState] = {0: rng.get_state()}
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.fast_forwards = 0  # bare resets spent (for the logs and the benchmark)

    def _file(self, j: int) -> Path | None:
        return self.cache_dir / f"{j:04d}.npz" if self.cache_dir else None

    def _load(self, j: int) -> RngState | None:
        f = self._file(j)
        if f is None or not f.exists():
            return None
        try:
            with np.load(f) as z:
                return ("MT19937", z["keys"].copy(), int(z["pos"]), int(z["has_gauss"]), float(z["cached"]))
        except Exception as err:  # noqa: BLE001 - a damaged cache file is recomputed
            log.warning("ignoring unreadable RNG cache %s (%s)", f, err)
            return None

    def put(self, j: int, state: RngState) -> None:
        known = self.states.get(j) or self._load(j)
        if known is not None and not _same(known, state):
            log.warning("simulator RNG state before trial %d differs from the recorded one (%s): "
                        "resets are not deterministic here", j, self.cache_dir)
        self.states[j] = state
        f = self._file(j)
        if f is not None and not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f".{f.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=state[1], pos=state[2], has_gauss=state[3], cached=state[4])
            os.replace(tmp, f)

    def state_for(self, j: int, bare_reset) -> RngState:
        """S_j; `bare_reset()` is one env reset (used only to fast-forward)."""
        if j not in self.states:
            cached = self._load(j)
            if cached is not None:
                self.states[j] = cached
                return cached
            start = max(k for k in self.states if k < j)
            log.info("fast-forwarding the simulator RNG from trial %d to %d (%d resets)", start, j, j - start)
            np.random.set_state(self.states[start])
            for k in range(start, j):
                bare_reset()
                self.fast_forwards += 1
                self.put(k + 1, np.random.get_state())
        return self.states[j]


class ChainedEnv:
    """Wraps an env so that `reset(trial)` starts from S_trial and records S_trial+1."""

    def __init__(self, env, chain: ResetRngChain):
        self.env = env
        self.chain = chain

    def __getattr__(self, name):
        return getattr(self.env, name)

    def _bare_reset(self) -> None:
        inner = getattr(self.env, "env", None)
        if inner is not None and hasattr(inner, "reset"):
            inner.reset()  # LIBERO's ControlEnv.reset (retries RandomizationError, as the official loop)
        else:
            self.env.reset(0, wait_steps=0)

    def reset(self, trial: int, wait_steps: int = 10):
        np.random.set_state(self.chain.state_for(trial, self._bare_reset))
        obs = self.env.reset(trial, wait_steps=wait_steps)
        self.chain.put(trial + 1, np.random.get_state())  # set_init_state and steps draw nothing
        return obs

    def step(self, action):
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()
