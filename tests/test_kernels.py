"""The hot path's CPU kernels (t2lcli/engine/kernels.py): every kernel gives torch's numbers within fp32 rounding,
the same kernel gives the same bytes, `auto` measures once per machine and caches the choice, training stays on torch.
No test asserts which kernel is fastest (that depends on the CPU) or how fast anything is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from numeric import TINY_BERT_DEPTH, assert_close, assert_rel_error
from torch.nn import functional as F

from t2lcli.engine import kernels

AVAILABLE = kernels.available()


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_matches_torch_linear(kernel: str, bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    for m, k, n in [(1, 7, 5), (30, 128, 512), (64, 384, 1536), (3, 512, 9216)]:
        x = torch.randn(m, k, generator=g)
        w = torch.randn(n, k, generator=g) * 0.05
        b = torch.randn(n, generator=g) if bias else None
        want = F.linear(x, w, b)
        got = kernels.gemm(x, w, b, kernel)
        assert got.shape == want.shape and got.dtype == torch.float32
        # each output is one dot product of length k, summed in another order by each kernel: its rounding is relative to
        # the sum of the terms' magnitudes (|x| @ |w|^T), which cancellation can make ~sqrt(k) times max |want|
        terms = float((x.abs() @ w.abs().T).max()) + (float(b.abs().max()) if b is not None else 0.0)
        assert_rel_error(float((got - want).abs().max()) / terms, depth=1, msg=f"{kernel} {m}x{k}x{n}")
        assert torch.equal(kernels.gemm(x, w, b, kernel), got)  # bitwise: the same kernel on the same inputs, same process


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_klinear_strided_and_3d_inputs(kernel: str) -> None:
    torch.manual_seed(0)
    lin = kernels.KLinear(64, 96)
    kernels.configure(lin, kernel)
    x = torch.randn(2, 5, 128)[..., ::2]  # non-contiguous, 3-D
    with torch.no_grad():
        got = lin(x)
        want = F.linear(x, lin.weight, lin.bias)
    assert got.shape == (2, 5, 96)
    assert_close(got, want, depth=1)


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_training_stays_on_torch(kernel: str) -> None:
    """With autograd on, every policy runs F.linear: gradients exist and equal torch's."""
    torch.manual_seed(0)
    lin = kernels.KLinear(16, 8)
    kernels.configure(lin, kernel)
    x = torch.randn(4, 16)
    lin(x).square().sum().backward()
    grad = lin.weight.grad.clone()
    lin.weight.grad = None
    F.linear(x, lin.weight, lin.bias).square().sum().backward()
    assert torch.equal(grad, lin.weight.grad)  # bitwise: the same F.linear both times


def test_configure_refuses_unknown_policy() -> None:
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernels.configure(kernels.KLinear(2, 2), "fastest")


def _adapters(ckpt: Path, kernel: str, texts: list[str]) -> list[dict[str, torch.Tensor]]:
    from t2lcli.engine.generate import Generator

    gen = Generator.load(str(ckpt), kernel=kernel)
    return [a.tensors for a in gen.generate(texts)]


@pytest.mark.parametrize("kernel", [k for k in AVAILABLE if k != "torch"])
def test_generate_same_numbers_whichever_kernel(tiny_checkpoint_dir: Path, kernel: str) -> None:
    """A forced kernel runs every linear of the encoder and the hypernetwork (tiny shapes included); the adapters
    agree with torch's within fp32 rounding (encoder + trunk + head: a BERT's depth plus the hypernet's ~8 linears)."""
    texts = ["Classify the sentiment of a movie review.", "Translate English into French, keeping the tone."]
    want = _adapters(tiny_checkpoint_dir, "torch", texts)
    got = _adapters(tiny_checkpoint_dir, kernel, texts)
    again = _adapters(tiny_checkpoint_dir, kernel, texts)
    for w, g, a in zip(want, got, again, strict=True):
        assert w.keys() == g.keys()
        for key in w:
            assert_close(g[key], w[key], depth=TINY_BERT_DEPTH + 10, msg=f"{kernel} {key}")
            assert torch.equal(a[key], g[key])  # bitwise: the same kernel on the same inputs


