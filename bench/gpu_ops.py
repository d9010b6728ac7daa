"""Small graphs covering every CUDA lowering (elementwise chains, data
movement, reductions, norms, softmax, rope, attention, MatMul/Gemm, Linear
GEMV/GEMM paths in f32/f16/bf16 and every GGML block format, and the fused
decode patterns: RMSNorm->Linear, q/k/v groups, SwiGLU, residual, merged
projections + Split).

    python3 bench/gpu_ops.py build DIR   # write the cases and `kiln build --target cuda` each
    python3 bench/gpu_ops.py check DIR   # run each artifact on the GPU, compare with `kiln eval`

The reference is kiln's interpreter (the project's oracle). tests/python/
test_cuda_build.py imports CASES to check that every case compiles through
NVRTC on machines without a GPU. KILN_BIN names the kiln binary."""
import json
import os
import subprocess
import sys

import numpy as np

KILN = os.environ.get("KILN_BIN", "kiln")


def rnd(seed, *shape, scale=1.0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def blocks(kind, rows, k, seed):
    """Well-formed GGML blocks with moderate values (raw bytes, row-major)."""
    rng = np.random.default_rng(seed)
    f16 = lambda v, n: np.tile(np.frombuffer(np.float16(v).tobytes(), np.uint8), (n, 1))
    if kind in ("q4_0", "q4_1", "q8_0"):
        nb = rows * k // 32
        d = f16(0.02, nb)
        if kind == "q4_0":
            b = np.concatenate([d, rng.integers(0, 256, (nb, 16), dtype=np.uint8)], 1)
        elif kind == "q4_1":
            b = np.concatenate([d, f16(-0.15, nb), rng.integers(0, 256, (nb, 16), dtype=np.uint8)], 1)
        else:
            b = np.concatenate([d, rng.integers(-100, 100, (nb, 32)).astype(np.int8).view(np.uint8)], 1)
        return b.tobytes()
    nb = rows * k // 256
    if kind == "q4_k":
        b = rng.integers(0, 256, size=(nb, 144), dtype=np.uint8)
        b[:, 0:2] = f16(0.01, nb)
        b[:, 2:4] = f16(0.004, nb)
    else:
        b = rng.integers(0, 256, size=(nb, 210), dtype=np.uint8)
        b[:, 192:208] = rng.integers(-20, 20, size=(nb, 16)).astype(np.int8).view(np.uint8)
        b[:, 208:210] = f16(0.0008, nb)
    return b.tobytes()


def case(name, text, inputs, tol=1e-4, bounds=(), runs=None, files=None, extra=()):
    """runs: list of input dicts (several sizes through one artifact);
    extra: more `kiln build` arguments."""
    return dict(name=name, text=text, runs=runs or [inputs], tol=tol, bounds=list(bounds), files=files or {},
                extra=list(extra))


def _cases():
    C = []
    x = lambda s, *sh, scale=1.0: rnd(s, *sh, scale=scale)
    C.append(case("ew_chain", """kir 1
graph "g" {
  sym b
  input %x : f32[b, 4, 8]
  input %y : f32[8]
  %a = Add(%x, %y)
  %m = Mul(%a, %x)
  %t = Tanh(%m)
  %s = Sigmoid(%t)
  output %s
}""", {"x": x(1, 3, 4, 8), "y": x(2, 8)}, bounds=["b=8"]))
    C.append(case("ew_unary", """kir 1
graph "g" {
  input %x : f32[5, 64]
  %a = Abs(%x)
  %l = Log(%a)
  %q = Sqrt(%a)
  %e = Exp(%x)
  %g = Gelu(%x)
  %gt = Gelu(%x) {approximate = "tanh"}
  %r = Relu(%x)
  %sp = Softplus(%x)
  %er = Erf(%x)
  %si = Silu(%x)
  %ng = Neg(%x)
  %mx = Max(%x, %q)
  %p = Pow(%a, %q)
  output %l, %q, %e, %g, %gt, %r, %sp, %er, %si, %ng, %mx, %p
}""", {"x": x(3, 5, 64)}))
    C.append(case("where_cast", """kir 1
graph "g" {
  input %x : f32[4, 33]
  input %y : f32[4, 33]
  %c = Greater(%x, %y)
  %w = Where(%c, %x, %y)
  %i = Cast(%w) {to = i32}
  %h = Cast(%x) {to = f16}
  %bb = Cast(%y) {to = bf16}
  %hf = Cast(%h) {to = f32}
  %n = Not(%c)
  output %w, %i, %h, %bb, %hf, %n
}""", {"x": x(4, 4, 33) * 3, "y": x(5, 4, 33) * 3}))
    C.append(case("int_ops", """kir 1
graph "g" {
  input %a : i64[40]
  input %b : i64[40]
  %d = Div(%a, %b)
  %m = Mod(%a, %b)
  %s = Sub(%a, %b)
  %e = Equal(%a, %b)
  output %d, %m, %s, %e
}""", {"a": np.random.default_rng(6).integers(-50, 50, 40), "b": np.random.default_rng(7).integers(-7, 7, 40)}))
    C.append(case("movement", """kir 1
graph "g" {
  input %x : f32[2, 3, 16]
  input %i : i64[5]
  const %st : i64[1] = [-2]
  const %en : i64[1] = [-100]
  const %ax : i64[1] = [2]
  const %sp : i64[1] = [-3]
  const %pads : i64[6] = [0, 1, 2, 0, 0, 1]
  const %rep : i64[3] = [1, 2, 1]
  const %shp : i64[4] = [2, 2, 3, 16]
  const %sizes : i64[2] = [6, 10]
  %t = Transpose(%x) {perm = [2, 0, 1]}
  %s = Slice(%x, %st, %en, %ax, %sp)
  %g = Gather(%x, %i) {axis = 2}
  %c = Concat(%x, %x) {axis = 1}
  %p = Pad(%x, %pads) {mode = "reflect"}
  %tl = Tile(%x, %rep)
  %tr = Trilu(%x) {upper = 1}
  %e = Expand(%x, %shp)
  %s1, %s2 = Split(%x, %sizes) {axis = 2}
  output %t, %s, %g, %c, %p, %tl, %tr, %e, %s1, %s2
}""", {"x": x(8, 2, 3, 16), "i": np.array([0, 15, -1, 3, 7])}))
    C.append(case("reduce", """kir 1
graph "g" {
  input %x : f32[3, 17, 5]
  const %a1 : i64[1] = [1]
  const %a02 : i64[2] = [0, 2]
  %s = ReduceSum(%x, %a1) {keepdims = 0}
  %m = ReduceMean(%x, %a02) {keepdims = 1}
  %mx = ReduceMax(%x, %a1) {keepdims = 1}
  %l2 = ReduceL2(%x, %a1) {keepdims = 0}
  %lse = ReduceLogSumExp(%x, %a02) {keepdims = 0}
  %am = ArgMax(%x) {axis = 1, keepdims = 0}
  output %s, %m, %mx, %l2, %lse, %am
}""", {"x": x(9, 3, 17, 5)}))
    C.append(case("softmax_norms", """kir 1
graph "g" {
  sym s
  input %x : f32[2, s, 96]
  input %r : f32[2, s, 96]
  input %w : f32[96]
  input %bi : f32[96]
  %sm = Softmax(%x) {axis = -1}
  %ls = LogSoftmax(%x) {axis = 1}
  %hm = Hardmax(%x) {axis = -1}
  %ln = LayerNormalization(%x, %w, %bi) {axis = -1, epsilon = 1e-5}
  %rn = RMSNormalization(%x, %w) {epsilon = 1e-6}
  %sk, %m1, %i1, %su = SkipSimplifiedLayerNormalization(%x, %r, %w) {epsilon = 1e-6}
  output %sm, %ls, %hm, %ln, %rn, %sk, %su
}""", None, bounds=["s=16"], runs=[{"x": x(10, 2, 7, 96), "r": x(11, 2, 7, 96), "w": x(12, 96), "bi": x(13, 96)},
                                   {"x": x(14, 2, 1, 96), "r": x(15, 2, 1, 96), "w": x(16, 96), "bi": x(17, 96)}]))
    C.append(case("matmul_gemm", """kir 1
graph "g" {
  input %a : f32[3, 1, 5, 24]
  input %b : f32[4, 24, 7]
  input %c : f32[24, 9]
  input %d : f32[11, 24]
  input %bias : f32[11]
  input %h : f16[5, 24]
  input %hw : f16[24, 6]
  %mm = MatMul(%a, %b)
  %gm = Gemm(%c, %d, %bias) {transA = 1, transB = 1, alpha = 0.5, beta = 2.0}
  %hm = MatMul(%h, %hw)
  output %mm, %gm, %hm
}""", {"a": x(20, 3, 1, 5, 24), "b": x(21, 4, 24, 7), "c": x(22, 24, 9), "d": x(23, 11, 24), "bias": x(24, 11),
       "h": x(25, 5, 24).astype(np.float16), "hw": x(26, 24, 6).astype(np.float16)}, tol=2e-3))
    C.append(case("rope", """kir 1
graph "g" {
  sym s
  input %x : f32[2, s, 128]
  input %x4 : f32[2, 2, s, 32]
  input %cos : f32[64, 16]
  input %sin : f32[64, 16]
  input %cos8 : f32[64, 8]
  input %sin8 : f32[64, 8]
  input %pos : i64[2, s]
  %a = RotaryEmbedding(%x, %cos, %sin, %pos) {num_heads = 4, interleaved = 0}
  %b = RotaryEmbedding(%x, %cos, %sin, %pos) {num_heads = 4, interleaved = 1}
  %c = RotaryEmbedding(%x4, %cos8, %sin8, %pos) {rotary_embedding_dim = 16}
  output %a, %b, %c
}""", {"x": x(30, 2, 5, 128), "x4": x(31, 2, 2, 5, 32), "cos": np.cos(x(32, 64, 16)), "sin": np.sin(x(32, 64, 16)),
       "cos8": np.cos(x(33, 64, 8)), "sin8": np.sin(x(33, 64, 8)), "pos": np.array([[3, 9, 0, 1, 63], [5, 5, 6, 7, 8]])},
        bounds=["s=8"]))
    C.append(case("attention", """kir 1
graph "g" {
  sym s, p
  input %q : f32[1, s, 128]
  input %k : f32[1, s, 64]
  input %v : f32[1, s, 64]
  input %pk : f32[1, 2, p, 32]
  input %pv : f32[1, 2, p, 32]
  input %q4 : f32[2, 4, s, 16]
  input %k4 : f32[2, 4, s, 16]
  input %v4 : f32[2, 4, s, 16]
  %y, %ok, %ov = GQAttention(%q, %k, %v, %pk, %pv) {num_heads = 4, kv_num_heads = 2}
  %yw, %ok2, %ov2 = GQAttention(%q, %k, %v, %pk, %pv) {num_heads = 4, kv_num_heads = 2, window = 3, softcap = 5.0}
  %z = Attention(%q4, %k4, %v4) {is_causal = 1}
  %zn = Attention(%q4, %k4, %v4)
  output %y, %ok, %ov, %yw, %z, %zn
}""", None, bounds=["s=16", "p=16"], runs=[
        {"q": x(40, 1, 6, 128), "k": x(41, 1, 6, 64), "v": x(42, 1, 6, 64), "pk": x(43, 1, 2, 5, 32), "pv": x(44, 1, 2, 5, 32),
         "q4": x(45, 2, 4, 6, 16), "k4": x(46, 2, 4, 6, 16), "v4": x(47, 2, 4, 6, 16)},
        {"q": x(50, 1, 1, 128), "k": x(51, 1, 1, 64), "v": x(52, 1, 1, 64), "pk": x(53, 1, 2, 9, 32), "pv": x(54, 1, 2, 9, 32),
         "q4": x(55, 2, 4, 1, 16), "k4": x(56, 2, 4, 1, 16), "v4": x(57, 2, 4, 1, 16)}]))
    # Linear: every weight type through the decode GEMV (1 and 3 rows) and the prefill GEMM (37 rows)
    for wdt, K in (("f32", 200), ("f32", 256), ("f16", 256), ("bf16", 256), ("bf16", 200), ("q4_0", 256),
                   ("q4_1", 256), ("q8_0", 256), ("q4_k", 256), ("q6_k", 256)):
        N = 96
        files = {}
        if wdt.startswith("q"):
            files["w.bin"] = blocks(wdt, N, K, 60)
            wdecl = f'weight %w : {wdt}[{N}, {K}] @ "w.bin" offset 0'
            winp = {}
        else:
            wdecl = f"input %w : {wdt}[{N}, {K}]"
            wv = x(61, N, K, scale=0.1)
            winp = {"w": wv.astype({"f32": np.float32, "f16": np.float16}.get(wdt, np.float32))}
            if wdt == "bf16":  # numpy has no bf16: build it through a const file
                import ml_dtypes
                files["w.bin"] = wv.astype(ml_dtypes.bfloat16).tobytes()
                wdecl = f'weight %w : bf16[{N}, {K}] @ "w.bin" offset 0'
                winp = {}
        text = f"""kir 1
graph "g" {{
  sym s
  input %x : f32[1, s, {K}]
  input %b : f32[{N}]
  {wdecl}
  %y = Linear(%x, %w, %b)
  output %y
}}"""
        runs = [dict(winp, x=x(62 + s, 1, s, K), b=x(70, N)) for s in (1, 3, 37)]
        C.append(case(f"linear_{wdt}_k{K}", text, None, tol=1e-3,
                      bounds=["s=64"], runs=runs, files=files))
    # the fused decode block: norm -> q/k/v group, residual, SwiGLU, merged projection + Split
    D, F = 128, 160
    import ml_dtypes
    ws = {n: x(80 + i, r, c, scale=0.1) for i, (n, r, c) in enumerate(
        [("wq", 128, D), ("wk", 64, D), ("wv", 64, D), ("wo", D, 128), ("wg", F, D), ("wu", F, D), ("wd", D, F), ("wm", 2 * F, D)])}
    off, decl, blob = 0, [], b""
    for n, w in ws.items():
        decl.append(f'weight %{n} : bf16[{w.shape[0]}, {w.shape[1]}] @ "w.bin" offset {off}')
        b = w.astype(ml_dtypes.bfloat16).tobytes()
        blob += b
        off += len(b)
    text = """kir 1
graph "g" {
  sym s
  input %x : f32[1, s, 128]
  input %nw : f32[128]
  const %sz : i64[2] = [160, 160]
  %DECL%
  %n = RMSNormalization(%x, %nw) {epsilon = 1e-5}
  %q = Linear(%n, %wq)
  %k = Linear(%n, %wk)
  %v = Linear(%n, %wv)
  %o = Linear(%q, %wo)
  %r = Add(%x, %o)
  %n2 = RMSNormalization(%r, %nw) {epsilon = 1e-5}
  %u = Linear(%n2, %wu)
  %g = Linear(%n2, %wg)
  %sg = Silu(%g)
  %gu = Mul(%sg, %u)
  %d = Linear(%gu, %wd)
  %r2 = Add(%r, %d)
  %m = Linear(%r2, %wm)
  %m1, %m2 = Split(%m, %sz) {axis = -1}
  %sm = Silu(%m1)
  %mm = Mul(%sm, %m2)
  output %k, %v, %r2, %mm
}""".replace("%DECL%", "\n  ".join(decl))
    runs = [{"x": x(90 + s, 1, s, 128), "nw": 1 + 0.1 * x(95, 128)} for s in (1, 2, 40)]
    C.append(case("fused_block", text, None, tol=1e-3, bounds=["s=64"], runs=runs, files={"w.bin": blob}))
    # the same without kiln's fuse pass: separate q/k/v and gate/up Linears
    C.append(case("fused_block_unmerged", text, None, tol=1e-3, bounds=["s=64"], runs=runs, files={"w.bin": blob},
                  extra=["--passes", "canonicalize"]))
    return C


CASES = _cases()


def write_case(c, d):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.kir"), "w") as f:
        f.write(c["text"])
    for fn, data in c["files"].items():
        with open(os.path.join(d, fn), "wb") as f:
            f.write(data)
    for r, inputs in enumerate(c["runs"]):
        for n, a in inputs.items():
            np.save(os.path.join(d, f"in{r}_{n}.npy"), a)


def build_cmd(c, d, target="cuda"):
    cmd = [KILN, "build", os.path.join(d, "model.kir"), "-o", os.path.join(d, f"model_{target}"), "--target", target]
    for b in c["bounds"]:
        cmd += ["--bound", b]
    return cmd + c["extra"]


def inputs_args(c, d, r):
    return [a for n in c["runs"][r] for a in ("--input", f"{n}={os.path.join(d, f'in{r}_{n}.npy')}")]


def build_all(root):
    ok = True
    for c in CASES:
        d = os.path.join(root, c["name"])
        write_case(c, d)
        p = subprocess.run(build_cmd(c, d), capture_output=True, text=True)
        if p.returncode:
            ok = False
            print(f"{c['name']}: build failed: {p.stderr.strip()}")
    return ok


def maxdiff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.where(both_nan, 0, np.abs(a - b) / (1 + np.abs(b)))
    return float(np.nanmax(np.where(np.isnan(d), np.inf, d)))


def check_all(root):
    results = []
    for c in CASES:
        d = os.path.join(root, c["name"])
        exe = os.path.join(d, "model_cuda")
        for r in range(len(c["runs"])):
            ref_dir, got_dir = os.path.join(d, f"ref{r}"), os.path.join(d, f"got{r}")
            p1 = subprocess.run([KILN, "eval", os.path.join(d, "model.kir"), "--output-dir", ref_dir] + inputs_args(c, d, r),
                                capture_output=True, text=True)
            env = dict(os.environ, KILN_CUDA_CHECK="1")
            p2 = subprocess.run([exe, "--output-dir", got_dir] + inputs_args(c, d, r), capture_output=True, text=True, env=env)
            worst, status = 0.0, "ok"
            if p1.returncode or p2.returncode:
                status = f"fail: ref rc={p1.returncode} {p1.stderr.strip()[:300]} | gpu rc={p2.returncode} {p2.stderr.strip()[:300]}"
            else:
                for fn in sorted(os.listdir(ref_dir)):
                    e = maxdiff(np.load(os.path.join(got_dir, fn)), np.load(os.path.join(ref_dir, fn)))
                    if e > worst:
                        worst = e
                    if not e <= c["tol"]:
                        status = f"mismatch in {fn}: {e:.3g} > {c['tol']}"
            results.append(dict(case=c["name"], run=r, err=worst, status=status))
            print(f"{c['name']}[{r}]: {status} (max rel err {worst:.3g})", flush=True)
    return results


if __name__ == "__main__":
    mode, root = sys.argv[1], sys.argv[2]
    if mode == "build":
        sys.exit(0 if build_all(root) else 1)
    res = check_all(root)
    with open(os.path.join(root, "ops_results.json"), "w") as f:
        json.dump(res, f, indent=1)
    bad = [r for r in res if r["status"] != "ok"]
    print(f"ops: {len(res) - len(bad)}/{len(res)} runs match the interpreter")
    sys.exit(1 if bad else 0)
