"""The MuJoCo-GL guard: a LiberoEnv built in a process that holds torch first loads torch's compiler
stack (torch._dynamo; triton/LLVM loaded after an EGL context segfaults); without torch nothing is
imported. Each case runs in a fresh interpreter, so the state of the test process does not matter."""

import subprocess
import sys

import pytest


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_guard_imports_nothing_without_torch():
    _run("import sys\n"
         "from worldvla.envs.libero import load_compiler_before_gl\n"
         "load_compiler_before_gl()\n"
         "assert 'torch' not in sys.modules, 'the guard imported torch'\n")


def test_guard_loads_the_compiler_when_torch_is_imported():
    _run("import sys, torch\n"
         "assert 'torch._dynamo' not in sys.modules\n"
         "from worldvla.envs.libero import load_compiler_before_gl\n"
         "load_compiler_before_gl()\n"
         "assert 'torch._dynamo' in sys.modules\n")


def test_libero_env_runs_the_guard_before_the_simulator():
    """A bad task id fails after the suite lookup but before any simulator: the guard ran first."""
    pytest.importorskip("libero.libero", reason="LIBERO not installed (pip install -e '.[libero]')")
    _run("import sys, torch\n"
         "assert 'torch._dynamo' not in sys.modules\n"
         "from worldvla.envs.libero import LiberoEnv\n"
         "try:\n"
         "    LiberoEnv('libero_goal', 10**6)\n"
         "except IndexError:\n"
         "    pass\n"
         "else:\n"
         "    raise AssertionError('task 10**6 accepted')\n"
         "assert 'torch._dynamo' in sys.modules, 'LiberoEnv did not load the compiler stack'\n")