def test_forced_kernel_reaches_every_linear(tiny_checkpoint_dir: Path) -> None:
    from t2lcli.engine.generate import Generator

    gen = Generator.load(str(tiny_checkpoint_dir), kernel="onednn" if "onednn" in AVAILABLE else "torch")
    with kernels.record() as calls:
        gen.factors(gen.embed(["Answer math questions step by step."]))
    stages = {c[0] for c in calls}
    assert stages == {"encoder", "trunk", "heads"}
    assert {c[4].removesuffix("-packed") for c in calls} == {gen.kernel}
    if gen.kernel == "onednn":  # a Generator runs it on packed weights (tiny: all under PACK_MIN_BYTES)
        assert {c[4] for c in calls} == {"onednn-packed"}
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in gen.ckpt.hypernet.modules())
    assert sum(c[0] in ("trunk", "heads") for c in calls) >= n_linear  # each trunk linear once per target module


def _spy_measure(monkeypatch: pytest.MonkeyPatch, parts: list[int] | None = None) -> list[tuple[int, bool]]:
    """Empty the choice cache and record (rows, packed) of every real `kernels.measure` call (and, into `parts`, the
    rows per packed part it was given)."""
    monkeypatch.setattr(kernels, "_CHOICES", {})
    seen: list[tuple[int, bool]] = []
    real = kernels.measure

    def spy(rows: int, w: torch.Tensor, b: torch.Tensor | None, names: list[str] | None = None, packed: bool = False,
            rows_per_part: int = 1 << 62) -> dict[str, float]:
        seen.append((rows, packed))
        if parts is not None:
            parts.append(rows_per_part)
        return real(rows, w, b, names, packed, rows_per_part)

    monkeypatch.setattr(kernels, "measure", spy)
    return seen


def test_auto_measures_once_and_caches_per_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_measure(monkeypatch)
    w, b = torch.randn(512, 256) * 0.05, torch.randn(512)
    first = kernels.choose(30, 256, 512, w, b)
    assert first in kernels.AUTO_KERNELS and [r for r, _ in calls] == [32]  # rows rounded up to the shape class
    assert kernels.choose(20, 256, 512, w, b) == first and [r for r, _ in calls] == [32]  # same class: no new measurement
    data = json.loads(kernels.cache_path().read_text())
    entry = data["machines"][kernels._current_key()]  # the session's $T2L_HOME may hold other thread counts' entries too
    assert entry["fingerprint"]["threads"] == torch.get_num_threads() and entry["fingerprint"]["cpu"]
    assert entry["choices"]["32:256:512"]["kernel"] == first and set(entry["choices"]["32:256:512"]["ms"]) <= set(kernels.AUTO_KERNELS)
    monkeypatch.setattr(kernels, "_CHOICES", {})  # a new process: the choice comes from $T2L_HOME, not a new measurement
    assert kernels.choose(30, 256, 512, w, b) == first and [r for r, _ in calls] == [32]
    assert kernels.choose(4, 2, 2, w, b) == "torch"  # tiny GEMMs are never measured


def test_auto_cache_is_keyed_by_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_CHOICES", {})
    threads = torch.get_num_threads()
    w = torch.randn(512, 256)
    try:
        kernels.choose(32, 256, 512, w, None)
        torch.set_num_threads(1 if threads > 1 else 2)
        kernels.choose(32, 256, 512, w, None)
    finally:
        torch.set_num_threads(threads)
    data = json.loads(kernels.cache_path().read_text())
    assert {e["fingerprint"]["threads"] for e in data["machines"].values()} >= {threads, 1 if threads > 1 else 2}


