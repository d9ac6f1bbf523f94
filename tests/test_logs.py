"""The filter of XLA's known false log lines (`pods.runtime.filter_known_xla_logs`): it drops
exactly those, passes everything else as it comes, and loses nothing when the process dies."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADER = "W1201 08:48:19.798108    3868 "
CACHE_HIT = f"{HEADER}pjrt_executable.cc:642] Assume version compatibility. PjRt-IFRT does not track XLA executable versions.\n"
FEATURES = ",".join(["+avx2", "+avx512f", "+prefer-no-gather", "+prefer-no-scatter"] * 400)
AOT = (
    "E0612 10:00:00.000001   99 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. Target "
    "machine feature {feature} is not  supported on the host machine. Machine type used for "
    "XLA:CPU compilation doesn't match the machine type for execution. Compile machine "
    f"features: [{FEATURES}] vs host machine features: [avx2,avx512f]. This could lead to "
    "execution errors such as SIGILL.\n"
)


def run_writer(body: str, environment: dict | None = None) -> subprocess.CompletedProcess:
    """A process that installs the filter, then runs `body` (with `write(text)` writing to
    file descriptor 2 directly, as XLA's C++ logging does)."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from pods.runtime import filter_known_xla_logs

        filter_known_xla_logs()

        def write(text, pause=0.0):
            os.write(2, text.encode())
            time.sleep(pause)
        """
    ) + textwrap.dedent(body)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(environment or {})}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=env, timeout=120
    )
    # Decoded by hand: text mode would turn a progress bar's \r into \n.
    result.stderr = result.stderr.decode()
    return result


def test_known_lines_are_dropped_and_every_other_byte_kept():
    real_isa = AOT.format(feature="+avx512f")
    result = run_writer(
        f"""
        write({CACHE_HIT[:40]!r}, 0.05)  # a line may come in pieces
        write({CACHE_HIT[40:]!r})
        write({AOT.format(feature="+prefer-no-gather")!r})
        write({AOT.format(feature="+prefer-no-scatter")!r})
        write({real_isa!r})
        sys.stderr.write("epoch 1/2\\r"); sys.stderr.flush()
        write({CACHE_HIT!r})  # on the progress bar's line
        write("W is for warning, not a log header\\n")
        write({HEADER + "other.cc:1] an XLA warning of another kind"!r} + "\\n")
        print("a traceback would go here", file=sys.stderr)
        """
    )
    assert result.returncode == 0
    assert result.stderr == (
        real_isa  # a feature the host lacks could really crash: it stays
        + "epoch 1/2\r"
        + "W is for warning, not a log header\n"
        + f"{HEADER}other.cc:1] an XLA warning of another kind\n"
        + "a traceback would go here\n"
    )


def test_what_was_written_before_a_crash_is_still_printed():
    result = run_writer(
        f"""
        write({CACHE_HIT!r})
        write("F0000 00:00:00.000000 1 x.cc:1] Check failed: the last words\\n")
        os.abort()
        """
    )
    assert result.returncode < 0  # killed by SIGABRT
    assert "Check failed: the last words" in result.stderr
    assert "Assume version" not in result.stderr


def test_pods_xla_logs_all_leaves_stderr_alone():
    result = run_writer(f"write({CACHE_HIT!r})", {"PODS_XLA_LOGS": "all"})
    assert result.stderr == CACHE_HIT


def test_a_known_line_is_dropped_wherever_it_starts_and_however_it_is_cut():
    from pods.xla_log_filter import drop_known

    other = HEADER + "other.cc:1] kept\n"
    stream = (
        "pods cartpole:   0%|     | 0/20 [00:00<?, ?it/s]"  # a progress bar's partial line
        + CACHE_HIT
        + "\rpods cartpole:   5%|     | 1/20"
        + AOT.format(feature="+prefer-no-scatter")
        + "E=mc2\n"
        + other
    ).encode()
    expected = (
        "pods cartpole:   0%|     | 0/20 [00:00<?, ?it/s]\rpods cartpole:   5%|     | 1/20"
        + "E=mc2\n"
        + other
    ).encode()
    for size in (1, 3, 64, 4096, len(stream)):
        written, held = b"", b""
        for start in range(0, len(stream), size):
            ready, held = drop_known(held + stream[start : start + size])
            written += ready
        assert written + held == expected, size


# Every command-line entry point that runs XLA in its own process installs the filter: a line
# of XLA's form written to file descriptor 2 once the entry point has run (as XLA's C++
# logging writes it, past Python's sys.stderr) must not come out. Not every CPU prints the
# real lines, so the test writes one itself. `--help` suffices: the filter goes in before the
# arguments are parsed.
FILTERING = [
    ("module", "experiments.deploy", ["--help"]),
    ("module", "paper_figures.make", ["--help"]),
    *(
        ("path", f"benchmarks/{name}.py", ["--help"])
        for name in (
            "brax_baselines",
            "classical_swingup",
            "dynamics_models",
            "gauss_newton",
            "gpu_scale",
            "gradient_norms",
            "model_refits",
            "mujoco_engine",
            "pods_epoch",
            "pods_swingup_curve",
            "rollout_throughput",
            "sysid",
            "trajectory_optimizer",
            "warm_start",
        )
    ),
    # Hydra's entry point: a refused value still runs its main, which installs the filter.
    ("module", "experiments.train", ["algo.name=no_such_algo", "hydra.run.dir={tmp}/run"]),
]
# These run no XLA in their own process (their children, `experiments.train` and the
# benchmark's per-method processes, filter their own): XLA is never loaded there.
WITHOUT_XLA = [
    ("module", "paper_figures.table", ["{tmp}"]),
    ("path", "benchmarks/seed_batch.py", ["--help"]),
    ("path", "benchmarks/seed_spread.py", ["--help"]),
    ("path", "benchmarks/time_to_solve.py", ["--help"]),
]
RUN_ENTRY_POINTS = """
import os, runpy, sys

for kind, target, args in ENTRY_POINTS:
    os.write(2, f"begin {target}\\n".encode())
    sys.argv = [target, *args]
    try:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
    except SystemExit:
        pass
    os.write(2, LINE.encode())
    os.write(2, f"end {target}\\n".encode())
    if "pods.runtime" in sys.modules:  # imported by the entry point, never here
        sys.modules["pods.runtime"].stop_filtering_xla_logs()
    print(f"{target} xla={'jaxlib' in sys.modules}")
"""


def run_entry_points(entry_points, tmp_path) -> subprocess.CompletedProcess:
    entry_points = [(k, t, [a.format(tmp=tmp_path) for a in args]) for k, t, args in entry_points]
    script = (
        f"ENTRY_POINTS = {entry_points!r}\nLINE = {AOT.format(feature='+prefer-no-gather')!r}\n"
        + RUN_ENTRY_POINTS
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    result.stderr, result.stdout = result.stderr.decode(), result.stdout.decode()
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_every_entry_point_that_runs_xla_drops_its_false_lines(tmp_path):
    result = run_entry_points(FILTERING, tmp_path)
    for _, target, _ in FILTERING:
        begin, end = f"begin {target}\n", f"end {target}\n"
        assert begin in result.stderr and end in result.stderr, target
        between = result.stderr[result.stderr.index(begin) : result.stderr.index(end)]
        assert "SIGILL" not in between, f"{target} prints XLA's false lines"
    assert "algo.name" in result.stderr  # the refused run's own line still comes through


def test_the_entry_points_that_do_not_filter_never_load_xla(tmp_path):
    result = run_entry_points(WITHOUT_XLA, tmp_path)
    for _, target, _ in WITHOUT_XLA:
        assert f"{target} xla=False" in result.stdout, result.stdout
