"""`dsa-runtime evaluate`: its parsing and defaults, then the real harnesses (SGLang 0.5.23's
few_shot_gsm8k, sgl-eval) against a simulator process that answers from a book the test writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsa_runtime import evaluate as E
from dsa_runtime.errors import ExitCode
from dsa_runtime.termination import MAX_BYTES
from tests.runtime.conftest import REPO, dsa, free_port

# ---- the command line of each suite -------------------------------------------------------------


def test_unset_options_are_the_usage_pages_commands():
    gsm8k = E.harness_argv(E.resolve("gsm8k", "h", 30000), "py", "/o")
    assert gsm8k == [
        "py", "-m", "sglang.test.few_shot_gsm8k", "--host", "h", "--port", "30000",
        "--num-shots", "8", "--num-questions", "1319", "--parallel", "1319", "--max-new-tokens", "512",
    ]  # fmt: skip
    gpqa = E.harness_argv(E.resolve("gpqa-diamond", "h", 30000), "py", "/o")
    assert gpqa == [
        "py", "-m", "sgl_eval.cli", "run", "gpqa", "--base-url", "http://h:30000/v1", "--num-examples",
        "198", "--n-repeats", "8", "--max-tokens", "120000", "--out-dir", "/o", "--thinking",
    ]  # fmt: skip
    aime = E.harness_argv(E.resolve("aime25", "h", 30000), "py", "/o")
    assert aime == [
        "py", "-m", "sgl_eval.cli", "run", "aime25", "--base-url", "http://h:30000/v1",
        "--n-repeats", "4", "--max-tokens", "64000", "--temperature", "1.0", "--top-p", "0.95",
        "--out-dir", "/o", "--thinking",
    ]  # fmt: skip


def test_given_options_override_the_suite():
    s = E.resolve(
        "aime25",
        "::1",
        8000,
        model="m",
        repeats=2,
        thinking=False,
        questions=5,
        parallel=3,
        data_path="d.jsonl",
    )
    argv = E.harness_argv(s, "py", "/o")
    assert argv[argv.index("--base-url") + 1] == "http://[::1]:8000/v1"
    for flag, value in (
        ("--model", "m"),
        ("--n-repeats", "2"),
        ("--num-examples", "5"),
        ("--num-threads", "3"),
    ):
        assert argv[argv.index(flag) + 1] == value
    assert argv[argv.index("--from-dataset") + 1] == "d.jsonl"
    assert argv[-1] == "--no-thinking" and "--thinking" not in argv
    g = E.harness_argv(
        E.resolve("gsm8k", "h", 1, temperature=0.5, max_tokens=64, data_path="t.jsonl"), "py", "/o"
    )
    assert g[g.index("--max-new-tokens") + 1] == "64" and g[g.index("--temperature") + 1] == "0.5"
    assert g[g.index("--data-path") + 1] == "t.jsonl"


def test_the_harness_comes_first_on_its_pythonpath_and_tqdm_keeps_its_format():
    env = E.harness_env({"DSA_EVAL_PYTHONPATH": "/opt/eval", "PYTHONPATH": "/x", "COLUMNS": "80", "A": "1"})
    assert env["PYTHONPATH"] == os.pathsep.join(["/opt/eval", "/x"]) and "COLUMNS" not in env
    assert env["A"] == "1" and E.harness_env({})  # nothing to add without it


# ---- parsing ------------------------------------------------------------------------------------


def test_progress_follows_the_biggest_bar():
    p = E.ProgressTracker()
    assert p.feed("  0%|          | 0/1319 [00:00<?, ?it/s]")
    assert p.feed(" 38%|###8      | 500/1319 [00:05<00:08, 99.5it/s]") and (p.done, p.total) == (500, 1319)
    assert not p.feed(" 38%|###8      | 499/1319 [00:05<00:08, 99.5it/s]")  # never backwards
    # sgl-eval, 4 repeats: per-repeat bars (whose description holds "rep 1/4") and the overall bar,
    # with a postfix that holds a fraction of its own.
    q = E.ProgressTracker()
    q.feed("aime25 rep 1/4:  50%|#####     | 4/8 [00:01<00:01, 3.2it/s, acc=75.00%, truncated=0/4 (0.00%)]")
    q.feed(
        "aime25 overall:  31%|###       | 10/32 [00:01<00:02, 8.1it/s, acc=70.00%, truncated=1/10 (10.00%)]"
    )
    q.feed("aime25 rep 2/4:  75%|#######5  | 6/8 [00:01<00:00, 3.2it/s, acc=75.00%, truncated=0/6 (0.00%)]")
    assert (q.done, q.total) == (10, 32)
    assert q.feed("aime25 overall   : 11/32, acc=70.00%, truncated=1/11 (9.09%) [00:01<00:02] ###")  # narrow
    assert (q.done, q.total) == (11, 32)
    assert not q.feed("/tmp/test.jsonl: 100%|##########| 1.2M/3.4M [00:01<00:00, 1.1MB/s]")  # a download
    assert E.progress_line(11, 32) == '{"evaluation": "progress", "done": 11, "total": 32}'


GSM8K_STDOUT = "Accuracy: 0.956\nInvalid: 0.001\nLatency: 86.540 s\nOutput throughput: 1510.123 token/s\n"


def test_gsm8k_report():
    assert E.parse_gsm8k("Downloading ...\n" + GSM8K_STDOUT) == {
        "accuracy": 0.956,
        "invalid": 0.001,
        "latency": 86.54,
        "throughput": 1510.123,
    }
    assert E.parse_gsm8k("Traceback (most recent call last):\nKeyError: 'answer'\n") is None
    r = E.result_from_gsm8k(
        [E.parse_gsm8k(GSM8K_STDOUT), {**E.parse_gsm8k(GSM8K_STDOUT), "accuracy": 0.950}], 1319, "h"
    )
    assert (
        r["score"] == 0.953 and r["scores"] == [0.956, 0.95] and r["repeats"] == 2 and r["questions"] == 1319
    )
    assert r["latencySeconds"] == 173.08 and r["invalid"] == 0.001
    assert E.stream_errors("UserWarning: Error in stream_executor: Traceback ...") == 1


METRICS: dict[str, Any] = {
    "name": "aime25",
    "num_examples": 30,
    "n_repeats": 4,
    "latency_seconds": 812.5,
    "output_throughput_tps": 2480.25,
    "aggregate": {
        "pass@1": 0.875,
        "pass@1_std": 0.0167,
        "pass@4": 0.9,
        "majority@4": 0.9,
        "no_answer": 0.0083,
        "score": 0.875,
        "stop_rate": 1.0,
        "truncated_rate": 0.0,
        "error_rate": 0.0,
    },
}


def test_sgl_eval_metrics():
    assert E.sgl_eval_run_dir("x\nRun directory: /tmp/eval/sgl_eval_aime25_20261203-1\n") == (
        "/tmp/eval/sgl_eval_aime25_20261203-1"
    )
    assert E.sgl_eval_run_dir("no run\n") is None
    rows = [[{"symbolic_correct": c} for c in marks] for marks in ([1] * 27 + [0] * 3, [1] * 26 + [0] * 4)]
    scores = E.repeat_scores(rows)
    assert scores == [0.9, 26 / 30]
    r = E.result_from_sgl_eval("aime25", METRICS, scores, "sgl-eval 0.1.3 aime25")
    assert r == {
        "evaluation": "result",
        "suite": "aime25",
        "score": 0.875,
        "scores": [0.9, 0.866667],
        "invalid": 0.0083,
        "questions": 30,
        "repeats": 4,
        "latencySeconds": 812.5,
        "outputThroughput": 2480.25,
        "harness": "sgl-eval 0.1.3 aime25",
    }
    assert E.sgl_eval_problem(METRICS) is None
    failed = {**METRICS, "aggregate": {**METRICS["aggregate"], "error_rate": 0.25}}
    assert "25.0% of 120 requests failed" in E.sgl_eval_problem(failed)
    assert "partial run" in E.sgl_eval_problem({**METRICS, "partial": True, "completed_samples": 7})


def test_the_termination_message_fits_the_kubelets_limit():
    many = E.result("aime25", score=0.5, scores=[0.5] * 100, invalid=None, questions=30, repeats=100,
                    latency=1.0, throughput=float("nan"), harness="h")  # fmt: skip
    assert len(many["scores"]) == E.MAX_SCORES and many["outputThroughput"] is None
    long = "\n".join(f"line {i}: " + "x" * 80 for i in range(200))
    line = E.compact(E.error("HarnessFailed", long))
    obj = json.loads(line)
    assert len(line.encode()) < MAX_BYTES and obj["reason"] == "HarnessFailed"
    assert obj["message"].endswith(long[-200:])  # the end of a stderr says most
    assert "\n" not in line


# ---- end to end: the real harnesses against the simulator ---------------------------------------

N = 8
RIGHT = 6  # of N: the recorded score must be exactly 0.75


@pytest.fixture(scope="module")
def eval_pythonpath() -> str:
    """The harness env `make sglang-envs` installs (the image's /opt/eval list, and torch)."""
    sys.path.insert(0, str(REPO / "tests" / "sglang_compat"))
    try:
        import envs
    finally:
        sys.path.pop(0)
    return os.pathsep.join(str(p) for p in envs.ensure(envs.EVAL_ENV))


def gsm8k_book(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """N gsm8k-shaped questions; the book answers the first RIGHT of them right."""
    rows = [
        {"question": f"Ann has {i} pens and buys {i + 3} more. How many pens?", "answer": f"#### {2 * i + 3}"}
        for i in range(N)
    ]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    book = {
        r["question"]: f"She has {2 * i + 3 if i < RIGHT else 1000 + i} pens." for i, r in enumerate(rows)
    }
    return data, book


def aime_book(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    rows = [{"id": f"p{i}", "problem": f"Find the remainder when {7 + i}^{i + 2} is divided by 997.",
             "expected_answer": str(100 + i)} for i in range(N)]  # fmt: skip
    data = tmp_path / "aime.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    book = {
        r["problem"]: f"So the answer is \\boxed{{{100 + i if i < RIGHT else 7}}}."
        for i, r in enumerate(rows)
    }
    return data, book


def gpqa_book(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    rows = [
        {"id": f"q{i}", "problem": f"Which level is state {i}?\nA) {i}\nB) {i + 1}\nC) {i + 2}\nD) {i + 3}",
         "expected_answer": "ABCD"[i % 4]}
        for i in range(N)
    ]  # fmt: skip
    data = tmp_path / "gpqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wrong = {"A": "B", "B": "C", "C": "D", "D": "A"}
    book = {
        r[
            "problem"
        ]: f"Reasoning.\nAnswer: {r['expected_answer'] if i < RIGHT else wrong[r['expected_answer']]}"
        for i, r in enumerate(rows)
    }
    return data, book


class Sim:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Any]:
    started: list[Sim] = []

    def start(book: dict[str, str], delay_s: float = 0.0) -> Sim:
        port = free_port()
        (tmp_path / "book.json").write_text(json.dumps(book))
        log = tmp_path / f"sim-{port}.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "POD_NAME": "sim-0",
            "DSA_SIMULATOR_ANSWERS": str(tmp_path / "book.json"),
            "DSA_SIMULATOR_DELAY_SECONDS": str(delay_s),
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dsa_runtime.simulator", "--host", "127.0.0.1", "--port", str(port),
                 "--served-model-name", "m"],
                env=env, stdout=out, stderr=out, cwd=REPO,
            )  # fmt: skip
        started.append(Sim(proc, port, log))
        deadline = time.monotonic() + 60
        while not E.healthy(f"http://127.0.0.1:{port}", timeout=1):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the simulator did not come up"
            time.sleep(0.1)
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
            s.proc.wait(30)


