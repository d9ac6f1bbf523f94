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

Every other byte passes through unchanged, and as soon as it can: a partial line (a
progress bar's carriage-return update) is held only while it could still become one of
those lines.
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
HEADER = re.compile(rb"[WE]\d{4} [\d:.]+ +\d+ ([\w.-]+):\d+\] ")
KNOWN_SOURCES = (b"pjrt_executable.cc", b"cpu_aot_loader.cc")
HOLD_LIMIT = 1 << 20
"""A partial line longer than this is passed on, whatever it may still become."""


def could_be_known(partial: bytes) -> bool:
    """Whether a line that starts with `partial` (no newline yet) could be a KNOWN line."""
    digits = partial[1:5]
    if partial[:1] not in (b"W", b"E") or (digits and not digits.isdigit()):
        return False
    if len(partial) > HOLD_LIMIT:
        return False
    header = HEADER.match(partial)
    if header is None:
        # Until the header is complete, it may still name a known source.
        return b"] " not in partial
    return header.group(1) in KNOWN_SOURCES


def main() -> None:
    # The filter lives in its own session (no terminal signals reach it): it must outlive
    # the parent, to print what the parent wrote last.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.fileno()

    def write(data: bytes) -> None:
        while data:
            data = data[os.write(out, data) :]

    pending = b""  # the start of a line held back
    passing = False  # the current line is being passed on as it comes
    while chunk := os.read(0, 1 << 16):
        while chunk:
            end = chunk.find(b"\n")
            piece, chunk = (chunk, b"") if end < 0 else (chunk[: end + 1], chunk[end + 1 :])
            if passing:
                write(piece)
                passing = end < 0
                continue
            line = pending + piece
            pending = b""
            if end >= 0:
                if not KNOWN.fullmatch(line):
                    write(line)
            elif could_be_known(line):
                pending = line
            else:
                write(line)
                passing = True
    write(pending)


if __name__ == "__main__":
    main()