def test_corrupt_cache_is_remeasured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_CHOICES", {})
    kernels.cache_path().parent.mkdir(parents=True, exist_ok=True)
    kernels.cache_path().write_text("{not json")
    assert kernels.choose(32, 256, 512, torch.randn(512, 256), None) in kernels.AUTO_KERNELS
    assert json.loads(kernels.cache_path().read_text())["schema"] == kernels.SCHEMA


def test_profile_kernel_key() -> None:
    from t2lcli.errors import ProfileError
    from t2lcli.hw_profiles import KERNEL_POLICIES, load_profile

    assert KERNEL_POLICIES == kernels.POLICIES  # hw_profiles.py stays torch-free, so it keeps its own copy
    assert load_profile("cpu").kernel == "auto"
    assert load_profile("cpu", ["kernel=onednn"]).kernel == "onednn"
    with pytest.raises(ProfileError, match="kernel: 'fastest' is not one of auto, torch, onednn, openblas"):
        load_profile("cpu", ["kernel=fastest"])


def test_generate_cli_forced_kernel(runner, cli_app, tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    outs = {}
    for kernel in AVAILABLE:
        out = tmp_path / kernel
        res = runner.invoke(cli_app, ["generate", "Summarize a news article.", "-c", str(tiny_checkpoint_dir), "-o", str(out),
                                      "--set", f"kernel={kernel}"])
        assert res.exit_code == 0, res.output
        outs[kernel] = load_file(str(out / "adapter_model.safetensors"))
    for kernel, tensors in outs.items():
        for key, want in outs["torch"].items():
            assert_close(tensors[key], want, depth=TINY_BERT_DEPTH + 10, msg=f"{kernel} {key}")
    res = runner.invoke(cli_app, ["generate", "Summarize a news article.", "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "bad"),
                                  "--set", "kernel=fastest"])
    assert res.exit_code != 0 and "kernel" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "bad").exists()


