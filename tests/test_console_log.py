"""The local copy of the console (start.py --out): what every process prints reaches both the console and the
log; a copy that cannot be set up leaves the console as it was."""
import subprocess
import sys
import textwrap

from tests.helpers import HANG_LIMIT


def test_the_console_and_its_children_are_copied_and_a_failed_set_up_changes_nothing(tmp_path):
    log = tmp_path / "ymir-executor-out.log"
    script = textwrap.dedent(f"""
        import os, sys
        from ymir.console_log import ConsoleCopy
        real_pipe, calls = os.pipe, []
        def second_pipe_fails():
            calls.append(1)
            if len(calls) == 2:
                raise OSError(24, "Too many open files")
            return real_pipe()
        os.pipe = second_pipe_fails
        try:
            with ConsoleCopy({str(log)!r}):
                print("never", flush=True)
        except OSError:
            print("set-up refused", flush=True)
        print("console intact", flush=True)
        os.pipe = real_pipe
        with ConsoleCopy({str(log)!r}):
            print("copied", flush=True)
            print("an error line", file=sys.stderr, flush=True)
            os.system("echo from a child")
        print("after", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 0, proc.stdout
    console = proc.stdout.splitlines()
    assert [line for line in console if line != "an error line"] == [
        "set-up refused", "console intact", "copied", "from a child", "after"] and "an error line" in console
    assert sorted(log.read_text().splitlines()) == ["an error line", "copied", "from a child"]


def test_lines_of_stdout_and_stderr_never_cut_into_each_other(tmp_path):
    """Two threads write lines to fds 1 and 2 in pieces (as an unbuffered print writes its text and its newline
    apart): the console and the copy hold every line whole."""
    log = tmp_path / "ymir-executor-out.log"
    script = textwrap.dedent(f"""
        import os, threading
        from ymir.console_log import ConsoleCopy

        def write(fd, name):
            for i in range(300):
                os.write(fd, name.encode())
                os.write(fd, f"-{{i}}\\n".encode())

        with ConsoleCopy({str(log)!r}):
            threads = [threading.Thread(target=write, args=(fd, name)) for fd, name in ((1, "out"), (2, "err"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    """)
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 0, proc.stdout
    expected = sorted(f"{name}-{i}" for name in ("out", "err") for i in range(300))
    assert sorted(proc.stdout.splitlines()) == expected
    assert sorted(log.read_text().splitlines()) == expected
