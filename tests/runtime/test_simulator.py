"""The engine simulator's replies over real HTTP on loopback, and its config from planned argv."""

from __future__ import annotations

import copy
import http.client
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dsa_operator.planner import plan
from dsa_runtime import simulator as S
from tests.conftest import ROOT, load
from tests.runtime.conftest import free_port

CHAT = {"model": "m", "messages": [{"role": "user", "content": "two words"}], "max_tokens": 4}


def request(
    url: str, method: str = "GET", body: dict | None = None
) -> tuple[int, dict[str, str], dict[str, Any] | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as r:
            status, headers, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
    text = raw.decode()
    try:
        return status, headers, json.loads(text)
    except ValueError:
        return status, headers, text


def sim_config(role: str = "serving", rank: int = 0, bootstrap: int | None = None, **kw: Any) -> S.SimConfig:
    who = S.Identity(pod=f"m-{role}-0-{rank}", role=role, group=0, rank=rank)
    return S.SimConfig(host="127.0.0.1", port=free_port(), who=who, model="m", bootstrap_port=bootstrap, **kw)


@pytest.fixture
def engine() -> Iterator[Any]:
    started: list[S.EngineSimulator] = []

    def start(config: S.SimConfig) -> S.EngineSimulator:
        started.append(S.EngineSimulator(config).start())
        return started[-1]

    yield start
    for e in started:
        e.stop()


def assert_simulated(headers: dict[str, str], body: Any, pod: str) -> None:
    assert headers[S.HEADER].startswith("true")
    assert body["simulator"]["note"] == S.NOTE and body["simulator"]["pod"] == pod


def test_every_rank0_path_says_it_is_a_simulator(engine):
    e = engine(sim_config())
    for path in (
        "/health",
        "/health_generate",
        "/ready",
        "/liveness",
        "/server_info",
        "/get_server_info",
        "/model_info",
        "/get_model_info",
        "/v1/models",
        "/get_load",
    ):
        status, headers, body = request(e.url + path)
        assert status == 200, path
        assert_simulated(headers, body, e.pod)
    status, headers, body = request(e.url + "/nothing")
    assert status == 404 and "/nothing" in body["error"]
    assert_simulated(headers, body, e.pod)
    assert request(e.url + "/v1/models")[2]["data"][0]["id"] == "m"
    assert request(e.url + "/model_info")[2]["model_path"] == "m"


def test_completions_in_each_form(engine):
    e = engine(sim_config())
    text = S.reply_text(e.config.who)
    assert "not model output" in text
    status, headers, chat = request(e.url + "/v1/chat/completions", "POST", CHAT)
    assert status == 200 and chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert chat["usage"]["prompt_tokens"] == 2 and chat["model"] == "m"
    assert_simulated(headers, chat, e.pod)
    assert chat["simulator"]["served_by"] == [{"pod": e.pod, "role": "serving", "group": 0, "rank": 0}]
    status, _, comp = request(e.url + "/v1/completions", "POST", {"model": "m", "prompt": "hi"})
    assert status == 200 and comp["choices"][0]["text"] == text and comp["object"] == "text_completion"
    status, _, gen = request(e.url + "/generate", "POST", {"text": "hi", "sampling_params": {}})
    assert status == 200 and gen["text"] == text and gen["meta_info"]["finish_reason"] == {"type": "stop"}
    assert [s.path for s in e.generation_requests()] == [
        "/v1/chat/completions",
        "/v1/completions",
        "/generate",
    ]


def test_streaming_chat_is_server_sent_events(engine):
    e = engine(sim_config())
    status, headers, raw = request(e.url + "/v1/chat/completions", "POST", {**CHAT, "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(x) for x in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == S.reply_text(e.config.who)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["simulator"]["pod"] == e.pod for c in chunks)


def test_rank_above_zero_answers_probes_only(engine):
    e = engine(sim_config(rank=1))
    for path in ("/health", "/ready"):
        status, headers, body = request(e.url + path)
        assert status == 200
        assert_simulated(headers, body, e.pod)
    for method, path in (
        ("GET", "/health_generate"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ):
        status, headers, body = request(e.url + path, method, CHAT if method == "POST" else None)
        assert status == 404 and "probes only" in body["error"], path
        assert_simulated(headers, body, e.pod)


def test_pd_completion_names_prefill_rank0_then_decode_rank0(engine):
    bootstrap = free_port()
    prefill = engine(sim_config("prefill", bootstrap=bootstrap))
    decode = engine(sim_config("decode"))
    assert request(prefill.url + "/server_info")[2]["disaggregation_bootstrap_port"] == bootstrap
    body = {**CHAT, "bootstrap_host": "127.0.0.1", "bootstrap_port": bootstrap, "bootstrap_room": 42}
    # The router sends both at once; here prefill first, then decode (decode waits for the room).
    status, _, pre = request(prefill.url + "/v1/chat/completions", "POST", body)
    assert status == 200 and pre["choices"][0]["message"]["content"] == ""
    status, headers, reply = request(decode.url + "/v1/chat/completions", "POST", body)
    assert status == 200, reply
    assert_simulated(headers, reply, decode.pod)
    assert [(s["pod"], s["role"], s["rank"]) for s in reply["simulator"]["served_by"]] == [
        (prefill.pod, "prefill", 0),
        (decode.pod, "decode", 0),
    ]
    assert reply["simulator"]["bootstrap_room"] == 42
    assert prefill.rooms() == [42] and decode.rooms() == [42]


def test_decode_reports_a_room_no_prefill_took(engine):
    bootstrap = free_port()
    engine(sim_config("prefill", bootstrap=bootstrap))
    decode = engine(sim_config("decode", kv_timeout_s=0.2))
    body = {**CHAT, "bootstrap_host": "127.0.0.1", "bootstrap_port": bootstrap, "bootstrap_room": 7}
    status, headers, reply = request(decode.url + "/v1/chat/completions", "POST", body)
    assert status == 502 and "room 7" in reply["error"]
    assert_simulated(headers, reply, decode.pod)
    status, _, reply = request(decode.url + "/v1/chat/completions", "POST", CHAT)
    assert status == 400 and "through the router" in reply["error"]


def test_config_from_the_operators_planned_argv():
    """The simulator reads the same command lines SGLang would: a PD model whose prefill is a
    2-node PP + CP group."""
    manifest = load(ROOT / "examples" / "19-pd-pp-cp.yaml")
    p = plan(manifest)
    served = manifest["spec"]["model"].get("servedModelName") or p.model.source
    seen = {}
    for pod in p.pods:
        if pod.role == "router":
            continue
        env = {"DSA_ROLE": pod.role, "DSA_GROUP": str(pod.group), "POD_NAME": f"x-{pod.rank}"}
        cfg = S.config_from_argv(pod.argv, env)
        seen[(pod.role, pod.group, pod.rank)] = cfg
        assert (cfg.host, cfg.port) == ("0.0.0.0", p.role(pod.role).port)
        assert cfg.who.rank == pod.rank and cfg.who.role == pod.role
        assert cfg.nnodes == p.role(pod.role).nodes_per_group
        assert cfg.model == served  # what /v1/models lists, as SGLang would
    assert seen[("prefill", 0, 1)].nnodes == 2 and seen[("prefill", 0, 1)].who.rank == 1
    assert seen[("prefill", 0, 0)].bootstrap_port == 8998 and seen[("decode", 0, 0)].bootstrap_port is None


def test_as_a_process_it_logs_that_it_is_a_simulator_and_stops_on_sigterm():
    port = free_port()
    argv = ["--model-path", "org/model", "--served-model-name", "served", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsa_runtime.simulator", *argv, "--port", str(port)],
        env={"POD_NAME": "p-0", "DSA_ROLE": "serving", "DSA_GROUP": "0", "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        line = proc.stderr.readline()
        assert "SIMULATOR" in line and "not model output" in line
        while f":{port}" not in line:
            line = proc.stderr.readline()
            assert line, "the simulator exited"
        status, _, body = request(f"http://127.0.0.1:{port}/v1/models")
        assert status == 200 and body["data"][0]["id"] == "served"
        status, _, _ = request(f"http://127.0.0.1:{port}/v1/chat/completions", "POST", copy.deepcopy(CHAT))
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "SIMULATOR p-0: /v1/chat/completions" in err and "not model output" in err


def test_stop_ends_keep_alive_connections_like_an_exiting_process(engine):
    """A router pools connections: a stopped simulator must not go on answering on them."""
    e = engine(sim_config())
    conn = http.client.HTTPConnection(e.host, e.port, timeout=5)
    conn.request("GET", "/health")
    assert conn.getresponse().read() and conn.sock is not None
    e.stop()
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/health")
        conn.getresponse()
    conn.close()


# ---- the answer book ------------------------------------------------------------------------------

BOOK = {"What is 2+3?": "It is 5.", "What is 4+4?": "It is 8.", "What is 4+4? Twice?": "It is 16."}


def test_the_known_question_that_ends_last_is_answered():
    few_shot = "Question: What is 2+3?\nAnswer: It is 5.\n\nQuestion: What is 4+4?\nAnswer:"
    assert S.book_reply(BOOK, few_shot) == "It is 8."
    # the question asked is one of the shots: its last occurrence counts
    shot_asked = (
        "Question: What is 2+3?\nAnswer: 5\n\nQuestion: What is 4+4?\nAnswer: 8\n\nQuestion: What is 2+3?"
    )
    assert S.book_reply(BOOK, shot_asked) == "It is 5."
    assert S.book_reply(BOOK, "Q: What is 4+4? Twice?") == "It is 16."  # not the question inside it
    assert S.book_reply(BOOK, "something else") is None
    assert S.prompt_text({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}) == "a"
    assert S.prompt_text({"prompt": ["x", "y"]}) == "x\ny" and S.prompt_text({"text": "t"}) == "t"


def test_every_generation_form_answers_from_the_book(engine):
    e = engine(sim_config(answers=BOOK))
    ask = "Solve this.\n\nWhat is 2+3?"
    chat = {"model": "m", "messages": [{"role": "user", "content": ask}]}
    assert (
        request(e.url + "/v1/chat/completions", "POST", chat)[2]["choices"][0]["message"]["content"]
        == "It is 5."
    )
    comp = request(e.url + "/v1/completions", "POST", {"model": "m", "prompt": ask})[2]
    assert comp["choices"][0]["text"] == "It is 5." and comp["usage"]["completion_tokens"] == 3
    gen = request(e.url + "/generate", "POST", {"text": ask, "sampling_params": {}})[2]
    assert gen["text"] == "It is 5." and gen["meta_info"]["completion_tokens"] == 3
    _, _, raw = request(e.url + "/v1/chat/completions", "POST", {**chat, "stream": True})
    assert '"content": "It is 5."' in raw
    unknown = request(e.url + "/v1/completions", "POST", {"model": "m", "prompt": "hi"})[2]
    assert unknown["choices"][0]["text"] == S.reply_text(e.config.who)  # the usual reply


def test_the_book_and_delay_come_from_the_environment(tmp_path):
    cfg = sim_config()
    book = tmp_path / "book.json"
    book.write_text(json.dumps(BOOK))
    got = S.with_env_extras(cfg, {"DSA_SIMULATOR_ANSWERS": str(book), "DSA_SIMULATOR_DELAY_SECONDS": "0.5"})
    assert got.answers == BOOK and got.delay_s == 0.5
    assert S.with_env_extras(cfg, {}) is cfg
    book.write_text('["not", "a", "book"]')
    with pytest.raises(ValueError, match="answer book"):
        S.load_answer_book(str(book))