def test_bf16_stage_is_recorded_and_gets_a_bf16_floor() -> None:
    """A bf16 encoder (`encoder.dtype: auto` on a native-bf16 CPU) runs torch's bf16 linear; bench floors it in bf16."""
    from t2lcli.engine.bench import _stage_floor

    lin = kernels.KLinear(64, 32).to(torch.bfloat16)
    kernels.configure(lin, "auto", "encoder")
    with torch.no_grad(), kernels.record() as calls:
        y = lin(torch.randn(4, 64).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and [c[4] for c in calls] == ["torch-bf16"]  # tiny: never measured
    with torch.no_grad():
        big = kernels.KLinear(512, 1024).to(torch.bfloat16)
        kernels.configure(big, "auto", "encoder")
        x = torch.randn(20, 512).to(torch.bfloat16)
        with kernels.record() as big_calls:
            got = big(x)
        assert_close(got, F.linear(x, big.weight, big.bias), depth=1)
    assert big_calls[0][4] in ("torch-bf16", "onednn-bf16")
    entry = json.loads(kernels.cache_path().read_text())["machines"][kernels._current_key()]
    assert "32:512:1024:bfloat16" in entry["choices"]
    out = _stage_floor(calls, ["torch", "onednn", "torch-bf16"], {})
    assert out["encoder"]["dtype"] == "bfloat16" and out["encoder"]["gemms"] == 1
    assert set(out["encoder"]["floor_kernels"]) <= {"torch-bf16", "onednn-bf16", "onednn-packed-bf16"} and out["encoder"]["floor_ms"] > 0


@pytest.mark.skipif("onednn" not in AVAILABLE, reason="no oneDNN in this torch build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weight_gives_onednn_bytes_and_keeps_one_copy(dtype: torch.dtype) -> None:
    """A packable KLinear that runs oneDNN packs its weight in place: oneDNN's numbers on the plain weight within
    rounding (on an AMX Xeon the same bytes for 2+ rows; not asserted, it depends on the CPU's kernels), `weight`
    becomes a meta tensor (one copy), the plain weight comes back on demand, the same input gives the same bytes."""
    torch.manual_seed(0)
    lin = kernels.KLinear(384, 1536).to(dtype)
    plain = lin.weight.detach().clone()
    kernels.configure(lin, "onednn", "encoder", packable=True)
    with torch.no_grad():
        xs = [torch.randn(m, 384).to(dtype) for m in (1, 13, 40, 200)]
        want = [kernels.gemm(x, plain, lin.bias, "onednn") for x in xs]
        with kernels.record() as calls:
            got = [lin(x) for x in xs]
        assert lin.packed is not None and lin.weight.is_meta and lin.weight.shape == plain.shape and lin.weight.dtype == dtype
        for x, g, w in zip(xs, got, want, strict=True):
            if dtype == torch.float32:
                assert_close(g, w, depth=1)
                assert_close(g, F.linear(x, plain, lin.bias), depth=1)
            else:  # bf16 outputs: compare in fp32 at bf16's rounding (2^-8 relative per rounding)
                assert float((g.float() - w.float()).abs().max()) <= 2 ** -6 * float(w.float().abs().max())
        assert torch.equal(lin.dense_weight(), plain)
        assert {c[4] for c in calls} == {"onednn-packed" if dtype == torch.float32 else "onednn-packed-bf16"}
        assert torch.equal(lin(xs[2]), got[2])  # the same kernel, the same bytes


def test_unpackable_or_torch_policy_never_packs() -> None:
    torch.manual_seed(0)
    a, b = kernels.KLinear(256, 512), kernels.KLinear(256, 512)
    kernels.configure(a, "onednn" if "onednn" in AVAILABLE else "torch", "trunk")  # the hypernetwork: not packable
    kernels.configure(b, "torch", "encoder", packable=True)
    with torch.no_grad():
        x = torch.randn(16, 256)
        a(x), b(x)
    assert a.packed is None and b.packed is None and not a.weight.is_meta and not b.weight.is_meta


@pytest.mark.skipif("onednn" not in AVAILABLE, reason="no oneDNN in this torch build")
def test_packed_hypernet_keeps_its_state_dict_and_unpacks_for_autograd_and_to(tiny_checkpoint_dir: Path) -> None:
    """A Generator packs the hypernetwork's oneDNN linears; its state_dict stays the checkpoint's values, `.to()`,
    `load_state_dict` and a forward with autograd get the plain weight back."""
    from t2lcli.engine.generate import Generator

    gen = Generator.load(str(tiny_checkpoint_dir), kernel="onednn")
    net = gen.ckpt.hypernet
    before = {k: v.clone() for k, v in net.state_dict().items()}
    n_params = net.n_params()
    emb = gen.embed(["Answer math questions step by step."])
    first = gen.factors(emb)
    packed = [m for m in net.modules() if isinstance(m, kernels.KLinear) and m.packed is not None]
    assert packed and all(m.weight.is_meta for m in packed)
    assert net.n_params() == n_params
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    again = gen.factors(emb)
    assert all(torch.equal(first[m][i], again[m][i]) for m in first for i in (0, 1))  # packed: the same bytes every run
    net.load_state_dict(before)  # unpacks, then loads
    assert all(m.packed is None and not m.weight.is_meta for m in packed)
    gen.factors(emb)  # packs again
    assert all(m.packed is not None for m in packed)
    with torch.enable_grad():
        out = net(emb)
    assert all(m.packed is None for m in packed)  # autograd: F.linear on the plain weight
    sum(a.sum() + b.sum() for a, b in out.values()).backward()
    assert all(m.weight.grad is not None for m in packed if m.weight.requires_grad)
    gen.factors(emb)
    net.to(torch.float64)  # any _apply: unpacked first
    assert all(m.packed is None and m.weight.dtype == torch.float64 for m in packed)


def test_release_pages_only_for_an_unshared_tensor_in_a_file_mapping(tmp_path: Path) -> None:
    """`release_pages` gives back the pages of a weight that nothing else uses (read by safetensors' load_file: one
    mapping of the file; or on the heap); a shared storage is left alone; neighbouring tensors keep their values."""
    import sys

    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    want = {"a": torch.randn(3, 1000, generator=g), "weight": torch.randn(256, 1024, generator=g), "bias": torch.randn(256, generator=g)}
    save_file(want, str(tmp_path / "w.safetensors"))
    got = load_file(str(tmp_path / "w.safetensors"))
    lin = torch.nn.Linear(1024, 256)
    lin.load_state_dict({"weight": got.pop("weight"), "bias": got.pop("bias")}, assign=True)  # as the loaders assign weights
    heap = torch.randn(256, 1024)
    assert kernels.release_pages(heap) == sys.platform.startswith("linux")
    view = lin.weight.detach()
    assert not kernels.release_pages(lin.weight)  # another tensor shares its storage
    del view
    assert kernels.release_pages(lin.weight) == sys.platform.startswith("linux")
    assert torch.equal(got["a"], want["a"]) and torch.equal(lin.bias, want["bias"])  # the neighbours' pages are theirs


def test_a_weight_over_the_cap_is_measured_on_one_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` on a packable module times a weight that would pack in parts on its first part (every kernel alike), not
    on a packed copy of the whole (that copy would be a second copy of, e.g., a 512 MiB head)."""
    parts: list[int] = []
    calls = _spy_measure(monkeypatch, parts)
    lin = kernels.KLinear(512, 1024)
    kernels.configure(lin, "auto", "heads", packable=True)
    lin.pack_max_bytes = 256 * 512 * 4  # 256 rows per part
    with torch.no_grad():
        lin(torch.randn(24, 512))
    assert calls == [(kernels.PACK_ROWS, True)] and parts == [256]
    entry = json.loads(kernels.cache_path().read_text())["machines"][kernels._current_key()]
    assert "32:512:1024:packed/256" in entry["choices"]


def test_part_rows() -> None:
    assert kernels.part_rows(1024, 512, 4, 1024 * 512 * 4) == 1024  # fits whole
    assert kernels.part_rows(1024, 512, 4, 256 * 512 * 4) == 256
    assert kernels.part_rows(1024, 512, 4, 300 * 512 * 4) == 256  # a multiple of 64
    assert kernels.part_rows(65536, 2048, 4, 1) == 64  # at least 64


@pytest.mark.skipif("onednn" not in AVAILABLE, reason="no oneDNN in this torch build")
@pytest.mark.parametrize("n", [1024, 1000])
def test_a_weight_packed_in_parts_gives_one_gemm_numbers_and_keeps_one_copy(n: int) -> None:
    """A weight over `pack_max_bytes` packs in parts of output rows (the last one shorter when they do not divide):
    the outputs agree with one GEMM on the plain weight within fp32 rounding, `weight` is a meta tensor, the plain
    weight and the state dict come back, the same input gives the same bytes, autograd unpacks; bench records one call
    of the full shape."""
    torch.manual_seed(0)
    lin = kernels.KLinear(512, n)
    plain, bias = lin.weight.detach().clone(), lin.bias.detach().clone()
    kernels.configure(lin, "onednn", "heads", packable=True)
    lin.pack_max_bytes = 256 * 512 * 4
    with torch.no_grad():
        xs = [torch.randn(m, 512) for m in (1, 13, 32)]
        with kernels.record() as calls:
            got = [lin(x) for x in xs]
        assert lin.packed is None and lin.parts is not None and len(lin.parts) == -(-n // 256) and lin.weight.is_meta
        assert [end for end, _, _ in lin.parts][-1] == n
        for x, g in zip(xs, got, strict=True):
            assert g.shape == (x.shape[0], n)
            # depth 2: a 512-term dot product summed in another order (MKL's F.linear vs oneDNN's blocks) measured
            # 1.06e-6 of the largest output on a Zen 4 EPYC; a wrong part or bias is off by >= 1e-3
            assert_close(g, F.linear(x, plain, bias), depth=2)
            assert_close(g, kernels.gemm(x, plain, bias, "onednn"), depth=2)
        assert torch.equal(lin(xs[1]), got[1])  # the same parts, the same bytes
        assert [(c[1], c[2], c[3], c[4]) for c in calls] == [(m, 512, n, f"onednn-packed/{len(lin.parts)}") for m in (1, 13, 32)]
        assert torch.equal(lin.dense_weight(), plain) and torch.equal(lin.state_dict()["weight"], plain)
        assert torch.equal(lin.state_dict()["bias"], bias)
    out = lin(xs[2])  # autograd on: the plain weight again
    assert lin.parts is None and not lin.weight.is_meta and torch.equal(lin.weight.detach(), plain)
    out.sum().backward()
    assert lin.weight.grad is not None


@pytest.mark.skipif("onednn" not in AVAILABLE, reason="no oneDNN in this torch build")
def test_a_weight_that_packs_in_parts_packs_at_its_second_call() -> None:
    """Packing in parts faults in a fresh copy of the weight, more than one call gains: the first call of 2+ rows runs
    oneDNN on the plain weight, the second packs; a weight that fits packs at its first call; the numbers agree."""
    torch.manual_seed(0)
    big, small = kernels.KLinear(512, 1024), kernels.KLinear(512, 256)
    for lin in (big, small):
        kernels.configure(lin, "onednn", "heads", packable=True)
        lin.pack_max_bytes = 256 * 512 * 4
    x = torch.randn(26, 512)
    with torch.no_grad(), kernels.record() as calls:
        first = big(x)
        assert big.parts is None and big.packed is None and not big.weight.is_meta
        second = big(x)
        assert big.parts is not None and big.weight.is_meta
        small(x)
        assert small.packed is not None
    assert [c[4] for c in calls] == ["onednn", "onednn-packed/4", "onednn-packed"]
    assert_close(second, first, depth=2)


@pytest.mark.skipif("onednn" not in AVAILABLE, reason="no oneDNN in this torch build")
def test_parts_replay_in_the_pass_floor() -> None:
    """The bench's pass floor replays each packed part of a weight packed in parts (its plain weight is gone)."""
    from t2lcli.engine.bench.floor import _pass_floor, _stage_floor

    torch.manual_seed(0)
    lin = kernels.KLinear(512, 1024)
    kernels.configure(lin, "onednn", "heads", packable=True)
    lin.pack_max_bytes = 256 * 512 * 4
    with torch.no_grad():
        lin(torch.randn(16, 512))  # the first call of 2+ rows: the plain weight
        with kernels.record() as calls:
            lin(torch.randn(16, 512))
    memo: dict[tuple[int, int, int, str], dict[str, float]] = {}
    per = _stage_floor(calls, ["torch", "onednn", "onednn-packed"], memo)
    assert per["heads"]["gemms"] == 1 and per["heads"]["kernels"] == {"onednn-packed/4": 1} and per["heads"]["floor_ms"] > 0
    assert _pass_floor(calls, memo)["heads"] > 0


@pytest.mark.skipif("onednn" not in AVAILABLE, reason="no oneDNN in this torch build")
def test_auto_packable_choice_does_not_depend_on_what_ran_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` on a packable module: the bytes for a short input are the same in a fresh module and after a longer
    input ran first (once packed, a weight runs oneDNN for every row count, so the choice must not be per rows; found
    by `t2l serve --backend vllm`, whose second description's adapter id differed from `t2l generate`'s). The stand-in
    `choose` picks by rows, as a machine's measurements may: torch below 8 rows, oneDNN from 8 up."""
    picked: list[int] = []

    def by_rows(rows: int, k: int, n: int, w: torch.Tensor, b: torch.Tensor | None, packable: bool = False, rows_per_part: int = 1 << 62) -> str:
        picked.append(rows)
        return "torch" if rows < 8 else "onednn"

    monkeypatch.setattr(kernels, "choose", by_rows)
    torch.manual_seed(0)
    fresh, warm = kernels.KLinear(384, 1536), kernels.KLinear(384, 1536)
    warm.load_state_dict(fresh.state_dict())
    for m in (fresh, warm):
        kernels.configure(m, "auto", "encoder", packable=True)
    short, long_ = torch.randn(3, 384), torch.randn(40, 384)
    with torch.no_grad():
        alone = fresh(short)
        warm(long_)
        after = warm(short)
    assert torch.equal(alone, after)
    assert set(picked) == {kernels.PACK_ROWS}  # one choice per packable weight, at the packing row count


ACTS = {"": lambda t: t, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "relu": F.relu}


# every (kernel, packed, dtype) a module can run: only oneDNN packs; OpenBLAS has no bf16 GEMM (a bf16 module runs
# torch's or oneDNN's)
FUSED_CASES = [(k, p, d) for k in AVAILABLE for p in (False, True) for d in (torch.float32, torch.bfloat16)
               if (not p or k == "onednn") and not (k == "openblas" and d == torch.bfloat16)]


@pytest.mark.parametrize(("kernel", "packable", "dtype"), FUSED_CASES)
def test_fused_epilogues_match_the_separate_ops(kernel: str, packable: bool, dtype: torch.dtype) -> None:
    """`KLinear.fused(x, act, add)` (oneDNN: the activation or the add is the GEMM's post-op) gives act(linear(x)) + add
    within rounding on every kernel, packed or not, fp32 and bf16; the same call gives the same bytes; with autograd on
    it is the separate ops and gradients flow. A wrong activation or a missing add is off by far more than rounding."""
    torch.manual_seed(0)
    lin = kernels.KLinear(384, 1536).to(dtype)
    plain, bias = lin.weight.detach().clone(), lin.bias.detach().clone()
    kernels.configure(lin, kernel, "encoder", packable=packable)
    x = torch.randn(2, 7, 384).to(dtype)
    res = torch.randn(2, 7, 1536).to(dtype)
    # bf16: the fused epilogue rounds once where the separate ops round after the GEMM and again after the epilogue
    tol = 2 ** -6 if dtype == torch.bfloat16 else None
    with torch.no_grad():
        for act, fn in ACTS.items():
            for add in (None, res):
                want = fn(F.linear(x.float(), plain.float(), bias.float()))
                want = want if add is None else want + add.float()
                got = lin.fused(x, act, add)
                assert got.shape == (2, 7, 1536) and got.dtype == dtype
                if tol is None:
                    assert_close(got, want, depth=2, msg=f"{kernel} act={act!r} add={add is not None}")
                else:
                    assert float((got.float() - want).abs().max()) <= tol * float(want.abs().max()), (kernel, act, add is not None)
                assert torch.equal(lin.fused(x, act, add), got)
        assert packable == (lin.packed is not None)
    if dtype == torch.float32:
        y = lin.fused(x, "silu", res)
        assert lin.packed is None and y.requires_grad
        y.sum().backward()
        assert lin.weight.grad is not None


def test_hypernet_inference_trunk_fuses_and_matches_the_modules(tiny_checkpoint_dir: Path) -> None:
    """The L hypernetwork's inference trunk (`_fused`: each KLinear + SiLU one call, the residual sums in place) gives
    the nn.Sequential modules' own forward within fp32 rounding, under every kernel policy."""
    from t2lcli.engine.checkpoint import load_checkpoint
    from t2lcli.engine.hypernet import _fused, _fused_residual

    net = load_checkpoint(str(tiny_checkpoint_dir)).hypernet.eval()
    m = net.config.latent
    x = torch.randn(3, 5, m, generator=torch.Generator().manual_seed(1))
    for kernel in AVAILABLE:
        kernels.configure(net, kernel)
        with torch.no_grad():
            want = net.mlp3(net.mlp2(net.mlp1(net.mixer(x))))
            got = _fused(net.mlp3, _fused_residual(net.mlp2, _fused_residual(net.mlp1, _fused(net.mixer, x))))
        assert_close(got, want, depth=3, msg=kernel)
