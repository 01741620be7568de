"""``ebru`` as a process: a closed stdout pipe and Ctrl-C during start-up (real signals, real pipes)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes and signals")


def closed_pipe_run(*argv: str) -> tuple[int, str]:
    """Run ``python -m ebru argv`` with stdout a pipe whose reading end is already closed."""
    read, write = os.pipe()
    os.close(read)  # every write to the pipe now fails with EPIPE, as after `| head -1` has exited
    try:
        proc = subprocess.run([sys.executable, "-m", "ebru", *argv], stdout=write, stderr=subprocess.PIPE,
                              timeout=120, env={**os.environ, "EBRU_DEBUG": ""})
    finally:
        os.close(write)
    return proc.returncode, proc.stderr.decode()


@pytest.mark.parametrize("argv", [["samplers"], ["--help"], ["text", "generate", "--help"]])
def test_a_closed_pipe_exits_quietly_with_141(argv):
    code, err = closed_pipe_run(*argv)
    assert (code, err) == (141, "")  # 128 + SIGPIPE, like `seq 1000 | head -1`; no "Broken pipe" line


# A meta-path finder that stalls the import of one module: a slow start-up that a test can interrupt.
SLOW_START = textwrap.dedent("""
    import runpy, sys, time

    class Stall:
        def find_spec(self, name, path=None, target=None):
            if name == {module!r}:
                sys.stderr.write("stalled\\n")
                sys.stderr.flush()
                time.sleep(120)
            return None

    sys.meta_path.insert(0, Stall())
    sys.argv = ["ebru", "samplers"]
    runpy.run_module("ebru", run_name="__main__", alter_sys=True)
""")


@pytest.mark.parametrize("module", ["torch", "ebru.cli.trust"])  # importing torch; building the parser
def test_ctrl_c_during_start_up_is_one_line_and_130(module):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_START.format(module=module)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "EBRU_DEBUG": ""})
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        assert ready and proc.stderr.readline() == b"stalled\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err.decode()) == (130, b"", "ebru: interrupted\n")
