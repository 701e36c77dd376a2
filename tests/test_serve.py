"""`t2l serve`: a real uvicorn server on 127.0.0.1 around the tiny checkpoint, exercised with the `openai` client,
httpx and curl: OpenAI routes (plain and streamed), adapter routes, cache, batching, auth, limits and bad input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_helpers import LiveServer, tiny_engine

DESC = "answer math word problems step by step"
DESC2 = "translate english into french"
PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def srv(tiny_checkpoint_dir: Path):
    with LiveServer(tiny_engine(tiny_checkpoint_dir, max_batch=4)) as s:
        yield s


@pytest.fixture(scope="module")
def http(srv: LiveServer):
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


def chat_body(srv: LiveServer, content: str = PROMPT, **kw) -> dict:
    return {"model": srv.base, "messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 0, **kw}


def assert_error(r: httpx.Response, status: int, code: str | None = None, words: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"], err
    assert "Traceback" not in r.text
    if code:
        assert err["code"] == code, err
    if words:
        assert words in err["message"], err
    return err


# ---- OpenAI routes ------------------------------------------------------------------------------------------------------


def test_openai_client_with_and_without_description(srv: LiveServer):
    from openai import OpenAI

    client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    base = client.chat.completions.create(model=srv.base, messages=[{"role": "user", "content": PROMPT}], max_tokens=12, temperature=0)
    assert base.object == "chat.completion" and base.choices[0].message.role == "assistant"
    assert base.model_extra["t2l"]["adapter_id"] is None and base.usage.completion_tokens >= 1
    first = client.chat.completions.create(model=srv.base, messages=[{"role": "user", "content": PROMPT}], max_tokens=12, temperature=0,
                                           extra_body={"t2l": {"description": DESC}})
    info = first.model_extra["t2l"]
    assert len(info["adapter_id"]) == 64 and info["cached"] is False and info["generate_ms"] > 0
    assert first.model == f"t2l:{info['adapter_id']}"
    again = client.chat.completions.create(model=srv.base, messages=[{"role": "user", "content": PROMPT}], max_tokens=12, temperature=0,
                                           extra_body={"t2l": {"description": DESC}})
    assert again.model_extra["t2l"]["adapter_id"] == info["adapter_id"] and again.model_extra["t2l"]["cached"] is True
    assert again.model_extra["t2l"]["generate_ms"] == 0.0
    assert again.choices[0].message.content == first.choices[0].message.content  # greedy: same adapter, same answer
    by_id = client.chat.completions.create(model=f"t2l:{info['adapter_id']}", messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                                           temperature=0)
    assert by_id.choices[0].message.content == first.choices[0].message.content
    models = client.models.list()
    ids = {m.id: m for m in models.data}
    assert srv.base in ids and f"t2l:{info['adapter_id']}" in ids
    assert ids[f"t2l:{info['adapter_id']}"].model_extra["parent"] == srv.base


def test_openai_client_streaming_matches_plain(srv: LiveServer):
    from openai import OpenAI

    client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=srv.base, messages=[{"role": "user", "content": PROMPT}], max_tokens=12, temperature=0, extra_body={"t2l": {"description": DESC}})
    plain = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert all(c.model_extra["t2l"]["adapter_id"] for c in chunks)
    comp = client.completions.create(model=srv.base, prompt=PROMPT, max_tokens=8, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=srv.base, prompt=PROMPT, max_tokens=8, temperature=0, stream=True))
    assert comp.object == "text_completion" and streamed == comp.choices[0].text


def test_sse_wire_format_ends_with_done(srv: LiveServer, http: httpx.Client):
    with http.stream("POST", "/v1/chat/completions", json=chat_body(srv, stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "decode_ms" in last["t2l"]


def test_curl(srv: LiveServer):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = json.dumps(chat_body(srv, t2l={"description": DESC2}))
    out = subprocess.run([curl, "-sS", f"{srv.url}/v1/chat/completions", "-H", "content-type: application/json", "-d", body],
                         capture_output=True, text=True, timeout=60)
    data = json.loads(out.stdout)
    assert data["choices"][0]["message"]["content"] is not None and data["t2l"]["adapter_id"]
    out = subprocess.run([curl, "-sS", "-N", f"{srv.url}/v1/completions", "-H", "content-type: application/json", "-d",
                          json.dumps({"model": srv.base, "prompt": PROMPT, "max_tokens": 4, "stream": True})],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.rstrip().endswith("data: [DONE]")
    out = subprocess.run([curl, "-sS", "-w", "%{http_code}", f"{srv.url}/v1/chat/completions", "-d", "{not json"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.endswith("400") and "invalid_json" in out.stdout


def test_stop_seed_and_sampling(srv: LiveServer, http: httpx.Client):
    base = http.post("/v1/completions", json={"model": srv.base, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}).json()
    text = base["choices"][0]["text"]
    if len(text) >= 3:
        cut = text[2:4] if text[2:4].strip() else text[1:2]
        stopped = http.post("/v1/completions", json={"model": srv.base, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stop": [cut]}).json()
        assert stopped["choices"][0]["text"] == text[: text.find(cut)] and stopped["choices"][0]["finish_reason"] == "stop"
    sampled = [http.post("/v1/completions", json={"model": srv.base, "prompt": PROMPT, "max_tokens": 10, "temperature": 1.0, "top_p": 0.9,
                                                  "seed": 7}).json()["choices"][0]["text"] for _ in range(2)]
    assert sampled[0] == sampled[1]  # same seed, same tokens


# ---- adapter routes -----------------------------------------------------------------------------------------------------


def test_adapter_routes_and_download_matches_generate(srv: LiveServer, http: httpx.Client, runner, cli_app, tiny_checkpoint_dir: Path,
                                                      tmp_path: Path):
    r = http.post("/v1/adapters", json={"description": DESC, "name": "math"})
    assert r.status_code == 200, r.text
    ad = r.json()
    assert ad["object"] == "adapter" and ad["model"] == f"t2l:{ad['id']}" and ad["parent"] == srv.base and ad["generate_ms"] >= 0
    assert http.post("/v1/adapters", json={"description": DESC}).json()["id"] == ad["id"]  # content hash: same description, same id
    other = http.post("/v1/adapters", json={"description": DESC, "scale": 0.5}).json()["id"]
    assert other != ad["id"]
    many = http.post("/v1/adapters", json={"descriptions": [DESC, DESC2]}).json()
    assert [a["id"] for a in many["data"]][0] == ad["id"] and len(many["data"]) == 2
    listed = {a["id"] for a in http.get("/v1/adapters").json()["data"]}
    assert {ad["id"], other} <= listed
    shown = http.get(f"/v1/adapters/{ad['id']}").json()
    assert shown["config"]["peft_type"] == "LORA" and "text-to-lora" in shown["card"] and shown["metadata"]["description"] == DESC

    z = http.get(f"/v1/adapters/{ad['id']}/download")
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(z.content))
    names = {Path(n).name: n for n in zf.namelist()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "t2l_adapter.json"} <= set(names)
    res = runner.invoke(cli_app, ["generate", DESC, "-o", str(tmp_path / "gen"), "--checkpoint", str(tiny_checkpoint_dir)])
    assert res.exit_code == 0, res.output
    assert zf.read(names["adapter_model.safetensors"]) == (tmp_path / "gen" / "adapter_model.safetensors").read_bytes()
    assert json.loads(zf.read(names["adapter_config.json"])) == json.loads((tmp_path / "gen" / "adapter_config.json").read_text())
    # one id everywhere: serve's id is the sha256 that `t2l generate --json` reports (and the vLLM resolver's id)
    from t2lcli.engine.adapters import tensors_sha256
    from t2lcli.engine.vllm_resolver import adapter_id

    gen_json = runner.invoke(cli_app, ["generate", DESC, "-o", str(tmp_path / "gen2"), "--checkpoint", str(tiny_checkpoint_dir), "--json"])
    assert gen_json.exit_code == 0, gen_json.output
    sha = json.loads(gen_json.stdout)["sha256"]
    assert ad["id"] == sha == tensors_sha256(tmp_path / "gen" / "adapter_model.safetensors") == adapter_id(tmp_path / "gen2" / "adapter_model.safetensors")
    assert http.get(f"/v1/adapters/{sha[:12]}").json()["id"] == sha  # a unique prefix names it too
    assert_error(http.get(f"/v1/adapters/{sha[:11]}"), 404, "adapter_not_found")  # shorter than 12 hex digits: no lookup

    assert http.delete(f"/v1/adapters/{other}").json() == {"id": other, "object": "adapter", "deleted": True}
    assert_error(http.get(f"/v1/adapters/{other}"), 404, "adapter_not_found")
    assert_error(http.delete(f"/v1/adapters/{other}"), 404, "adapter_not_found")


def test_greedy_equals_generate_plus_peft(srv: LiveServer, http: httpx.Client, runner, cli_app, tiny_checkpoint_dir: Path,
                                          tiny_base_dir: Path, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = runner.invoke(cli_app, ["generate", DESC2, "-o", str(tmp_path / "a"), "--checkpoint", str(tiny_checkpoint_dir)])
    assert res.exit_code == 0, res.output
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), str(tmp_path / "a")).eval()
    for content in (PROMPT, "add two numbers", "what is the capital of france"):
        prompt = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
        want = out[0, enc["input_ids"].shape[1]:].tolist()
        want = want[: next((i for i, t in enumerate(want) if t == tok.eos_token_id), len(want))]
        got = http.post("/v1/chat/completions", json=chat_body(srv, content, max_tokens=16, t2l={"description": DESC2})).json()
        assert got["choices"][0]["message"]["content"] == tok.decode(want, skip_special_tokens=True), content


def test_mixed_adapters_in_one_batch_equal_one_at_a_time(srv: LiveServer, http: httpx.Client):
    from t2lcli.engine.serve.engine import Job

    eng = srv.engine
    a = http.post("/v1/adapters", json={"description": DESC}).json()["id"]
    b = http.post("/v1/adapters", json={"description": DESC2, "scaling": "lora"}).json()["id"]
    rows = [(None, "the cat"), (a, PROMPT), (b, "add two numbers please"), (a, "capital of france")]

    def run(batch: list[tuple[str | None, str]]) -> list[tuple[list[int], int]]:
        done = [threading.Event() for _ in batch]
        jobs = []
        for i, (aid, text) in enumerate(batch):
            ev: dict = {}

            def sink(e: dict, i: int = i, ev: dict = ev) -> None:
                if e["type"] != "delta":
                    ev.update(e)
                    done[i].set()

            jobs.append((Job(eng.text_ids(text), 10, sink, temperature=0.0, entry=eng.cache.get(aid) if aid else None), ev))
        for j, _ in jobs:
            eng.submit(j)
        assert all(d.wait(60) for d in done)
        return [(j.generated, ev["batch_size"]) for j, ev in jobs]

    together = run(rows)
    assert [bs for _, bs in together] == [4, 4, 4, 4]
    alone = [run([r])[0] for r in rows]
    assert [toks for toks, _ in together] == [toks for toks, _ in alone]
    assert alone[0][0] != alone[1][0] or alone[1][0] != alone[2][0]  # the adapters change the output

    # continuous batching: requests that arrive while a batch decodes join it (their KV rows are merged in)
    hook = eng.model.register_forward_pre_hook(lambda *_: time.sleep(0.02))
    try:
        first = threading.Thread(target=lambda: joined.append(run([rows[1]])[0]))
        joined: list = []
        first.start()
        while not eng.scheduler.q.empty() or eng.scheduler.waiting:
            time.sleep(0.005)
        time.sleep(0.05)
        late = run([rows[0], rows[2]])
        first.join(60)
    finally:
        hook.remove()
    assert all(bs >= 2 for _, bs in late), late
    assert [toks for toks, _ in late] == [alone[0][0], alone[2][0]] and joined[0][0] == alone[1][0]


# ---- cache -------------------------------------------------------------------------------------------------------------


def test_cache_lru_eviction_dedup_and_in_use(tiny_checkpoint_dir: Path):
    with LiveServer(tiny_engine(tiny_checkpoint_dir, max_adapters=2)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        ids = [c.post("/v1/adapters", json={"description": d}).json()["id"] for d in (DESC, DESC2, "sort a list of numbers")]
        assert len(set(ids)) == 3  # ids are content hashes: the tiny checkpoint gives some descriptions the same weights
        assert_error(c.get(f"/v1/adapters/{ids[0]}"), 404, "adapter_not_found")  # least recently used went first
        assert c.get(f"/v1/adapters/{ids[2]}").status_code == 200
        assert s.engine.cache.evictions == 1

        before = s.engine.adapters_generated
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda _: c.post("/v1/adapters", json={"description": "summarize text"}).json()["id"], range(8)))
        assert len(set(got)) == 1 and s.engine.adapters_generated == before + 1  # 8 concurrent requests, one generation

        # an adapter in use survives eviction pressure and DELETE: the request that uses it finishes normally
        gate = threading.Event()
        model = s.engine.model
        hook = model.register_forward_pre_hook(lambda *_: gate.wait(10) and None)
        body = {"model": s.base, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6, "temperature": 0,
                "t2l": {"description": "write code python"}}
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(lambda: c.post("/v1/chat/completions", json=body).json())
            for _ in range(200):
                if any(e.in_use for e in s.engine.cache.entries()):
                    break
                time.sleep(0.01)
            busy = next(e.id for e in s.engine.cache.entries() if e.in_use)
            for d in ("solve", "name capital city", "question"):
                c.post("/v1/adapters", json={"description": d})
            assert busy in {e.id for e in s.engine.cache.entries()}  # in use: not evicted
            assert c.delete(f"/v1/adapters/{busy}").status_code == 200
            gate.set()
            out = fut.result(60)
        hook.remove()
        assert out["t2l"]["adapter_id"] == busy and out["choices"][0]["finish_reason"] in ("stop", "length")
        expected = c.post("/v1/chat/completions", json=body).json()
        assert expected["choices"][0]["message"]["content"] == out["choices"][0]["message"]["content"]
        assert len(s.engine.cache) <= 2


# ---- auth, limits, bad input --------------------------------------------------------------------------------------------


def test_auth(tiny_checkpoint_dir: Path):
    from openai import AuthenticationError, OpenAI

    key = "k" * 24
    with LiveServer(tiny_engine(tiny_checkpoint_dir), api_key=key) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert_error(c.get("/v1/models"), 401, "invalid_api_key", "missing")
        assert_error(c.get("/v1/models", headers={"authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_error(c.post("/v1/adapters", json={"description": DESC}, headers={"authorization": f"Basic {key}"}), 401)
        assert c.get("/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/health").status_code == 200  # health and metrics stay open for probes
        ok = OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        assert ok.chat.completions.create(model=s.base, messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=s.url + "/v1", api_key="nope", max_retries=0).models.list()


def _bad_inputs(base: str) -> list[tuple[str, str, object, int, str]]:
    msg = [{"role": "user", "content": "hi"}]
    return [
        ("malformed JSON", "/v1/chat/completions", b'{"model": ', 400, "invalid_json"),
        ("not an object", "/v1/chat/completions", [1, 2], 400, "invalid_value"),
        ("deeply nested", "/v1/chat/completions", b"[" * 50000 + b"]" * 50000, 400, "invalid_json"),
        ("max_tokens a string", "/v1/chat/completions", {"model": base, "messages": msg, "max_tokens": "5"}, 400, "invalid_value"),
        ("messages not a list", "/v1/chat/completions", {"model": base, "messages": "hi"}, 400, "invalid_value"),
        ("no messages", "/v1/chat/completions", {"model": base, "messages": []}, 400, "invalid_value"),
        ("bad role", "/v1/chat/completions", {"model": base, "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value"),
        ("missing model", "/v1/chat/completions", {"messages": msg}, 400, "invalid_value"),
        ("unknown model", "/v1/chat/completions", {"model": "gpt-4", "messages": msg}, 404, "model_not_found"),
        ("unknown t2l id", "/v1/chat/completions", {"model": "t2l:" + "0" * 64, "messages": msg}, 404, "adapter_not_found"),
        ("t2l id with a path", "/v1/chat/completions", {"model": "t2l:../../etc/passwd", "messages": msg}, 404, "adapter_not_found"),
        ("id and description", "/v1/chat/completions", {"model": "t2l:" + "0" * 64, "messages": msg, "t2l": {"description": DESC}}, 400,
         "invalid_value"),
        ("empty description", "/v1/chat/completions", {"model": base, "messages": msg, "t2l": {"description": "  "}}, 400, "invalid_description"),
        ("oversized description", "/v1/chat/completions", {"model": base, "messages": msg, "t2l": {"description": "a" * 20001}}, 400,
         "invalid_description"),
        ("control characters only", "/v1/chat/completions", {"model": base, "messages": msg, "t2l": {"description": "\x01\x02\x7f\u200b"}},
         400, "invalid_description"),
        ("description not text", "/v1/chat/completions", {"model": base, "messages": msg, "t2l": {"description": 5}}, 400, "invalid_value"),
        ("unknown t2l field", "/v1/chat/completions", {"model": base, "messages": msg, "t2l": {"path": "/etc/passwd"}}, 400, "invalid_value"),
        ("scale NaN", "/v1/chat/completions", b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "t2l": {"description": "x", '
         b'"scale": NaN}}' % base.encode(), 400, "invalid_value"),
        ("max_tokens 0", "/v1/chat/completions", {"model": base, "messages": msg, "max_tokens": 0}, 400, "invalid_value"),
        ("max_tokens negative", "/v1/completions", {"model": base, "prompt": "x", "max_tokens": -3}, 400, "invalid_value"),
        ("max_tokens huge", "/v1/chat/completions", {"model": base, "messages": msg, "max_tokens": 10**12}, 400, "invalid_value"),
        ("n=2", "/v1/chat/completions", {"model": base, "messages": msg, "n": 2}, 400, "invalid_value"),
        ("temperature too high", "/v1/chat/completions", {"model": base, "messages": msg, "temperature": 9}, 400, "invalid_value"),
        ("too many stops", "/v1/completions", {"model": base, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value"),
        ("prompt list of tokens", "/v1/completions", {"model": base, "prompt": [1, 2, 3]}, 400, "invalid_value"),
        ("two prompts", "/v1/completions", {"model": base, "prompt": ["a", "b"]}, 400, "invalid_value"),
        ("prompt too long", "/v1/completions", {"model": base, "prompt": "the cat " * 400, "max_tokens": 4}, 400, "context_length_exceeded"),
        ("adapter: neither", "/v1/adapters", {"scale": 1.0}, 400, "invalid_value"),
        ("adapter: both", "/v1/adapters", {"description": DESC, "descriptions": [DESC]}, 400, "invalid_value"),
        ("adapter: bad scaling", "/v1/adapters", {"description": DESC, "scaling": "huge"}, 400, "invalid_value"),
        ("adapter: file path field", "/v1/adapters", {"description": DESC, "output": "/tmp/x"}, 400, "invalid_value"),
        ("adapter: empty in list", "/v1/adapters", {"descriptions": [DESC, ""]}, 400, "invalid_description"),
        ("body over 1 MiB", "/v1/chat/completions", {"model": base, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}, 413,
         "request_too_large"),
    ]


def test_every_bad_input_gets_one_clear_4xx(srv: LiveServer, http: httpx.Client):
    for name, route, body, status, code in _bad_inputs(srv.base):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = http.post(route, content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        err = assert_error(r, status, code)
        assert "\n" not in err["message"] and len(err["message"]) < 400, (name, err)
    assert_error(http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(http.get("/v1/chat/completions"), 405, "method_not_allowed")
    assert_error(http.get("/v1/adapters/%2e%2e%2fetc%2fpasswd/download"), 404)
    assert http.get("/health").json()["status"] == "ok"  # still answering


def test_odd_but_valid_input_is_answered(srv: LiveServer, http: httpx.Client):
    odd = [
        b'{"model": "%s", "messages": [{"role": "user", "content": "lone \\ud800 surrogate"}], "max_tokens": 3}' % srv.base.encode(),
        json.dumps({"model": srv.base, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "temperature": 1e-30}).encode(),
        json.dumps({"model": srv.base, "messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}], "max_tokens": 3,
                    "seed": -(10**30), "top_p": 1e-9, "user": "ignored", "frequency_penalty": 0}).encode(),
        json.dumps({"model": srv.base, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                    "t2l": {"description": "lone \ud800 surrogate in a description"}}).encode(),
    ]
    for body in odd:
        r = http.post("/v1/chat/completions", content=body)
        assert r.status_code == 200, (body, r.text)
        assert isinstance(r.json()["choices"][0]["message"]["content"], str)


def test_queue_full_answers_503_with_retry_after(tiny_checkpoint_dir: Path):
    with LiveServer(tiny_engine(tiny_checkpoint_dir, max_batch=1, queue_size=1)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        gate = threading.Event()
        hook = s.engine.model.register_forward_pre_hook(lambda *_: gate.wait(10) and None)  # a busy model
        body = {"model": s.base, "prompt": PROMPT, "max_tokens": 2}
        try:
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(c.post, "/v1/completions", json=body)
                while not s.engine.scheduler.q.empty() or s.engine.scheduler.waiting:  # the first one is being decoded
                    time.sleep(0.01)
                time.sleep(0.05)
                second = pool.submit(c.post, "/v1/completions", json=body)
                while s.engine.scheduler.waiting < 1:
                    time.sleep(0.01)
                r = c.post("/v1/completions", json=body)
                assert_error(r, 503, "queue_full")
                assert r.headers["retry-after"] == "1"
                gate.set()
                assert first.result(60).status_code == 200 and second.result(60).status_code == 200
        finally:
            gate.set()
            hook.remove()


def test_client_that_disconnects_cancels_its_generation(tiny_checkpoint_dir: Path):
    with LiveServer(tiny_engine(tiny_checkpoint_dir)) as s:
        reasons: list[str] = []
        tokens: list[int] = []
        orig = s.engine.scheduler._finish
        s.engine.scheduler._finish = lambda job, reason: (reasons.append(reason), tokens.append(len(job.generated)),  # type: ignore[method-assign]
                                                          orig(job, reason))
        hook = s.engine.model.register_forward_pre_hook(lambda *_: time.sleep(0.05))  # a slow model: 200 tokens take 10 s
        body = {"model": s.base, "prompt": PROMPT, "max_tokens": 200, "temperature": 1.0, "seed": 1}
        try:
            with httpx.Client(base_url=s.url, timeout=60) as c, c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                for _ in r.iter_lines():
                    break
            with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=s.url, timeout=0.5) as c:
                c.post("/v1/completions", json=body)
            deadline = time.time() + 10
            while len(reasons) < 2 and time.time() < deadline:
                time.sleep(0.05)
        finally:
            hook.remove()
        assert reasons == ["cancelled", "cancelled"] and max(tokens) < 100, (reasons, tokens)
        assert s.engine.scheduler.thread.is_alive()


# ---- health, metrics, log -----------------------------------------------------------------------------------------------


def test_health_metrics_and_access_log(srv: LiveServer, http: httpx.Client, capsys):
    http.post("/v1/chat/completions", json=chat_body(srv, t2l={"description": DESC}))
    http.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["model"] == srv.base
    text = http.get("/metrics").text
    for needle in ('t2l_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
                   't2l_requests_total{method="POST",route="/v1/chat/completions",status="400"}',
                   "t2l_adapter_cache_hits_total", "t2l_adapter_cache_misses_total", "t2l_adapter_cache_evictions_total",
                   "t2l_adapter_generate_ms_count", "t2l_generated_tokens_total", "t2l_tokens_per_second", "t2l_queue_depth",
                   't2l_batch_size_bucket{le="1.0"}'):
        assert needle in text, needle
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if '"POST /v1/chat/completions"' in ln]
    assert len(lines) == 2 and lines[0].split()[-2] == "200" and lines[1].split()[-2] == "400"
    assert "Traceback" not in err


def test_page_at_root(srv: LiveServer, http: httpx.Client):
    r = http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "t2l" in r.text


# ---- the command -----------------------------------------------------------------------------------------------------


def test_non_loopback_host_needs_a_key(runner, cli_app, tmp_path: Path):
    res = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "--api-key-file" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--api-key-file", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "cannot read" in res.output
    (tmp_path / "short").write_text("abc\n")
    res = runner.invoke(cli_app, ["serve", "--api-key-file", str(tmp_path / "short")])
    assert res.exit_code != 0 and "at least 16" in res.output
    res = runner.invoke(cli_app, ["serve", "--max-batch", "0"])
    assert res.exit_code != 0 and "--max-batch" in res.output
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = runner.invoke(cli_app, ["serve", "--port", str(busy.getsockname()[1])])
    assert res.exit_code != 0 and "cannot listen" in res.output and "Traceback" not in res.output


def test_t2l_serve_process_ready_answers_and_stops_on_ctrl_c(tiny_checkpoint_dir: Path, tmp_path: Path):
    import os
    import signal
    import sys

    key = tmp_path / "key"
    key.write_text("s3cret-key-0123456789\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "t2lcli", "serve", "--checkpoint", str(tiny_checkpoint_dir), "--port", "0",
                             "--api-key-file", str(key)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = proc.stdout.readline()
        ready_s = time.perf_counter() - t0
        assert "listening on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split("listening on ")[1].split()[0]
        headers = {"authorization": "Bearer s3cret-key-0123456789"}
        r = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=60,
                       json={"model": str(Path(tiny_checkpoint_dir).parent.parent / "x"), "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404  # the tiny base is named by its folder
        base = httpx.get(f"{url}/v1/models", headers=headers, timeout=60).json()["data"][0]["id"]
        r = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=60,
                       json={"model": base, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "t2l": {"description": DESC}})
        assert r.status_code == 200 and r.json()["t2l"]["adapter_id"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err
    assert '"POST /v1/chat/completions" 200' in err
    print(f"t2l serve (tiny checkpoint) ready in {ready_s:.1f}s")
