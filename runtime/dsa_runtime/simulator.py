"""A stand-in SGLang engine, for tests only: it loads no model and generates nothing.

The end-to-end tests run the real SGLang router against pods that kwok only pretends to run.
To see the router discover, register and route, something must answer at each pod's address
the part of SGLang's HTTP API the router calls: health probes, model/server info, the
generate and OpenAI endpoints. This module is that something. Every reply is deterministic
and names the pod (and role) that answered, so a test can tell where a request went; in PD
mode it keeps the `bootstrap_room` the router adds to each request, so a test can check that
one request reached a prefill and a decode stand-in as one pair.

Ranks > 0 of a multi-node group answer only the probe paths, as the runtime's stand-in
health server (runtime/dsa_runtime/health.py) does on a real pod: the router must never route to them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dsa_runtime.health import PATHS as RANK_PROBES  # what a rank > 0 pod answers, exactly

LEADER_PROBES = frozenset({"/health", "/health_generate", "/ready", "/liveness"})
MODEL_ID = "standin"


@dataclass
class Seen:
    """One request a stand-in received (path, and the JSON body for POSTs)."""

    method: str
    path: str
    body: dict[str, Any] | None
    at: float = field(default_factory=time.monotonic)


class StandinEngine:
    """One pod's stand-in: a ThreadingHTTPServer on (host, port) in a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        pod: str,
        role: str,
        rank: int = 0,
        bootstrap_port: int | None = None,
        delay_s: float = 0.0,
    ):
        self.host, self.port, self.pod, self.role, self.rank = host, port, pod, role, rank
        self.bootstrap_port = bootstrap_port
        self.delay_s = delay_s  # how long /generate-like calls take (to keep requests in flight)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> StandinEngine:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the router pools connections

            def do_GET(self) -> None:
                engine._handle(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                engine._handle(self, body)

            def log_message(self, format: str, *args: object) -> None:  # `seen` is the log
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name=f"standin-{self.pod}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- what a test reads ----------------------------------------------------------------
    def paths(self) -> list[str]:
        with self._lock:
            return [s.path for s in self.seen]

    def rooms(self) -> list[int]:
        """The bootstrap rooms of the generation requests this stand-in served."""
        with self._lock:
            return [s.body["bootstrap_room"] for s in self.seen if s.body and "bootstrap_room" in s.body]

    def generation_requests(self) -> Iterator[Seen]:
        with self._lock:
            items = list(self.seen)
        return (s for s in items if s.method == "POST")

    # ---- replies --------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any] | None) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.seen.append(Seen(h.command, path, body))
        code, reply = self._reply(h.command, path, body)
        data = json.dumps(reply).encode() if reply is not None else b""
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _who(self) -> dict[str, Any]:
        return {"pod": self.pod, "role": self.role, "rank": self.rank}

    def _reply(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        if path in (LEADER_PROBES if self.rank == 0 else RANK_PROBES):
            return 200, None
        if self.rank > 0:  # a non-leader rank: probes only, as runtime/dsa_runtime/health.py serves them
            return 404, {"error": "stand-in rank > 0 serves probes only", **self._who()}
        if method == "GET":
            return self._get(path)
        if path in ("/generate", "/v1/chat/completions", "/v1/completions"):
            if self.delay_s:
                time.sleep(self.delay_s)
            return 200, self._generation(path, body or {})
        if path in ("/flush_cache", "/abort_request"):
            return 200, None
        return 404, {"error": f"stand-in does not serve POST {path}", **self._who()}

    def _get(self, path: str) -> tuple[int, Any]:
        # The router asks /server_info and /model_info first (newer SGLang), then the get_ forms.
        if path in ("/get_model_info", "/model_info"):
            return 200, {
                "model_path": MODEL_ID,
                "tokenizer_path": MODEL_ID,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": "standin",
                "architectures": ["StandinForCausalLM"],
            }
        if path in ("/get_server_info", "/server_info"):
            return 200, {
                "model_path": MODEL_ID,
                "served_model_name": MODEL_ID,
                "tp_size": 1,
                "dp_size": 1,
                "disaggregation_mode": self.role if self.role in ("prefill", "decode") else "null",
                "disaggregation_bootstrap_port": self.bootstrap_port,
                "version": "standin",
                **self._who(),
            }
        if path == "/v1/models":
            return 200, {
                "object": "list",
                "data": [{"id": MODEL_ID, "object": "model", "owned_by": "standin", "root": MODEL_ID}],
            }
        if path == "/get_load":
            return 200, {"load": 0, "num_reqs": 0, "num_waiting_reqs": 0}
        return 404, {"error": f"stand-in does not serve GET {path}", **self._who()}

    def _generation(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Prefill answers minimally (its KV would go to decode); decode and unified answer."""
        room = body.get("bootstrap_room")
        text = "" if self.role == "prefill" else f"answered by {self.pod} ({self.role})"
        meta = {
            "id": f"standin-{room if room is not None else 0}",
            "finish_reason": {"type": "stop"},
            "prompt_tokens": 1,
            "completion_tokens": 0 if self.role == "prefill" else 1,
            "bootstrap_room": room,
            **self._who(),
        }
        if path == "/generate":
            return {"text": text, "meta_info": meta}
        usage = {"prompt_tokens": 1, "completion_tokens": meta["completion_tokens"], "total_tokens": 2}
        if path == "/v1/completions":
            choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            obj = "text_completion"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            obj = "chat.completion"
        return {
            "id": meta["id"],
            "object": obj,
            "created": 0,
            "model": body.get("model", MODEL_ID),
            "choices": [choice],
            "usage": usage,
            "standin": meta,
        }