def run_env(tmp_path: Path, pythonpath: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSA_", "HF_"))}
    env.update(HOME=str(tmp_path), DSA_EVAL_PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1", **extra)
    return env


def evaluate_args(tmp_path: Path, suite: str, port: int, *extra: str) -> list[str]:
    return ["evaluate", "--suite", suite, "--host", "127.0.0.1", "--port", str(port), "--out-dir",
            str(tmp_path / "out"), "--termination-log", str(tmp_path / "term"), *extra]  # fmt: skip


def termination(tmp_path: Path) -> dict[str, Any]:
    text = (tmp_path / "term").read_text()
    assert len(text.encode()) < MAX_BYTES and text.count("\n") == 1
    return json.loads(text)


def assert_result(proc: subprocess.CompletedProcess[str], tmp_path: Path, suite: str, repeats: int) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = termination(tmp_path)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == res  # also the last line on stdout
    assert set(res) == {"evaluation", "suite", "score", "scores", "invalid", "questions", "repeats",
                        "latencySeconds", "outputThroughput", "harness"}  # fmt: skip
    assert res["evaluation"] == "result" and res["suite"] == suite
    assert res["score"] == RIGHT / N and res["scores"] == [RIGHT / N] * repeats
    assert res["questions"] == N and res["repeats"] == repeats and res["invalid"] == 0.0
    progress = [
        json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{"evaluation": "progress"')
    ]
    assert progress[-1] == {"evaluation": "progress", "done": N * repeats, "total": N * repeats}
    return res


def test_gsm8k_through_sglangs_own_harness(tmp_path, eval_pythonpath, simulator):
    data, book = gsm8k_book(tmp_path)
    sim = simulator(book)
    args = evaluate_args(tmp_path, "gsm8k", sim.port, "--num-shots", "2", "--num-questions", str(N),
                         "--parallel", "4", "--data-path", str(data))  # fmt: skip
    proc = dsa(args, run_env(tmp_path, eval_pythonpath), timeout=300)
    res = assert_result(proc, tmp_path, "gsm8k", 1)
    assert res["harness"] == "sglang.test.few_shot_gsm8k (sglang 0.5.23)"
    assert "Accuracy: 0.750" in proc.stdout  # the harness's own report, streamed
    log = sim.log.read_text()
    assert log.count(": /generate, room") >= N  # native API, as SGLang's RuntimeEndpoint speaks it


def test_aime25_through_sgl_eval_with_repeats(tmp_path, eval_pythonpath, simulator):
    data, book = aime_book(tmp_path)
    sim = simulator(book)
    args = evaluate_args(tmp_path, "aime25", sim.port, "--repeats", "2", "--data-path", str(data))
    proc = dsa(args, run_env(tmp_path, eval_pythonpath), timeout=300)
    res = assert_result(proc, tmp_path, "aime25", 2)
    assert res["harness"] == "sgl-eval 0.1.3 aime25"
    assert list((tmp_path / "out").glob("sgl_eval_aime25_*/metrics.json"))


def test_gpqa_diamond_through_sgl_eval(tmp_path, eval_pythonpath, simulator):
    data, book = gpqa_book(tmp_path)
    sim = simulator(book)
    args = evaluate_args(tmp_path, "gpqa-diamond", sim.port, "--repeats", "2", "--num-questions", str(N),
                         "--model", "m", "--data-path", str(data))  # fmt: skip
    res = assert_result(
        dsa(args, run_env(tmp_path, eval_pythonpath), timeout=300), tmp_path, "gpqa-diamond", 2
    )
    assert res["harness"] == "sgl-eval 0.1.3 gpqa"


def test_an_endpoint_that_never_answers(tmp_path):
    port = free_port()
    proc = dsa([*evaluate_args(tmp_path, "gsm8k", port), "--wait-ready", "0.5"], run_env(tmp_path, ""))
    assert proc.returncode == ExitCode.EVAL_ENDPOINT_UNREACHABLE == 80
    err = termination(tmp_path)
    assert err["evaluation"] == "error" and err["reason"] == "EndpointUnreachable"
    assert f"127.0.0.1:{port}" in err["message"] and "eval-endpoint-unreachable" in proc.stderr


def test_a_missing_harness_is_a_harness_failure(tmp_path, simulator):
    sim = simulator({})
    env = run_env(tmp_path, str(tmp_path / "nothing"), PYTHONNOUSERSITE="1")
    proc = dsa(evaluate_args(tmp_path, "aime25", sim.port), env)
    assert proc.returncode == ExitCode.EVAL_HARNESS_FAILED == 81
    err = termination(tmp_path)
    assert err["reason"] == "HarnessFailed" and "not installed" in err["message"]


def kill_in_flight(proc: subprocess.Popen[bytes], sim: Sim) -> str:
    """Kill the simulator once a generation request reached it (its log says so before the delay
    that holds the request in flight); evaluate's whole output."""
    deadline = time.monotonic() + 120
    while not re.search(r": (/generate|/v1/chat/completions) received", sim.log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, sim.log.read_text()[-3000:]
        time.sleep(0.05)
    sim.kill()
    out, _ = proc.communicate(timeout=300)
    return out.decode(errors="replace")


@pytest.mark.parametrize("suite", ["gsm8k", "aime25"])
def test_an_endpoint_killed_mid_run_is_an_error_not_a_score(tmp_path, eval_pythonpath, simulator, suite):
    data, book = gsm8k_book(tmp_path) if suite == "gsm8k" else aime_book(tmp_path)
    sim = simulator(book, delay_s=600)  # no request finishes before the kill
    extra = ["--num-shots", "2", "--num-questions", str(N)] if suite == "gsm8k" else ["--repeats", "1"]
    args = evaluate_args(tmp_path, suite, sim.port, "--data-path", str(data), *extra)
    env = run_env(tmp_path, eval_pythonpath, DSA_EVAL_HEALTH_INTERVAL_SECONDS="0.2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsa_runtime", *args], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out = kill_in_flight(proc, sim)
    assert proc.returncode == ExitCode.EVAL_HARNESS_FAILED, out[-3000:]
    err = termination(tmp_path)
    assert err["evaluation"] == "error" and err["reason"] == "HarnessFailed", err
    assert E.compact(err) in out.splitlines()  # printed as a line too
    assert "eval-harness-failed" in out


def test_exit_codes_are_listed():
    from tests.runtime.conftest import runtime_env

    codes = dsa(["exit-codes"], runtime_env(Path("/tmp"), Path("/nonexistent")))
    assert "80  EVAL_ENDPOINT_UNREACHABLE" in codes.stdout and "81  EVAL_HARNESS_FAILED" in codes.stdout


def test_probe_answers_only_what_the_endpoint_serves():
    assert not E.healthy(f"http://127.0.0.1:{free_port()}", timeout=1)
    with pytest.raises(E.EvalFailure) as info:
        E.wait_ready(f"http://127.0.0.1:{free_port()}", 0.0, sleep=lambda _: None)
    assert (
        info.value.code == ExitCode.EVAL_ENDPOINT_UNREACHABLE and info.value.reason == "EndpointUnreachable"
    )
