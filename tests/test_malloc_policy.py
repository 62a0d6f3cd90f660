"""The CPU allocator policy (``keep_freed_memory``), an opt-in of the caller: what it changes (page faults of a
repeated large allocation), its override, and that nothing in the package applies it — neither ``import
idir_fast``, ``register()`` nor the ``idir-fast`` command (their steps and field writing reuse buffers instead).
Each case runs in a fresh process: glibc's malloc settings are per process and cannot be undone."""
import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _python(code: str, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "IDIR_FAST_MALLOC"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# Allocate, fill and free a 64 MiB tensor 24 times after 2 warm-up rounds: minor page faults. With memory kept
# they stop growing with the count (at most about one buffer's pages while the heap settles); without, every round
# maps the buffer afresh.
FAULTS = r'''
import json, resource, torch
from idir_fast.environment import keep_freed_memory, malloc_policy, environment
applied = keep_freed_memory() if KEEP else False
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):  # warm-up: the first reuse can still map pages
    torch.ones(16 * 2 ** 20).add_(1)
f0 = faults()
for _ in range(24):
    torch.ones(16 * 2 ** 20).add_(1)  # freed at the end of the statement
n = faults() - f0
print(json.dumps({"applied": applied, "policy": malloc_policy(), "recorded": environment()["malloc"], "faults": n}))
'''


@pytest.mark.skipif(not GLIBC, reason="the policy is a glibc mallopt; elsewhere it is a documented no-op")
def test_keeping_freed_memory_stops_the_page_faults_of_repeated_allocations():
    system = _python("KEEP = False\n" + FAULTS)
    keep = _python("KEEP = True\n" + FAULTS)
    assert (system["applied"], system["policy"], system["recorded"]) == (False, "system", "system")
    assert (keep["applied"], keep["policy"], keep["recorded"]) == (True, "keep-freed", "keep-freed")
    buffer_pages = 16 * 2 ** 20 * 4 // 4096
    assert system["faults"] > 24 * buffer_pages // 2, system  # 24 × 64 MiB of fresh pages ≈ 393,000 faults
    assert keep["faults"] < 1.5 * buffer_pages, (keep, system)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_environment_variable_overrides_the_request():
    off = _python("KEEP = True\n" + FAULTS, IDIR_FAST_MALLOC="system")
    assert (off["applied"], off["policy"]) == (False, "system")
    on = _python("import json\nfrom idir_fast.environment import keep_freed_memory, malloc_policy\n"
                 "print(json.dumps({'applied': keep_freed_memory(keep=False), 'policy': malloc_policy()}))",
                 IDIR_FAST_MALLOC="keep")
    assert on == {"applied": True, "policy": "keep-freed"}


def test_a_bad_environment_value_is_named():
    code = ("import json\nfrom idir_fast.environment import keep_freed_memory\n"
            "try:\n    keep_freed_memory()\nexcept ValueError as e:\n    print(json.dumps({'error': str(e)}))\n")
    err = _python(code, IDIR_FAST_MALLOC="sometimes")["error"]
    assert "IDIR_FAST_MALLOC" in err and "'sometimes'" in err and "keep" in err


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_neither_the_command_nor_register_applies_it(tmp_path):
    code = ("import json, idir_fast\nfrom idir_fast.environment import malloc_policy\n"
            "from idir_fast.data import phantom_pair\nfrom idir_fast.apps.cli import main\n"
            "p = phantom_pair(size=(20, 18, 16), spacing=(8.0, 8.0, 8.0), num_landmarks=10, seed=2)\n"
            "reg = idir_fast.register(p.fixed, p.moving, p.mask, hidden=(8, 8), epochs=3, batch_size=64, "
            "device='cpu', progress=False)\n"
            "after_register = malloc_policy()\n"
            f"status = main(['register', {str(tmp_path / 'no.nii.gz')!r}, {str(tmp_path / 'no2.nii.gz')!r}, "
            f"'--out', {str(tmp_path / 'out_')!r}])\n"
            "print(json.dumps({'after_register': after_register, 'after_command': malloc_policy(), "
            "'report': reg.run['versions']['malloc'], 'status': status}))")
    got = _python(code)
    assert (got["after_register"], got["after_command"], got["report"]) == ("system", "system", "system")
    assert got["status"] == 2  # the missing files are refused
