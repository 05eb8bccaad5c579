"""A scripted OpenAI-compatible server for tests and benches (real HTTP on 127.0.0.1).

    with ScriptedOpenAIServer() as srv:
        srv.script.extend(["malformed", "good"])   # consumed one per call, then srv.default
        settings = LLMSettings(base_url=srv.base_url, api_key="sk-test")
        ...
        srv.calls            # JSON bodies received by /v1/chat/completions
        srv.max_in_flight    # highest number of concurrent chat requests seen

Behaviours (a name, or a callable ``f(body) -> name | dict | ScriptedResponse``; a dict is
returned as the message content, JSON-encoded):

- ``good``: a valid reply built from the request's ``required`` block (reference forecast,
  else the mean of the neighbours at that visit, else the middle of the range, plus small
  deterministic noise; always inside the range).
- ``malformed``: text that is not JSON.
- ``out_of_range``: a good reply with one value far outside its range.
- ``missing_visit``: a good reply without its first visit.
- ``rate_limit``: HTTP 429 with ``Retry-After`` (``srv.retry_after``, default "1").
- ``slow``: waits ``srv.slow_s`` (default 3 s) before answering like ``good``.
- ``reject_json_schema``: HTTP 400 when ``response_format.type == "json_schema"``, else good.
- ``reject_response_format``: HTTP 400 for any ``response_format``, else good.
- ``server_error``: HTTP 500.
- ``reject_json_schema_500``: as llama-cpp-python's server: HTTP 500 whose message is the
  request validation error naming ``response_format`` when its type is ``json_schema``.

``srv.one_slot = True``: like llama-cpp-python's server, one lock serves the chat completions
and ``GET /models`` (a model list waits for the completion being computed).

``srv.hook``: optional ``f(body) -> behaviour | None`` consulted before the script (does not
consume it), e.g. to make one patient slow whatever the scheduling order.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Behaviour = str | Callable[[dict], Any]


@dataclass
class ScriptedResponse:
    status: int = 200
    body: Any = None  # dict (JSON) or str/bytes (raw)
    headers: dict[str, str] = field(default_factory=dict)


def find_payload(body: dict) -> dict | None:
    """The JSON context of the first user message that has a ``required`` block."""
    for m in body.get("messages", []):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        try:
            data = json.loads(content)
        except (TypeError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("required"), dict):
            return data
    return None


def _noise(*parts: Any) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 - 0.5  # [-0.5, 0.5)


def _series_value(series: Any, avisitn: float) -> float | None:
    for pair in series or []:
        try:
            if abs(float(pair[0]) - float(avisitn)) < 1e-6 and pair[1] is not None:
                return float(pair[1])
        except (TypeError, ValueError, IndexError):
            continue
    return None


def good_reply(body: dict) -> dict:
    """A valid reply for the request in ``body`` (deterministic given the seed)."""
    payload = find_payload(body) or {"required": {"visits": [], "events": []}}
    req = payload["required"]
    seed = body.get("seed")
    patient = payload.get("patient", {})
    tag = (seed, patient.get("key"), patient.get("twin_index"))
    neighbours = payload.get("neighbours") or []
    ref = payload.get("reference_forecast") or {}
    visits = []
    for spec in req.get("visits", []):
        pcd, lo, hi = spec["paramcd"], spec.get("min"), spec.get("max")
        avs = spec["avisitn"] if isinstance(spec["avisitn"], list) else [spec["avisitn"]]
        for av in avs:
            base = _series_value(ref.get(pcd), av)
            if base is None:
                vals = [_series_value((n.get("trajectory") or {}).get(pcd), av)
                        for n in neighbours]
                vals = [v for v in vals if v is not None]
                base = sum(vals) / len(vals) if vals else None
            if base is None:
                if lo is not None and hi is not None:
                    base = (lo + hi) / 2
                else:
                    base = lo if lo is not None else (hi if hi is not None else 0.0)
            span = (hi - lo) if lo is not None and hi is not None else abs(base) or 1.0
            val = base + 0.05 * span * _noise(*tag, pcd, av)
            if lo is not None:
                val = max(lo, val)
            if hi is not None:
                val = min(hi, val)
            visits.append({"paramcd": pcd, "avisitn": av, "aval": round(val, 4)})
    events = []
    for spec in req.get("events", []):
        pcd, max_days = spec["paramcd"], spec.get("max_days") or 365
        obs = [(n.get("events") or {}).get(pcd) for n in neighbours]
        obs = [o for o in obs if o]
        if obs:
            aval = sum(float(o[0]) for o in obs) / len(obs)
            cnsr = round(sum(int(o[1]) for o in obs) / len(obs))
        else:
            aval, cnsr = 0.6 * max_days, 0
        aval = min(float(max_days), max(1.0, aval * (1 + 0.1 * _noise(*tag, pcd))))
        events.append({"paramcd": pcd, "aval": round(aval, 1), "cnsr": int(cnsr)})
    aes = []
    spec = req.get("adverse_events") or {}
    if spec.get("terms") and neighbours:
        # the history of one neighbour (by twin index), within the reply's follow-up
        donor = neighbours[(int(patient.get("twin_index") or 1) - 1) % len(neighbours)]
        end = min(spec.get("max_day") or float("inf"),
                  max((e["aval"] for e in events), default=float("inf")))
        for entry in donor.get("adverse_events") or []:
            day = entry[1] if len(entry) > 1 else None
            if entry[0] in spec["terms"] and (day is None or 1 <= day <= end):
                aes.append({"term": entry[0], "day": day if spec.get("max_day") else None})
        aes = aes[: int(spec.get("max_count") or 15)]
    return {"visits": visits, "events": events, "adverse_events": aes,
            "rationale": "Scripted test twin."}


class ScriptedOpenAIServer:
    """Context manager running the server in a background thread; thread-safe."""

    def __init__(self, default: Behaviour = "good", latency_s: float = 0.0,
                 model: str = "scripted-model") -> None:
        self.default: Behaviour = default
        self.latency_s = latency_s
        self.model = model
        self.script: collections.deque[Behaviour] = collections.deque()
        self.hook: Callable[[dict], Behaviour | None] | None = None
        self.retry_after = "1"
        self.slow_s = 3.0
        self.calls: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.behaviours: list[str] = []  # behaviour name applied to each call
        self.in_flight = 0
        self.max_in_flight = 0
        self.model_list_calls = 0
        self.one_slot = False
        self.slot = threading.Lock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedOpenAIServer:
        server = self

        class Handler(_Handler):
            owner = server

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="scripted-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour ----------------------------------------------------------------------------
    def push(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self.script.extend(behaviours)

    def _next_behaviour(self, body: dict) -> Behaviour:
        if self.hook is not None:
            b = self.hook(body)
            if b is not None:
                return b
        with self._lock:
            if self.script:
                return self.script.popleft()
            return self.default

    def respond(self, body: dict, received: float | None = None) -> ScriptedResponse:
        """Apply the next behaviour to a chat-completions body.

        The answer is due ``latency_s`` after ``received`` (``time.perf_counter()`` when the
        request arrived; now if not given): the server's own work (parsing the body, building
        the reply) happens within that latency, as it does inside a real endpoint's, so that a
        client measured against this server is charged for its own overhead only."""
        start = time.perf_counter() if received is None else received
        b = self._next_behaviour(body)
        name = b if isinstance(b, str) else getattr(b, "__name__", "callable")
        with self._lock:
            self.behaviours.append(name)
        resp, final = self._apply(b, body)
        if self.latency_s:
            self._stop.wait(max(0.0, self.latency_s - (time.perf_counter() - start)))
        if final == "slow":
            self._stop.wait(self.slow_s)
        return resp

    def _apply(self, b: Behaviour, body: dict) -> tuple[ScriptedResponse, str | None]:
        """The response of behaviour ``b`` and the behaviour's final name."""
        if callable(b):
            out = b(body)
            if isinstance(out, ScriptedResponse):
                return out, None
            if isinstance(out, str):
                b = out
            else:
                return self._completion(body, json.dumps(out)), None
        rf_type = (body.get("response_format") or {}).get("type")
        if b in ("good", "slow"):
            return self._completion(body, json.dumps(good_reply(body))), b
        if b == "malformed":
            return self._completion(
                body, "Sure! The twin improves steadily, visits: ADAS 12, 14"), b
        if b == "out_of_range":
            reply = good_reply(body)
            if reply["visits"]:
                v = reply["visits"][0]
                spec = next(s for s in find_payload(body)["required"]["visits"]
                            if s["paramcd"] == v["paramcd"])
                hi = spec.get("max") if spec.get("max") is not None else 0
                lo = spec.get("min") if spec.get("min") is not None else 0
                v["aval"] = hi + 10 * max(1, hi - lo)
            elif reply["events"]:
                reply["events"][0]["aval"] = -5
            return self._completion(body, json.dumps(reply)), b
        if b == "missing_visit":
            reply = good_reply(body)
            if reply["visits"]:
                reply["visits"].pop(0)
            else:
                reply["events"] = []
            return self._completion(body, json.dumps(reply)), b
        if b == "rate_limit":
            return ScriptedResponse(
                429, _error("Rate limit reached for requests", "rate_limit_exceeded",
                            "requests"),
                {"Retry-After": str(self.retry_after)},
            ), b
        if b == "reject_json_schema":
            if rf_type == "json_schema":
                return ScriptedResponse(400, _error(
                    "response_format of type 'json_schema' is not supported by this server; "
                    "use 'json_object'", "invalid_request_error", "response_format")), b
            return self._completion(body, json.dumps(good_reply(body))), b
        if b == "reject_json_schema_500":
            if rf_type == "json_schema":
                return ScriptedResponse(500, _error(
                    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
                    "'response_format', 'type'), 'msg': \"Input should be 'text' or "
                    "'json_object'\", 'input': 'json_schema'}", "internal_server_error",
                    None)), b
            return self._completion(body, json.dumps(good_reply(body))), b
        if b == "reject_response_format":
            if rf_type:
                return ScriptedResponse(400, _error(
                    f"unsupported response_format type {rf_type!r}", "invalid_request_error",
                    "response_format")), b
            return self._completion(body, json.dumps(good_reply(body))), b
        if b == "server_error":
            return ScriptedResponse(500, _error("internal error", "server_error", None)), b
        raise ValueError(f"unknown behaviour {b!r}")

    def _completion(self, body: dict, content: str) -> ScriptedResponse:
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        with self._lock:
            n = len(self.calls)
        ptok, ctok = max(1, prompt_chars // 4), max(1, len(content) // 4)
        return ScriptedResponse(200, {
            "id": f"chatcmpl-scripted-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "system_fingerprint": "fp_scripted",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": ptok, "completion_tokens": ctok,
                      "total_tokens": ptok + ctok},
        })


