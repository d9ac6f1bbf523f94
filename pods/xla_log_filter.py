"""Copies its stdin to its stdout, less the XLA log lines known to be false here.

Run as its own process by `pods.runtime.filter_known_xla_logs`, which points the parent's
file descriptor 2 at this process's stdin: XLA's C++ logging writes there directly, past
Python's `sys.stderr`. A separate process, not a thread, so that whatever the parent wrote
before it crashed (a fatal XLA line, a traceback, faulthandler's dump) is still drained and
printed after the parent is gone. It imports nothing outside the standard library (it runs
with `python -S`), and it exits when the last writer closes the pipe.

Dropped, and only these (see the README's Development section for why each is false):
- `W... pjrt_executable.cc:...] Assume version compatibility. PjRt-IFRT does not track XLA
  executable versions.`: logged on every persistent-cache hit; JAX's cache key holds the
  jaxlib version and the platform version, so an entry is only ever loaded by the XLA that
  wrote it;
- `E... cpu_aot_loader.cc:...] Loading XLA:CPU AOT result. Target machine feature
  +prefer-no-gather (or +prefer-no-scatter) is not supported on the host machine. ...`:
  XLA adds those two LLVM tuning flags to the compile features of every AVX-512 host, and no
  host lists them among its CPU features, so the check fails on every hit (jax-ml/jax#38445).
  A line naming any other feature (a real instruction set the host lacks) is kept.

Every other byte passes through unchanged, and as soon as it can: a known line is recognized
wherever it starts (XLA's line may follow a progress bar's carriage-return update on the same
line), and only a tail that could still begin one is held back.
"""

import os
import re
import signal
import sys

KNOWN = re.compile(
    rb"[WE]\d{4} [\d:.]+ +\d+ (?:"
    rb"pjrt_executable\.cc:\d+\] Assume version compatibility\. PjRt-IFRT does not track XLA "
    rb"executable versions\.\s*"
    rb"|cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. Target machine feature "
    rb"\+prefer-no-(?:gather|scatter) is not +supported on the host machine\..*"
    rb")",
    re.DOTALL,
)
"""A whole known line, from its log header to its newline."""
HEADER = re.compile(rb"[WE]\d{4} [\d:.]+ +\d+ (?:pjrt_executable|cpu_aot_loader)\.cc:\d+\] ")
"""The start of a line that may be a known one."""
PARTIAL_HEADER = re.compile(
    rb"[WE](?:\d{0,3}|\d{4}(?: (?:[\d:.]*|[\d:.]+ +(?:\d*|\d+ (?:[\w.-]*|[\w.-]+:\d*\]?))))?)"
)
"""What the first bytes of HEADER may be, up to its last character."""
HOLD_LIMIT = 1 << 20
"""A line longer than this is passed on, whatever it may still become."""


def drop_known(buffer: bytes) -> tuple[bytes, bytes]:
    """(what to write now, what to hold until more comes) for the bytes read so far, known
    lines left out."""
    out = []
    while (header := HEADER.search(buffer)) is not None:
        out.append(buffer[: header.start()])
        end = buffer.find(b"\n", header.start())
        if end < 0:
            if len(buffer) - header.start() > HOLD_LIMIT:
                return b"".join(out) + buffer[header.start() :], b""
            return b"".join(out), buffer[header.start() :]
        line = buffer[header.start() : end + 1]
        if not KNOWN.fullmatch(line):
            out.append(line)
        buffer = buffer[end + 1 :]
    # No header: hold back a tail that could begin one, pass on the rest.
    for start in range(max(0, len(buffer) - 128), len(buffer)):
        if buffer[start : start + 1] in (b"W", b"E") and PARTIAL_HEADER.fullmatch(buffer, start):
            return b"".join(out) + buffer[:start], buffer[start:]
    return b"".join(out) + buffer, b""


def main() -> None:
    # The filter lives in its own session (no terminal signals reach it): it must outlive
    # the parent, to print what the parent wrote last.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.fileno()

    def write(data: bytes) -> None:
        while data:
            data = data[os.write(out, data) :]

    held = b""
    while chunk := os.read(0, 1 << 16):
        ready, held = drop_known(held + chunk)
        write(ready)
    write(held)


if __name__ == "__main__":
    main()
