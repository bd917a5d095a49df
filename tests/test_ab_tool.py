"""tools/ab.py: the side-by-side comparison harness of BENCHMARKS.md runs each build in its
own process, checks that the process loaded that build, and reports medians and ratios."""

import os
import subprocess
import sys

import pygpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AB = os.path.join(ROOT, "tools", "ab.py")
BUILD = os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__)))  # the folder holding this pygpt
MODEL = os.path.join(os.path.dirname(os.path.abspath(pygpt.__file__)), "default_model")


def run(*args):
    return subprocess.run([sys.executable, AB, *args], capture_output=True, text=True, timeout=300)


def test_two_builds_alternate_and_report_ratios():
    p = run("decode", MODEL, "--builds", f"a={BUILD},b={BUILD}", "--rounds", "2", "--runs", "1", "--new", "4",
            "--prompt", "8", "--threads", "1")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["round 1", "round 2", "a", "b"]
    assert "(x1.000)" in lines[2] and "tok/s" in lines[3]


def test_batch_and_prefill_modes():
    for what in ("batch", "prefill"):
        p = run(what, MODEL, "--builds", f"only={BUILD}", "--rounds", "1", "--runs", "1", "--new", "2",
                "--prompt", "8", "--batch", "2", "--threads", "1")
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines()[-1].startswith("only: median ")


def test_a_folder_without_pygpt_is_refused(tmp_path):
    p = run("decode", MODEL, "--builds", f"x={tmp_path}")
    assert p.returncode == 2 and "pygpt package" in p.stderr


def test_a_process_that_loads_another_pygpt_is_an_error(tmp_path):
    # a folder with a pygpt package that is not importable as a build: the worker's import
    # falls through to the installed pygpt, which the harness must refuse to measure
    (tmp_path / "pygpt").mkdir()
    p = run("decode", MODEL, "--builds", f"x={tmp_path}", "--rounds", "1", "--runs", "1", "--new", "2")
    assert p.returncode == 1 and "not the build in" in p.stderr