def _error(message: str, type_: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": None}}


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedOpenAIServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two send() calls: with Nagle's algorithm the client's delayed
    # ACK would stall every reply by ~40 ms on loopback. Real endpoints set TCP_NODELAY too.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    def _send(self, resp: ScriptedResponse) -> None:
        if isinstance(resp.body, (dict, list)):
            data = json.dumps(resp.body).encode()
            ctype = "application/json"
        else:
            data = resp.body.encode() if isinstance(resp.body, str) else (resp.body or b"")
            ctype = "text/plain"
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            with self.owner._lock:
                self.owner.model_list_calls += 1
            if self.owner.one_slot:
                with self.owner.slot:
                    pass
            self._send(ScriptedResponse(200, {"object": "list", "data": [
                {"id": self.owner.model, "object": "model", "created": 0, "owned_by": "test"}]}))
        else:
            self._send(ScriptedResponse(404, _error("not found", "invalid_request_error", None)))

    def do_POST(self) -> None:
        received = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(ScriptedResponse(404, _error("not found", "invalid_request_error", None)))
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(ScriptedResponse(400, _error("body is not JSON", "invalid_request_error",
                                                    None)))
            return
        owner = self.owner
        with owner._lock:
            owner.calls.append(body)
            owner.headers.append({k.lower(): v for k, v in self.headers.items()})
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            try:
                if owner.one_slot:
                    with owner.slot:
                        resp = owner.respond(body, time.perf_counter())
                else:
                    resp = owner.respond(body, received)
            except Exception as exc:  # noqa: BLE001  (a bug in a hook: report it, keep serving)
                resp = ScriptedResponse(500, _error(f"scripted server error: {exc}",
                                                    "server_error", None))
        finally:
            with owner._lock:
                owner.in_flight -= 1
        self._send(resp)
