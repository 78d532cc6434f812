"""`dsa-runtime evaluate`: the pinned SGLang's own accuracy harness against a model endpoint.

gsm8k runs `python -m sglang.test.few_shot_gsm8k` (native /generate); gpqa-diamond and aime25 run
sgl-eval (`python -m sgl_eval.cli run`, OpenAI /v1/chat/completions), which SGLang 0.5.23's
`run_eval` hands them to. The CLI, not `sglang.test.sgl_eval_utils.run_sgl_eval`: a process
boundary, sgl-eval's own metrics.json and per-repeat predictions, and no sglang.test.test_utils
import chain. The harness comes from DSA_EVAL_PYTHONPATH (the image's /opt/eval) first.

The result, or why there is none, is one compact JSON object in the termination log (Kubernetes
keeps it in the pod status) and on stdout. A score is only reported when every request was
answered: few_shot_gsm8k crashes on a failed request (its state has no answer variable), sgl-eval
records failed requests in `error_rate` (after retrying each for about a minute), and a watcher
ends the run when the endpoint stops answering /health, so a dead endpoint is an error, never a
hang or a low score.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from dsa_runtime.errors import ExitCode, RuntimeFailure
from dsa_runtime.termination import MAX_BYTES

GSM8K_MODULE = "sglang.test.few_shot_gsm8k"
SGL_EVAL_MODULE = "sgl_eval.cli"
PROGRESS_EVERY_S = 5.0
HEALTH_INTERVAL_S = 5.0  # DSA_EVAL_HEALTH_INTERVAL_SECONDS overrides (tests)
HEALTH_FAILURES = 3  # consecutive failed /health checks that end a run
HEALTH_TIMEOUT_S = 10.0
MAX_SCORES = 16
STDERR_TAIL_LINES = 20


@dataclass(frozen=True)
class Suite:
    """One accuracy suite: the harness that scores it and its defaults (None: the harness's own)."""

    name: str
    harness: str  # "gsm8k" (few_shot_gsm8k) or the sgl-eval benchmark name
    num_shots: int | None = None
    questions: int | None = None
    parallel: int | None = None
    max_tokens: int | None = None
    repeats: int = 1
    thinking: bool | None = None
    temperature: float | None = None
    top_p: float | None = None


# The defaults are the usage page's commands (SGLang's DeepSeek-V3.2 page, "accuracy"): gsm8k
# `--num-shots 8 --num-questions 1319 --parallel 1319` (max new tokens: the harness's 512);
# GPQA-diamond `run_eval --eval-name gpqa --num-examples 198 --max-tokens 120000 --repeat 8
# --thinking-mode deepseek-v3` (chat_template_kwargs thinking=true); AIME 2025 `ns eval
# --benchmarks=aime25:4 ++chat_template_kwargs.thinking=true ++inference.temperature=1.0
# ++inference.top_p=0.95 ++inference.tokens_to_generate=64000`. The operator keeps its own copy for
# the CRD's defaults and passes every option explicitly.
SUITES: dict[str, Suite] = {
    "gsm8k": Suite("gsm8k", "gsm8k", num_shots=8, questions=1319, parallel=1319, max_tokens=512),
    "gpqa-diamond": Suite("gpqa-diamond", "gpqa", questions=198, max_tokens=120000, repeats=8, thinking=True),
    "aime25": Suite(
        "aime25", "aime25", max_tokens=64000, repeats=4, thinking=True, temperature=1.0, top_p=0.95
    ),
}


@dataclass(frozen=True)
class Settings:
    """A run: the suite's defaults with the options given."""

    suite: Suite
    host: str
    port: int
    model: str | None = None
    data_path: str | None = None


def resolve(suite: str, host: str, port: int, **given: Any) -> Settings:
    """The suite's table entry with every option that was given (not None) put over it."""
    base = SUITES[suite]
    chosen = {k: v for k, v in given.items() if v is not None and k not in ("model", "data_path")}
    return Settings(replace(base, **chosen), host, port, given.get("model"), given.get("data_path"))


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def harness_argv(s: Settings, python: str, out_dir: str) -> list[str]:
    """The harness's command line; options the suite leaves None are the harness's defaults."""
    q = s.suite
    if q.harness == "gsm8k":
        argv = [python, "-m", GSM8K_MODULE, "--host", s.host, "--port", str(s.port)]
        for flag, value in (
            ("--num-shots", q.num_shots),
            ("--num-questions", q.questions),
            ("--parallel", q.parallel),
            ("--max-new-tokens", q.max_tokens),
            ("--temperature", q.temperature),
            ("--data-path", s.data_path),
        ):
            if value is not None:
                argv += [flag, str(value)]
        return argv
    argv = [python, "-m", SGL_EVAL_MODULE, "run", q.harness, "--base-url", base_url(s.host, s.port) + "/v1"]
    for flag, value in (
        ("--model", s.model),
        ("--num-examples", q.questions),
        ("--num-threads", q.parallel),
        ("--n-repeats", q.repeats),
        ("--max-tokens", q.max_tokens),
        ("--temperature", q.temperature),
        ("--top-p", q.top_p),
        ("--out-dir", out_dir),
        ("--from-dataset", s.data_path),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if q.thinking is not None:
        argv.append("--thinking" if q.thinking else "--no-thinking")
    return argv


# ---- parsing (pure) ------------------------------------------------------------------------------

# tqdm's counter: "| 12/1319 [00:01<..." (its default format), or "desc: 12/1319, acc=..." (the
# narrow one sgl-eval switches to under 100 columns). A postfix such as "truncated=0/3 (0.00%)"
# and a description such as "aime25 rep 1/4:" match neither.
_TQDM = re.compile(r"\| *(\d+)/(\d+) \[|: (\d+)/(\d+)(?=[, \[])")


class ProgressTracker:
    """The biggest tqdm bar seen (sgl-eval's overall bar totals examples x repeats) and its count."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0

    def feed(self, segment: str) -> bool:
        """Read one \\r- or \\n-delimited piece of the harness's stderr; True if progress moved."""
        moved = False
        for m in _TQDM.finditer(segment):
            done, total = (int(g) for g in (m.group(1, 2) if m.group(1) else m.group(3, 4)))
            if total <= 0 or total < self.total or (total == self.total and done <= self.done):
                continue
            if total > self.total:
                self.total = total
            self.done, moved = done, True
        return moved


def progress_line(done: int, total: int) -> str:
    return json.dumps({"evaluation": "progress", "done": done, "total": total})


_GSM8K_LINE = re.compile(
    r"^(Accuracy|Invalid|Latency|Output throughput): *([-+0-9.eE]+|nan|inf)", re.MULTILINE
)


def parse_gsm8k(stdout: str) -> dict[str, float] | None:
    """few_shot_gsm8k's report (`Accuracy: x`, `Invalid: x`, `Latency: x s`, `Output throughput:
    x token/s`), or None without an accuracy line."""
    found = {k: float(v) for k, v in _GSM8K_LINE.findall(stdout)}
    if "Accuracy" not in found or not math.isfinite(found["Accuracy"]):
        return None
    return {
        "accuracy": found["Accuracy"],
        "invalid": found.get("Invalid", math.nan),
        "latency": found.get("Latency", math.nan),
        "throughput": found.get("Output throughput", math.nan),
    }


def stream_errors(stderr: str) -> int:
    """Requests sglang.lang's executor failed (it warns once per failed program state)."""
    return stderr.count("Error in stream_executor")


def sgl_eval_run_dir(stdout: str) -> str | None:
    """The run folder sgl-eval announces (`Run directory: <out-dir>/sgl_eval_<name>_<stamp>`)."""
    m = re.search(r"^Run directory: (.+?)\s*$", stdout, re.MULTILINE)
    return m.group(1) if m else None


def repeat_scores(rows_per_repeat: Iterable[Iterable[Mapping[str, Any]]]) -> list[float]:
    """Per repeat, the share of its predictions marked correct (sgl-eval's output-rs<i>.jsonl)."""
    scores = []
    for rows in rows_per_repeat:
        marks = [bool(r.get("symbolic_correct")) for r in rows]
        if marks:
            scores.append(sum(marks) / len(marks))
    return scores


def sgl_eval_problem(metrics: Mapping[str, Any]) -> str | None:
    """Why a finished sgl-eval run has no trustworthy score: failed requests or a partial run."""
    agg = metrics.get("aggregate") or {}
    error_rate = float(agg.get("error_rate") or 0.0)
    planned = int(metrics.get("num_examples") or 0) * int(metrics.get("n_repeats") or 1)
    if error_rate > 0:
        return f"{error_rate:.1%} of {planned} requests failed (sgl-eval error_rate {error_rate:g})"
    if metrics.get("partial"):
        return f"partial run: {metrics.get('completed_samples')} of {planned} samples completed"
    if "score" not in agg:
        return "metrics.json has no aggregate score"
    return None


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return round(f, 6) if math.isfinite(f) else None


def result_from_sgl_eval(suite: str, metrics: Mapping[str, Any], scores: list[float], harness: str) -> dict:
    """The termination result of an sgl-eval run. Its aggregate `score` is already a fraction:
    pass@1 averaged over the repeats (pass@1[avg-of-k]), or the plain accuracy for one repeat."""
    agg = metrics["aggregate"]
    return result(
        suite,
        score=float(agg["score"]),
        scores=scores,
        invalid=agg.get("no_answer"),
        questions=int(metrics.get("num_examples") or 0),
        repeats=int(metrics.get("n_repeats") or 1),
        latency=float(metrics.get("latency_seconds") or 0.0),
        throughput=metrics.get("output_throughput_tps"),
        harness=harness,
    )


def result_from_gsm8k(runs: list[dict[str, float]], questions: int, harness: str) -> dict:
    """The termination result of one or more few_shot_gsm8k runs (one per repeat)."""
    n = len(runs)
    return result(
        "gsm8k",
        score=sum(r["accuracy"] for r in runs) / n,
        scores=[r["accuracy"] for r in runs],
        invalid=sum(r["invalid"] for r in runs) / n,
        questions=questions,
        repeats=n,
        latency=sum(r["latency"] for r in runs),
        throughput=sum(r["throughput"] for r in runs) / n,
        harness=harness,
    )


def result(
    suite: str,
    *,
    score: float,
    scores: list[float],
    invalid: Any,
    questions: int,
    repeats: int,
    latency: float,
    throughput: Any,
    harness: str,
) -> dict:
    return {
        "evaluation": "result",
        "suite": suite,
        "score": round(score, 6),
        "scores": [round(x, 6) for x in scores[:MAX_SCORES]],
        "invalid": _num(invalid),
        "questions": questions,
        "repeats": repeats,
        "latencySeconds": _num(latency) or 0.0,
        "outputThroughput": _num(throughput),
        "harness": harness,
    }


def error(reason: str, message: str) -> dict:
    return {"evaluation": "error", "reason": reason, "message": message}


def compact(obj: Mapping[str, Any]) -> str:
    """One line of JSON within the kubelet's termination-message limit; an error's message loses
    its beginning first (the end of a stderr says most)."""
    line = json.dumps(obj, separators=(",", ":"))
    if len(line.encode()) < MAX_BYTES or "message" not in obj:
        return line
    message = str(obj["message"])
    while message and len(line.encode()) >= MAX_BYTES:
        message = "..." + message[len(message) // 4 + 3 :]
        line = json.dumps({**obj, "message": message}, separators=(",", ":"))
    return line


def tail(lines: Iterable[str], n: int = STDERR_TAIL_LINES) -> str:
    kept = [ln.strip() for ln in lines if ln.strip()]
    return "\n".join(kept[-n:])


# ---- the run (I/O) -------------------------------------------------------------------------------


class EvalFailure(RuntimeFailure):
    """A failure with its termination JSON."""

    def __init__(self, code: ExitCode, reason: str, message: str) -> None:
        super().__init__(code, message)
        self.reason = reason


def healthy(url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """GET /health, else /v1/models (an OpenAI-only endpoint), answers 200."""
    for path in ("/health", "/v1/models"):
        try:
            with urllib.request.urlopen(url + path, timeout=timeout) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return False


def wait_ready(url: str, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if healthy(url, timeout=min(HEALTH_TIMEOUT_S, max(timeout, 1.0))):
            return
        if time.monotonic() >= deadline:
            raise EvalFailure(
                ExitCode.EVAL_ENDPOINT_UNREACHABLE,
                "EndpointUnreachable",
                f"{url} did not answer GET /health or /v1/models with 200 within {timeout:g} s",
            )
        sleep(1.0)


def harness_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The harness's environment: DSA_EVAL_PYTHONPATH first on its PYTHONPATH; no COLUMNS, so
    tqdm keeps its default (parseable) format."""
    env = {k: v for k, v in environ.items() if k != "COLUMNS"}
    extra = environ.get("DSA_EVAL_PYTHONPATH", "")
    paths = [p for p in (extra, environ.get("PYTHONPATH", "")) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def harness_version(python: str, env: Mapping[str, str], suite: Suite) -> str:
    """`sglang.test.few_shot_gsm8k (sglang X)` or `sgl-eval X <name>`, from the harness's own
    environment; a harness that is not installed fails here, before any request."""
    module, dist = (GSM8K_MODULE, "sglang") if suite.harness == "gsm8k" else (SGL_EVAL_MODULE, "sgl-eval")
    probe = (
        "import importlib.metadata as m, importlib.util as u, sys\n"
        f"sys.exit(3) if u.find_spec({module.split('.')[0]!r}) is None else print(m.version({dist!r}))"
    )
    proc = subprocess.run([python, "-c", probe], env=dict(env), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EvalFailure(
            ExitCode.EVAL_HARNESS_FAILED,
            "HarnessFailed",
            f"the harness ({dist}) is not installed for {python} (DSA_EVAL_PYTHONPATH="
            f"{env.get('DSA_EVAL_PYTHONPATH', '')!r}): {tail(proc.stderr.splitlines(), 3)}",
        )
    version = proc.stdout.strip()
    return f"{GSM8K_MODULE} (sglang {version})" if dist == "sglang" else f"sgl-eval {version} {suite.harness}"


@dataclass
class Finished:
    rc: int
    stdout: str
    stderr_tail: str
    stream_errors: int
    endpoint_lost: bool


class _Run:
    """One harness process: its output streamed to ours, tqdm progress parsed from its stderr, and
    a watcher that ends it when the endpoint stops answering /health."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, url: str, out: TextIO) -> None:
        self.out = out
        self.progress = ProgressTracker()
        self._stdout: list[str] = []
        self._stderr: deque[str] = deque(maxlen=200)
        self._errors = 0
        self._lost = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: ending it ends its workers too
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._watch, args=(url,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            self._stdout.append(line)
            with self._lock:
                self.out.write(line)
                self.out.flush()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        pending = ""
        for raw in iter(lambda: self.proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
            text = raw.decode(errors="replace")
            sys.stderr.write(text)
            sys.stderr.flush()
            pieces = re.split(r"[\r\n]", pending + text)
            pending = pieces.pop()
            for piece in pieces:
                self._take(piece)
        if pending:
            self._take(pending)

    def _take(self, piece: str) -> None:
        with self._lock:
            self.progress.feed(piece)
            self._errors += stream_errors(piece)
            if piece.strip() and not _TQDM.search(piece):
                self._stderr.append(piece)

    def _watch(self, url: str) -> None:
        interval = float(os.environ.get("DSA_EVAL_HEALTH_INTERVAL_SECONDS") or HEALTH_INTERVAL_S)
        failures = 0
        while not self._done.wait(interval):
            failures = 0 if healthy(url, timeout=min(HEALTH_TIMEOUT_S, interval * 2)) else failures + 1
            if failures >= HEALTH_FAILURES and not self._done.is_set():
                self._lost.set()
                with self._lock:
                    self.out.write(f"dsa-runtime: {url} stopped answering /health: ending the harness\n")
                self.stop()
                return

    def stop(self) -> None:
        """SIGTERM to the harness's group, SIGKILL after 10 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, on_tick: Callable[[], None]) -> Finished:
        try:
            while self.proc.poll() is None:
                on_tick()
                time.sleep(0.2)
        finally:
            self._done.set()
            if self.proc.poll() is None:
                self.stop()
        for t in self._threads[:2]:
            t.join(10)
        with self._lock:
            return Finished(
                self.proc.returncode,
                "".join(self._stdout),
                tail(self._stderr),
                self._errors,
                self._lost.is_set(),
            )


def _emit(line: str, out: TextIO) -> None:
    out.write(line + "\n")
    out.flush()


def run_harness(
    argv: list[str], env: dict[str, str], cwd: str, url: str, out: TextIO, offset: int, scale: int
) -> tuple[Finished, ProgressTracker]:
    """Run one harness process, printing progress (at most every PROGRESS_EVERY_S) as it goes;
    `offset` and `scale` place it among several runs (gsm8k's repeats)."""
    run = _Run(argv, env, cwd, url, out)
    last = [time.monotonic(), -1]  # the first line after PROGRESS_EVERY_S; the caller prints the last

    def tick() -> None:
        p = run.progress
        now = time.monotonic()
        if p.total and p.done != last[1] and now - last[0] >= PROGRESS_EVERY_S:
            last[:] = [now, p.done]
            with run._lock:
                _emit(progress_line(offset + p.done, p.total * scale), out)

    return run.wait(tick), run.progress


def _failed(f: Finished, what: str) -> EvalFailure:
    if f.endpoint_lost:
        why = f"the endpoint stopped answering /health during the {what} run; the harness was ended"
    elif f.rc != 0:
        why = f"{what} exited with status {f.rc}"
    else:
        why = f"{f.stream_errors} requests failed ({what} reported 'Error in stream_executor')"
    return EvalFailure(ExitCode.EVAL_HARNESS_FAILED, "HarnessFailed", f"{why}: {f.stderr_tail}".rstrip(": "))


def evaluate(s: Settings, out_dir: str, environ: Mapping[str, str], out: TextIO = sys.stdout) -> dict:
    """Wait for the endpoint, run the harness, return the result object (EvalFailure otherwise)."""
    url = base_url(s.host, s.port)
    env = harness_env(environ)
    python = sys.executable
    harness = harness_version(python, env, s.suite)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if s.suite.harness == "gsm8k":
        runs: list[dict[str, float]] = []
        questions = s.suite.questions or 0
        for i in range(s.suite.repeats):
            argv = harness_argv(s, python, out_dir)
            f, p = run_harness(argv, env, out_dir, url, out, i * questions, s.suite.repeats)
            if f.rc != 0 or f.endpoint_lost or f.stream_errors:
                raise _failed(f, GSM8K_MODULE)
            parsed = parse_gsm8k(f.stdout)
            if parsed is None:
                why = f"{GSM8K_MODULE} printed no Accuracy line: {f.stderr_tail}"
                raise EvalFailure(ExitCode.EVAL_HARNESS_FAILED, "NoResult", why)
            questions = p.total or questions
            runs.append(parsed)
        _emit(progress_line(questions * len(runs), questions * len(runs)), out)
        return result_from_gsm8k(runs, questions, harness)
    f, p = run_harness(harness_argv(s, python, out_dir), env, out_dir, url, out, 0, 1)
    if f.rc != 0 or f.endpoint_lost:
        raise _failed(f, "sgl-eval")
    if p.total:
        _emit(progress_line(p.done, p.total), out)
    run_dir = sgl_eval_run_dir(f.stdout)
    metrics_path = Path(run_dir) / "metrics.json" if run_dir else None
    if metrics_path is None or not metrics_path.is_file():
        raise EvalFailure(
            ExitCode.EVAL_HARNESS_FAILED,
            "NoResult",
            f"sgl-eval wrote no metrics.json ({run_dir}): {f.stderr_tail}",
        )
    metrics = json.loads(metrics_path.read_text())
    problem = sgl_eval_problem(metrics)
    if problem:
        raise EvalFailure(ExitCode.EVAL_HARNESS_FAILED, "HarnessFailed", f"{problem}: {f.stderr_tail}")
    files = sorted(
        metrics_path.parent.glob("output-rs*.jsonl"), key=lambda x: int(x.stem[len("output-rs") :])
    )
    rows = [[json.loads(ln) for ln in x.read_text().splitlines() if ln.strip()] for x in files]
    return result_from_sgl_eval(s.suite.name, metrics, repeat_scores(rows), harness)
