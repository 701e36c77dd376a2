"""Speed and load figures of `t2l serve` (issue 20), measured on this machine in one run, loopback only.

    python benchmarks/serve_load.py                 # the default checkpoint + SmolLM2-135M, the issue's sizes
    python benchmarks/serve_load.py --quick         # smaller counts (a smoke run, ~1-2 min)
    python benchmarks/serve_load.py --json out.json # also write the figures as JSON

Starts its own servers (`python -m t2lcli serve` on 127.0.0.1, free ports), one after another, and stops each one;
every phase is bounded in count and the whole run by --time-limit. Sections:

  (a) time to first token of a new description vs the base's TTFT + the adapter's generation time + 20 ms
  (b) decode tokens/s with a cached adapter vs the base with no adapter (target: within 10%)
  (c) C clients x D distinct descriptions x R requests each: failures, p50/p95 latency, total tokens/s, on a server
      with mixed-adapter batching (--max-batch C) and on one serving the same requests one at a time (--max-batch 1)
  (d) N distinct descriptions through a --max-adapters 64 server: the server's peak RSS after 100 and after N

Figures on a shared CPU depend on its load: the CPU model and the load average (start and end) are printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Name the largest city of Australia.", "Rewrite: uh what is the the time now?",
           "Is this review positive? The food was cold.", "Give the opposite of the word 'happy'.", "Summarize: the cat sat on the mat.",
           "Which disease is named in: patients with cystic fibrosis improved.", "Make this polite: give me the salt."]
TASKS = ["Answer the question about the capital city of the given country.", "Rewrite the disfluent question as a fluent question.",
         "Give the antonym of the given word.", "Extract the disease names mentioned in the sentence.",
         "Rewrite the negative restaurant review so that it becomes positive.", "Summarize the sentence in a few words.",
         "Classify the sentiment of the review as positive or negative.", "Translate the English sentence into French."]
# a raw completion that keeps going (greedy), with or without an adapter, so decoding can be timed over many tokens
LONG_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`t2l serve` on 127.0.0.1 in a child process; stopped with SIGINT (SIGKILL after 20 s)."""

    def __init__(self, args: argparse.Namespace, *extra: str, label: str) -> None:
        self.port = free_port()
        self.label = label
        cmd = [sys.executable, "-m", "t2lcli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *extra]
        for flag, value in (("--checkpoint", args.checkpoint), ("--base-model", args.base_model), ("--profile", args.profile)):
            if value:
                cmd += [flag, value]
        self.cmd = cmd
        self.log = tempfile.NamedTemporaryFile(prefix=f"t2l-serve-{label}-", suffix=".log", delete=False)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"t2l serve ({label}) exited with {self.proc.returncode}:\n{Path(self.log.name).read_text()[-3000:]}")
            try:
                status, _ = self.request("GET", "/health", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 180:
                self.stop()
                raise SystemExit(f"t2l serve ({label}) not ready after 180 s")
            time.sleep(0.2)
        self.ready_s = time.perf_counter() - t0
        self.base = self.request("GET", "/v1/models")[1]["data"][0]["id"]

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 300) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers={"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, (json.loads(data) if data[:1] in (b"{", b"[") else {})
        finally:
            conn.close()

    def stream(self, body: dict, timeout: float = 300, route: str = "/v1/chat/completions") -> dict:
        """One streamed completion: ttft_ms (first non-empty token), token arrival times, t2l info, status."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        t0 = time.perf_counter()
        times: list[float] = []
        info: dict = {}
        try:
            conn.request("POST", route, body=json.dumps({**body, "stream": True}),
                         headers={"content-type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                return {"status": resp.status, "error": resp.read()[:300].decode(errors="replace")}
            while True:
                line = resp.readline()
                if not line:
                    return {"status": 200, "error": "stream ended without [DONE]"}
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                msg = json.loads(data)
                if "error" in msg:
                    return {"status": 200, "error": msg["error"].get("message")}
                info = msg.get("t2l") or info
                for ch in msg.get("choices", []):
                    if (ch.get("delta") or {}).get("content") or ch.get("text"):
                        times.append(time.perf_counter())
        finally:
            conn.close()
        end = time.perf_counter()
        return {"status": 200, "ttft_ms": (times[0] - t0) * 1000 if times else None, "times": times, "t2l": info,
                "total_ms": (end - t0) * 1000}

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        log = Path(self.log.name).read_text(errors="replace")
        self.tracebacks = log.count("Traceback")
        self.errors_5xx = sum(1 for ln in log.splitlines() if '" 5' in ln and ln.split('" ', 1)[-1][:1] == "5")
        os.unlink(self.log.name)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def chat(model: str, prompt: str, max_tokens: int, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0, **extra}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise SystemExit(f"--time-limit reached during {what}; rerun with a larger limit or --quick")


def section_ttft_decode(srv: Server, args: argparse.Namespace, budget: Budget) -> dict:
    """(a) and (b) on one server, interleaved so that load changes hit both sides alike."""
    run_id = f"{time.time_ns():x}"
    base_ttft, new_ttft, gen_ms, cached_ttft = [], [], [], []
    for i in range(args.ttft_runs):
        budget.check("(a) time to first token")
        prompt = PROMPTS[i % len(PROMPTS)]
        b = srv.stream(chat(srv.base, prompt, 4))
        desc = f"{TASKS[i % len(TASKS)]} (run {run_id}, variant {i})"  # a description this server has never seen
        n = srv.stream(chat(srv.base, prompt, 4, t2l={"description": desc}))
        c = srv.stream(chat(f"t2l:{n['t2l']['adapter_id']}", prompt, 4)) if n.get("t2l") else {}
        for r in (b, n, c):
            if r.get("error"):
                raise SystemExit(f"(a) a request failed: {r}")
        assert n["t2l"]["cached"] is False, n["t2l"]
        base_ttft.append(b["ttft_ms"])
        new_ttft.append(n["ttft_ms"])
        gen_ms.append(n["t2l"]["generate_ms"])
        cached_ttft.append(c["ttft_ms"])
    a = {"runs": args.ttft_runs, "base_ttft_ms": statistics.median(base_ttft), "new_description_ttft_ms": statistics.median(new_ttft),
         "adapter_generate_ms": statistics.median(gen_ms), "cached_adapter_ttft_ms": statistics.median(cached_ttft)}
    # per run, so a load spike on one side is not compared with a quiet moment on the other
    a["budget_ms"] = statistics.median(bt + g + 20 for bt, g in zip(base_ttft, gen_ms, strict=True))
    a["overhead_ms"] = statistics.median(nt - bt - g for nt, bt, g in zip(new_ttft, base_ttft, gen_ms, strict=True))
    a["met"] = a["overhead_ms"] <= 20

    status, made = srv.request("POST", "/v1/adapters", {"description": TASKS[0]})
    assert status == 200, made
    rates: dict[str, list[float]] = {"base": [], "adapter": []}
    tokens: dict[str, list[int]] = {"base": [], "adapter": []}
    for _ in range(args.decode_runs):
        budget.check("(b) decode tokens/s")
        for side, model in (("base", srv.base), ("adapter", f"t2l:{made['id']}")):
            body = {"model": model, "prompt": LONG_PROMPT, "max_tokens": args.decode_tokens, "temperature": 0}
            r = srv.stream(body, route="/v1/completions")
            if r.get("error") or len(r["times"]) < 8:
                raise SystemExit(f"(b) {side}: too few tokens to time decoding: {r.get('error') or len(r['times'])}")
            t = r["times"]
            rates[side].append((len(t) - 1) / (t[-1] - t[0]))  # decode only: from the first token to the last
            tokens[side].append(len(t))
    base_rate, ad_rate = statistics.median(rates["base"]), statistics.median(rates["adapter"])
    b = {"runs": args.decode_runs, "base_tok_s": base_rate, "adapter_tok_s": ad_rate, "ratio": ad_rate / base_rate,
         "tokens_median": statistics.median(tokens["base"] + tokens["adapter"]), "met": ad_rate >= 0.9 * base_rate}
    return {"a": a, "b": b}


def run_clients(srv: Server, args: argparse.Namespace) -> dict:
    """C threads; client k sends R requests, all with description k mod D (adapters made beforehand)."""
    ids = []
    for d in range(args.descriptions):
        status, made = srv.request("POST", "/v1/adapters", {"description": TASKS[d % len(TASKS)] + f" (set {d // len(TASKS)})"})
        assert status == 200, made
        ids.append(made["id"])
    lat: list[float] = []
    toks = [0]
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(args.clients)

    def client(k: int) -> None:
        start.wait()
        for r in range(args.requests):
            body = chat(f"t2l:{ids[k % args.descriptions]}", PROMPTS[(k + r) % len(PROMPTS)], args.load_tokens)
            t0 = time.perf_counter()
            try:
                status, out = srv.request("POST", "/v1/chat/completions", body)
            except OSError as exc:
                status, out = 0, {"error": repr(exc)}
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                if status != 200:
                    failures.append(f"{status}: {str(out)[:200]}")
                else:
                    lat.append(dt)
                    toks[0] += out["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = args.clients * args.requests
    return {"requests": n, "failed": len(failures), "failures": failures[:5], "p50_ms": pct(lat, 0.5) if lat else None,
            "p95_ms": pct(lat, 0.95) if lat else None, "wall_s": wall, "completion_tokens": toks[0], "tokens_per_s": toks[0] / wall}


def section_rss(srv: Server, args: argparse.Namespace, budget: Budget) -> dict:
    run_id = f"{time.time_ns():x}"
    out: dict = {"descriptions": args.rss_descriptions, "max_adapters": 64}
    t0 = time.perf_counter()
    for i in range(1, args.rss_descriptions + 1):
        if i % 25 == 0:
            budget.check("(d) peak RSS")
        body = {"description": f"{TASKS[i % len(TASKS)]} Variant {i} of run {run_id}."}
        if i % 10 == 0:  # now and then through a completion, so the decoding side is part of the measurement too
            status, res = srv.request("POST", "/v1/chat/completions", chat(srv.base, PROMPTS[i % len(PROMPTS)], 2, t2l=body))
        else:
            status, res = srv.request("POST", "/v1/adapters", body)
        if status != 200:
            raise SystemExit(f"(d) request {i} failed: {status} {res}")
        if i == 100:
            out["peak_rss_mib_at_100"] = srv.peak_rss_mib()
    out["peak_rss_mib_at_end"] = srv.peak_rss_mib()
    out["seconds"] = time.perf_counter() - t0
    status, health = srv.request("GET", "/health")
    out["cached_at_end"] = health.get("adapters")
    if "peak_rss_mib_at_100" in out:
        out["growth_mib"] = out["peak_rss_mib_at_end"] - out["peak_rss_mib_at_100"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="T2L checkpoint (default: the shipped one)")
    p.add_argument("--base-model", help="base model (default: the checkpoint's)")
    p.add_argument("--profile", help="hardware profile")
    p.add_argument("--quick", action="store_true", help="smaller counts: a smoke run")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--descriptions", type=int, default=8)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--load-tokens", type=int, default=16, help="max_tokens of the load requests")
    p.add_argument("--ttft-runs", type=int, default=7)
    p.add_argument("--decode-runs", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--rss-descriptions", type=int, default=1000)
    p.add_argument("--time-limit", type=float, default=2400, help="seconds for the whole run (it stops by itself)")
    p.add_argument("--sections", default="a,b,c,d", help="which sections to run (a and b always run together)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if args.quick:
        args.clients, args.requests, args.ttft_runs, args.decode_runs, args.rss_descriptions = 8, 2, 3, 2, 150
        args.decode_tokens, args.load_tokens = 32, 8
    sections = set(args.sections.split(","))
    budget = Budget(args.time_limit)
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": cpu_model(), "cores": os.cpu_count(),
                    "loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"t2l serve load benchmark: {result['cpu']} ({result['cores']} cores), load average at start "
          f"{result['loadavg_start'][0]:.2f}, {result['date']}", flush=True)
    print(f"$ {result['command']}", flush=True)
    servers: list[Server] = []

    def start(*extra: str, label: str) -> Server:
        srv = Server(args, *extra, label=label)
        servers.append(srv)
        print(f"  [{label}] ready in {srv.ready_s:.1f} s: {' '.join(srv.cmd[1:])}", flush=True)
        return srv

    def stop(srv: Server) -> dict:
        srv.stop()
        servers.remove(srv)
        return {"tracebacks": srv.tracebacks, "responses_5xx": srv.errors_5xx}

    try:
        if sections & {"a", "b"}:
            srv = start("--max-batch", str(args.clients), label="ab")
            result.update(section_ttft_decode(srv, args, budget))
            result["ab_log"] = stop(srv)
            a, b = result["a"], result["b"]
            print(f"(a) new description TTFT {a['new_description_ttft_ms']:.1f} ms vs base TTFT {a['base_ttft_ms']:.1f} + adapter "
                  f"{a['adapter_generate_ms']:.1f} + 20 = {a['budget_ms']:.1f} ms (median of {a['runs']}; overhead "
                  f"{a['overhead_ms']:+.1f} ms; cached adapter TTFT {a['cached_adapter_ttft_ms']:.1f} ms): "
                  f"{'met' if a['met'] else 'NOT met'}", flush=True)
            print(f"(b) decode with a cached adapter {b['adapter_tok_s']:.1f} tok/s vs base {b['base_tok_s']:.1f} tok/s = "
                  f"{b['ratio'] * 100:.1f}% (median of {b['runs']}, ~{b['tokens_median']:.0f} tokens): "
                  f"{'met' if b['met'] else 'NOT met'} (target >= 90%)", flush=True)
        if "c" in sections:
            budget.check("(c) load")
            shape = f"{args.clients} clients x {args.descriptions} descriptions x {args.requests} requests, max_tokens {args.load_tokens}"
            c: dict = {"shape": shape}
            for label, mb in (("batched", str(args.clients)), ("one-at-a-time", "1")):
                srv = start("--max-batch", mb, "--max-adapters", "64", label=label)
                c[label] = run_clients(srv, args)
                c[label]["max_batch"] = int(mb)
                c[label]["log"] = stop(srv)
                r = c[label]
                print(f"(c) {label:>13} (--max-batch {mb:>2}): {r['failed']} failed of {r['requests']}, p50 {r['p50_ms']:.0f} ms, "
                      f"p95 {r['p95_ms']:.0f} ms, {r['tokens_per_s']:.1f} tok/s ({r['completion_tokens']} tokens in {r['wall_s']:.1f} s)",
                      flush=True)
            c["speedup"] = c["batched"]["tokens_per_s"] / c["one-at-a-time"]["tokens_per_s"]
            c["met"] = c["speedup"] >= 2 and c["batched"]["failed"] == 0 and c["one-at-a-time"]["failed"] == 0
            result["c"] = c
            print(f"(c) mixed-adapter batching: {c['speedup']:.2f}x the throughput of one at a time ({shape}): "
                  f"{'met' if c['met'] else 'NOT met'} (target >= 2x, 0 failures)", flush=True)
        if "d" in sections:
            budget.check("(d) RSS")
            srv = start("--max-adapters", "64", label="rss")
            d = section_rss(srv, args, budget)
            d["log"] = stop(srv)
            result["d"] = d
            at100 = d.get("peak_rss_mib_at_100", float("nan"))
            print(f"(d) {d['descriptions']} distinct descriptions through --max-adapters 64 in {d['seconds']:.1f} s: peak RSS "
                  f"{at100:.1f} MiB at 100, {d['peak_rss_mib_at_end']:.1f} MiB at {d['descriptions']} "
                  f"(+{d.get('growth_mib', float('nan')):.1f} MiB; {d['cached_at_end']} cached at the end)", flush=True)
    finally:
        for srv in list(servers):
            srv.stop()
    result["loadavg_end"] = os.getloadavg()
    logs = [v for k, v in result.items() if k.endswith("_log")] + [result.get("d", {}).get("log", {})] + [
        result.get("c", {}).get(k, {}).get("log", {}) for k in ("batched", "one-at-a-time")]
    tb, fives = sum(x.get("tracebacks", 0) for x in logs), sum(x.get("responses_5xx", 0) for x in logs)
    print(f"servers' logs: {tb} tracebacks, {fives} 5xx responses; load average at end {result['loadavg_end'][0]:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
