"""Issue 20 (bad input): hypothesis drives >= 2,000 request bodies through a real `t2l serve` on 127.0.0.1.

Malformed JSON, wrong types, unknown and crafted `t2l:` ids, empty/oversized/control-character descriptions,
`max_tokens` <= 0 or huge, odd and unknown fields, wrong methods, streams whose client vanishes: every answer is a
2xx or a 4xx with an OpenAI-style `{"error": {"message", ...}}`; never a 5xx, never a traceback in the server's log,
and the server still answers afterwards. Cases: T2L_SERVE_FUZZ_EXAMPLES (default 2000); CI runs a derandomized search.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter

import pytest
from hardening_common import FUZZ, report
from hypothesis import given, settings
from hypothesis import strategies as st

from t2lcli.descriptions import MAX_DESCRIPTION_CHARS

N_CASES = int(os.environ.get("T2L_SERVE_FUZZ_EXAMPLES", "2000"))
MAX_TOKENS_CAP = 8
BASE = "<base>"  # replaced by the served base model's name at request time
TALLY: Counter = Counter()
ROUTES = Counter()


class ServeProcess:
    """`python -m t2lcli serve --port 0` (the real command) with its stderr, the access log, in a file."""

    def __init__(self, checkpoint, log_path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "t2lcli", "serve", "--checkpoint", str(checkpoint), "--port", "0", *extra],
                                     stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, text=True,
                                     env={**os.environ, **(env or {})})
        watchdog = threading.Timer(180, self.proc.kill)  # a server that never gets ready must not hang the suite
        watchdog.start()
        try:
            line = self.proc.stdout.readline()  # "t2l serve: listening on http://127.0.0.1:PORT  (Ctrl-C to stop)" once ready
        finally:
            watchdog.cancel()
        if "listening on http://127.0.0.1:" not in line:
            self.stop()
            raise RuntimeError(f"t2l serve did not start: {line!r}\n{self.log()[-3000:]}")
        self.port = int(line.split("listening on http://127.0.0.1:")[1].split()[0])
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        status, data = _request(self, "GET", "/v1/models", None, "", False)
        self.base = json.loads(data)["data"][0]["id"]

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint_dir):
    log = tmp_path_factory.mktemp("serve_fuzz") / "server.log"
    srv = ServeProcess(tiny_checkpoint_dir, log, "--max-tokens-cap", str(MAX_TOKENS_CAP), "--max-adapters", "16",
                       env={"T2L_HOME": str(tmp_path_factory.getbasetemp() / "t2l_home")})  # module scope: before the autouse one
    yield srv
    srv.conn.close()
    assert srv.stop() == 0, srv.log()[-3000:]  # Ctrl-C: a clean exit
    assert "Traceback" not in srv.log(), srv.log()[-4000:]
    if ROUTES:
        report(tmp_path_factory.getbasetemp(), "serve_fuzz", {"cases": sum(ROUTES.values()), "by_route": dict(ROUTES),
                                                               "by_status": dict(TALLY)})


# ------------------------------------------------------------------------------------------------ strategies

ANY_CHAR = st.characters(codec=None, categories=None)  # surrogates and control characters included
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
# few choices per example keep hypothesis fast enough for 2,000 cases in well under a minute
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(alphabet=ANY_CHAR, max_size=8))
JSON_ANY = st.one_of(JSON_SCALAR, st.lists(JSON_SCALAR, max_size=3), st.dictionaries(st.text(max_size=4), JSON_SCALAR, max_size=3),
                    st.lists(st.lists(JSON_SCALAR, max_size=2), max_size=2), st.dictionaries(st.text(max_size=3), st.lists(JSON_SCALAR, max_size=2),
                                                                                            max_size=2))
HEX = "0123456789abcdef"
IDS = st.one_of(st.text(alphabet=HEX, min_size=12, max_size=64), st.text(alphabet=ANY_CHAR, max_size=12),
                st.sampled_from(["", "../../etc/passwd", "/etc/passwd", "..", "%2e%2e", "x" * 5000, "A" * 64, "0" * 11, "0" * 63, "0" * 65,
                                 "C:\\windows", "~root", "t2l:", "\x00", "default"]))
MODELS = st.one_of(st.just(BASE), st.just(BASE), st.builds(lambda i: "t2l:" + i, IDS), st.text(alphabet=ANY_CHAR, max_size=30),
                   st.sampled_from(["gpt-4o", "", " ", BASE.upper(), "t2l", "T2L:abc", "../model", "/tmp/x"]), JSON_SCALAR)
MAX_TOKENS = st.one_of(st.integers(-3, MAX_TOKENS_CAP + 2), st.sampled_from([0, -1, -(2**63), 2**31, 2**63, 2**64 + 1, 10**30, MAX_TOKENS_CAP]),
                       st.floats(), st.sampled_from(["4", "", "many", True, False, None, [4], {"n": 4}]))
NUMBERS = st.one_of(st.floats(), st.integers(-(2**66), 2**66), st.sampled_from([0, 1, 0.0, 1.0, 2.0, 2.0001, -0.1, "0.5", None, True, [1]]))
STOPS = st.one_of(st.none(), st.text(alphabet=ANY_CHAR, max_size=5), st.lists(st.text(max_size=3), max_size=6), st.just(["x" * 201]), JSON_ANY)
TEXT = st.one_of(st.text(alphabet=ANY_CHAR, max_size=20), st.sampled_from(["", "\x00", "\ud800", "\x1b[2J", "a" * 3000, "\u202e"]),
                 st.builds(lambda a, s: a + s, st.text(max_size=10), SURROGATE))


PCT = st.integers(0, 99)
PLAIN = st.sampled_from(["Answer the question about the capital city of the given country.", "Give the antonym of the word.",
                         "Rewrite the disfluent question as a fluent question.", "classify the sentiment of the review"])
UNSEEN = st.builds(lambda a, b: f"{a} {b}", PLAIN, st.integers(0, 10**6))  # a new adapter each time
CONTROL_ONLY = st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), min_size=1, max_size=12)
OVERSIZED = st.builds(lambda n, c: c * n, st.sampled_from([MAX_DESCRIPTION_CHARS - 1, MAX_DESCRIPTION_CHARS, MAX_DESCRIPTION_CHARS + 1,
                                                            100_000, 600_000]), st.sampled_from(["a", "é", "数", "🙂", " "]))
DESCRIPTIONS = st.one_of(st.text(alphabet=ANY_CHAR, max_size=30), st.sampled_from(["", " ", "\x00", "\u200b", "\ud800", "a\ud800b", "\x1b[31m"]),
                         CONTROL_ONLY, OVERSIZED, st.builds(lambda a, s: a + s, st.text(max_size=10), SURROGATE), UNSEEN)
GOOD_DESCRIPTION = st.one_of(PLAIN, PLAIN, UNSEEN, DESCRIPTIONS)
SCALINGS = st.one_of(st.sampled_from(["rslora", "lora", "RSLORA", "", "none"]), JSON_SCALAR)
NAMES = st.one_of(TEXT, JSON_SCALAR, st.sampled_from(["../../x", "/abs", "con", "n" * 201, "n" * 300]))
EXTRA_KEYS = st.sampled_from(["path", "checkpoint", "file", "output", "id", "x"])
ODD_DESCRIPTION = st.one_of(JSON_SCALAR, st.lists(st.text(max_size=5), max_size=3))
ROLES_OK = st.sampled_from(["user", "system", "assistant"])
ROLES_ODD = st.one_of(st.sampled_from(["user", "tool", "developer", "function", "USER", "", "root"]), JSON_SCALAR)
CONTENT_OK = st.text(max_size=40)
CONTENT_ODD = st.one_of(TEXT, JSON_SCALAR, st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", 1]), "text": TEXT}),
                                                    max_size=3))
MESSAGES_OK = st.lists(st.fixed_dictionaries({"role": ROLES_OK, "content": CONTENT_OK}), min_size=1, max_size=3)
MESSAGES_ODD = st.lists(st.fixed_dictionaries({"role": st.one_of(ROLES_OK, ROLES_ODD), "content": st.one_of(CONTENT_OK, CONTENT_ODD)}),
                        min_size=1, max_size=4)
LONG = st.integers(10, 400)
PROMPTS = st.one_of(st.text(max_size=40), TEXT, st.lists(st.text(max_size=10), max_size=3), JSON_SCALAR)
SEEDS = st.one_of(st.integers(-(2**70), 2**70), JSON_SCALAR)
NS = st.one_of(st.integers(-2, 3), JSON_SCALAR)
STREAMS = st.one_of(st.booleans(), JSON_SCALAR)
STREAM_OPTIONS = st.one_of(st.just({"include_usage": True}), JSON_ANY)
KEYS = st.text(max_size=10)
VALID_TOKENS = st.integers(1, MAX_TOKENS_CAP)
VALID_TEMPERATURE = st.sampled_from([0, 0.0, 0.7, 1, 2.0])
DESCRIPTIONS_LIST = st.one_of(st.lists(GOOD_DESCRIPTION, max_size=4), st.just([]), st.just(["a task"] * 65), JSON_SCALAR)


def _maybe(draw, d: dict, key: str, strat, percent: int = 50) -> None:
    if draw(PCT) < percent:
        d[key] = draw(strat)


@st.composite
def t2l_ext(draw, valid: bool = False):
    kind = "desc" if valid else draw(st.sampled_from(["desc", "desc", "odd", "any"]))
    if kind == "any":
        return draw(JSON_ANY)
    ext: dict = {"description": draw(PLAIN if valid else GOOD_DESCRIPTION)}
    if kind == "odd":
        _maybe(draw, ext, "scale", NUMBERS)
        _maybe(draw, ext, "scaling", SCALINGS)
        _maybe(draw, ext, "name", NAMES)
        _maybe(draw, ext, draw(EXTRA_KEYS), JSON_ANY)
        _maybe(draw, ext, "description", ODD_DESCRIPTION, 30)
    return ext


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(["ok", "ok", "odd", "any", "empty", "long"]))
    if kind == "any":
        return draw(JSON_ANY)
    if kind == "empty":
        return []
    if kind == "long":  # past the tiny model's context
        return [{"role": "user", "content": "the cat sat on the mat " * draw(LONG)}]
    return draw(MESSAGES_OK if kind == "ok" else MESSAGES_ODD)


@st.composite
def sampling(draw, chat: bool) -> dict:
    """A completion body: a valid one (about a third; an adapter by description or id, or none), or one with odd fields."""
    if draw(PCT) < 35:
        body: dict = {"model": BASE, "max_tokens": draw(VALID_TOKENS), "temperature": draw(VALID_TEMPERATURE)}
        body["messages" if chat else "prompt"] = draw(MESSAGES_OK if chat else CONTENT_OK)
        _maybe(draw, body, "t2l", t2l_ext(valid=True), 50)
        _maybe(draw, body, "stream", st.booleans(), 40)
        _maybe(draw, body, "seed", st.integers(0, 2**32), 20)
        return body
    body = {"model": draw(MODELS)}
    body["messages" if chat else "prompt"] = draw(messages() if chat else PROMPTS)
    _maybe(draw, body, "max_tokens", MAX_TOKENS, 80)
    if chat:
        _maybe(draw, body, "max_completion_tokens", MAX_TOKENS, 10)
    _maybe(draw, body, "temperature", NUMBERS, 40)
    _maybe(draw, body, "top_p", NUMBERS, 20)
    _maybe(draw, body, "stop", STOPS, 20)
    _maybe(draw, body, "seed", SEEDS, 20)
    _maybe(draw, body, "n", NS, 10)
    _maybe(draw, body, "stream", STREAMS, 30)
    _maybe(draw, body, "stream_options", STREAM_OPTIONS, 10)
    _maybe(draw, body, "t2l", t2l_ext(), 40)
    _maybe(draw, body, draw(KEYS), JSON_ANY, 20)  # unknown top-level fields are ignored
    if draw(PCT) < 30 and body:  # drop a field, often a required one
        body.pop(draw(st.sampled_from(sorted(body))))
    return body


@st.composite
def adapter_body(draw):
    kind = draw(st.sampled_from(["one", "one", "many", "both", "none", "odd"]))
    body: dict = {}
    if kind in ("one", "both", "odd"):
        body["description"] = draw(GOOD_DESCRIPTION)
    if kind in ("many", "both"):
        body["descriptions"] = draw(DESCRIPTIONS_LIST)
    if kind == "odd":
        _maybe(draw, body, "description", JSON_ANY, 30)
        _maybe(draw, body, "scale", NUMBERS)
        _maybe(draw, body, "scaling", SCALINGS)
        _maybe(draw, body, "name", NAMES)
        _maybe(draw, body, draw(EXTRA_KEYS), JSON_ANY)
    return body


RAW = st.one_of(st.binary(max_size=80), st.sampled_from([b"", b"{", b"[", b"null", b"1", b'"x"', b"{'model': 1}", b'{"model": }',
                                                         b"\xff\xfe{}", b"\x00" * 10, b'{"a":' * 5000, b"[" * 100_000, b"{}" * 10,
                                                         b'{"model": "x", "model": 1}', b"NaN", b'{"max_tokens": Infinity}']))
POST_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/adapters"]
POST_ROUTE = st.sampled_from(POST_ROUTES)
ANY_ROUTE = st.sampled_from([*POST_ROUTES, "/v1/models", "/health", "/metrics", "/", "/v1", "/v1/nope", "/static/../../etc/passwd",
                             "/%2e%2e/%2e%2e/etc/passwd", "/static/index.html", "/v1/adapters/"])
METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
ID_ROUTES = st.sampled_from([("GET", ""), ("GET", "/download"), ("DELETE", ""), ("POST", ""), ("PUT", "/download")])
KINDS = st.sampled_from(["chat"] * 5 + ["completion"] * 3 + ["adapter"] * 3 + ["id"] * 2 + ["raw", "json_any", "method"])
# mostly JSON: FastAPI reads a body as JSON only with a JSON content type, so the others are all refused the same way
CTYPES = st.sampled_from(["application/json"] * 12 + ["text/plain", "", "application/x-www-form-urlencoded", "application/json; charset=latin-1"])


def _enc(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def cases(draw):
    """(method, path, body bytes | None, content type, vanish: close the connection after the first bytes)."""
    kind = draw(KINDS)
    ctype = draw(CTYPES)
    if kind in ("chat", "completion"):
        body = draw(sampling(chat=kind == "chat"))
        vanish = body.get("stream") is True and draw(PCT) < 50
        return "POST", "/v1/chat/completions" if kind == "chat" else "/v1/completions", _enc(body), ctype, vanish
    if kind == "adapter":
        return "POST", "/v1/adapters", _enc(draw(adapter_body())), ctype, False
    if kind == "id":
        aid = urllib.parse.quote(draw(IDS).encode("utf-8", "surrogatepass"), safe="")
        method, suffix = draw(ID_ROUTES)
        return method, f"/v1/adapters/{aid}{suffix}", None, ctype, False
    if kind == "raw":
        return "POST", draw(POST_ROUTE), draw(RAW), ctype, False
    if kind == "json_any":
        return "POST", draw(POST_ROUTE), _enc(draw(JSON_ANY)), ctype, False
    return draw(METHODS), draw(ANY_ROUTE), None, ctype, False


# ------------------------------------------------------------------------------------------------ checks


def _request(srv, method: str, path: str, body: bytes | None, ctype: str, vanish: bool) -> tuple[int, bytes]:
    headers = {"content-type": ctype} if ctype and body is not None else {}
    if vanish:  # a stream whose client goes away after the first bytes: the server must cancel it cleanly
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            first = resp.read1(64) if resp.status == 200 else resp.read()
            return resp.status, first
        finally:
            conn.close()
    for attempt in (0, 1):
        try:
            srv.conn.request(method, path, body=body, headers=headers)
            resp = srv.conn.getresponse()
            return resp.status, resp.read()
        except (http.client.HTTPException, ConnectionError) as exc:  # the server closed a keep-alive connection: reconnect once
            srv.conn.close()
            srv.conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            if attempt:
                raise AssertionError(f"no answer to {method} {path}: {exc!r}") from None
    raise AssertionError("unreachable")


def _check(method: str, path: str, status: int, data: bytes, streamed: bool, vanish: bool) -> None:
    assert status < 500, (method, path, status, data[:500])
    assert b"Traceback" not in data, data[:2000]
    if vanish or method == "HEAD" or 300 <= status < 400:  # 3xx: Starlette's trailing-slash redirect
        return
    if status >= 400:
        err = json.loads(data)["error"]
        assert isinstance(err["message"], str) and err["message"].strip() and "\n" not in err["message"], err
        assert isinstance(err["code"], str) and isinstance(err["type"], str), err
        return
    if path == "/" or path.startswith("/static/") or path == "/metrics":
        return
    if streamed:  # server-sent events: JSON chunks without an error, then [DONE]
        events = [e for e in data.decode().split("\n\n") if e.strip()]
        assert events[-1] == "data: [DONE]", events[-3:]
        for e in events[:-1]:
            payload = json.loads(e.removeprefix("data: "))
            assert "error" not in payload, payload
        return
    payload = json.loads(data)
    if path.endswith("/completions"):
        choice = payload["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        assert isinstance(text, str) and payload["usage"]["completion_tokens"] <= MAX_TOKENS_CAP, payload


@settings(FUZZ, max_examples=N_CASES)
@given(case=cases())
def test_fuzz_routes_no_5xx(server, case):
    method, path, body, ctype, vanish = case
    if body is not None:
        body = body.replace(_enc(BASE)[1:-1], server.base.encode())
    status, data = _request(server, method, path, body, ctype, vanish)
    streamed = status == 200 and data.startswith(b"data:")
    _check(method, path, status, data, streamed, vanish)
    ROUTES[f"{method} {re.sub(r'/v1/adapters/[^/]+', '/v1/adapters/{id}', path)}"] += 1
    TALLY[f"{status // 100}xx" if status >= 500 or status < 400 else str(status)] += 1


def test_server_still_answers_and_logged_no_traceback(server):
    """Runs after the fuzz target (file order): health, a real completion, and a clean access log."""
    status, health = _request(server, "GET", "/health", None, "", False)
    assert status == 200 and json.loads(health)["status"] == "ok"
    req = {"model": server.base, "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 4, "temperature": 0,
           "t2l": {"description": "Answer the question about the capital city of the given country."}}
    status, data = _request(server, "POST", "/v1/chat/completions", _enc(req), "application/json", False)
    assert status == 200, data[:500]
    assert json.loads(data)["t2l"]["adapter_id"]
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    fives = [ln for ln in log.splitlines() if re.search(r'" 5\d\d ', ln)]
    assert not fives, fives[:20]
    if ROUTES and os.environ.get("T2L_SERVE_FUZZ_EXAMPLES") is None:
        assert sum(ROUTES.values()) >= 2000, ROUTES  # the issue asks for at least 2,000 cases across the routes


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_lone_surrogate_in_the_input_is_answered(server, route):
    """Found by this fuzz test (it reached the tokenizer: 500); the input text now gets U+FFFD in its place."""
    text = "the cat \ud800"
    body = {"model": server.base, "max_tokens": 2, "temperature": 0}
    body.update({"messages": [{"role": "user", "content": text}]} if route.endswith("chat/completions") else {"prompt": text})
    status, data = _request(server, "POST", route, _enc(body), "application/json", False)
    assert status == 200, (status, data[:300])
    assert "\ud800" not in data.decode("utf-8")  # what comes back is valid UTF-8
