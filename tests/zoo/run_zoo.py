#!/usr/bin/env python3
"""kiln's model zoo: which models work, how accurately, how fast.

For every member of tests/zoo/manifest.json:
  fetch      generate it (gen_*.py), find it in ../shared/data, or take the
             file scripts/fetch_models.sh put in .cache/models (--fetch runs it)
  import     kiln ir MODEL
  passes     kiln ir MODEL --verify-each (the default pipeline; every pass is
             checked against the interpreter on random inputs)
  build      kiln build MODEL -o EXE (timed: compile seconds)
  interp     the reference interpreter (kiln eval / kiln run) vs the reference
  compiled   the executable's outputs (decoders: logits of a greedy run,
             EXE --ids ... --temp 0 --logits) vs the reference
  tokens     the executable's greedy tokens vs the reference's
  oracle     kiln run's greedy tokens vs the reference's (LM-convention graphs)
  memory     peak arena bytes of the memory plan at the build's bounds
             (kiln ir --passes DEFAULT --memory --bound ...)
  speed      CPU tokens/s (decoders: generated tokens per second; encoders:
             input tokens per second of a batch, best of 5 runs)
The reference is onnxruntime for the generated ONNX members (they run in it
as exported) and the float64 numpy references of tests/python for the real
checkpoints. "max error" is max |kiln - reference| / max |reference| over
every compared output; a member passes when every check passes and the
error is within its tolerance.

  python3 tests/zoo/run_zoo.py                      # table on stdout
  python3 tests/zoo/run_zoo.py --json out.json      # + results as JSON
  python3 tests/zoo/run_zoo.py --markdown docs/zoo.md
  python3 tests/zoo/run_zoo.py --baseline tests/zoo/baseline.json   # exit 1 on a regression
  python3 tests/zoo/run_zoo.py --target cuda        # + GPU tokens/s
"""
import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ZOO = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(ZOO, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
sys.path.insert(0, ZOO)

CHECKS = ("import", "passes", "build", "interp", "compiled", "tokens", "oracle", "memory", "speed")


class StageError(Exception):
    """A failed stage; the message is one line."""


def one_line(text, limit=300):
    lines = [l.strip() for l in (text or "").strip().splitlines() if l.strip()]
    s = lines[-1] if lines else ""
    return s if len(s) <= limit else s[:limit] + "..."


def failure_text(p, what):
    """One line for a failed process; crashes say so (kiln must never crash)."""
    msg = one_line(p.stderr)
    if p.returncode < 0:
        return f"{what} crashed (signal {-p.returncode})" + (f": {msg}" if msg else "")
    return msg or f"{what} exited with {p.returncode}"


def run(cmd, timeout=900, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def max_error(got, want):
    """max |got - want| / max |want|; inf when the shapes differ."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


# ---- references ---------------------------------------------------------------

def ort_session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    # the graph as exported: onnxruntime's fusions would change the numerics
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class OrtDecoder:
    """Greedy decoding of an optimum-style decoder-with-past with onnxruntime."""

    def __init__(self, path):
        self.s = ort_session(path)
        self.inputs = {i.name: i for i in self.s.get_inputs()}
        self.outputs = [o.name for o in self.s.get_outputs()]

    @staticmethod
    def feeds(inputs, ids, mask, past, pos0):
        """ids [B, S]; mask [B, past+S] (0 = padding); positions count the
        unpadded tokens, as transformers' generate() computes them."""
        f = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in inputs:
            f["position_ids"] = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, pos0:].astype(np.int64)
        f.update(past)
        return f

    def feed(self, ids, mask, past, pos0):
        f = self.feeds(self.inputs, ids, mask, past, pos0)
        return f, dict(zip(self.outputs, self.s.run(None, f)))

    def empty_past(self, batch):
        return {n: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
                for n, i in self.inputs.items() if n.startswith("past_key_values.")}

    def greedy(self, prompt, steps):
        past, ids, rows, toks, n = self.empty_past(1), list(prompt), [], [], 0
        for _ in range(steps):
            mask = np.ones((1, n + len(ids)), np.int64)
            _, out = self.feed(np.array([ids], np.int64), mask, past, n)
            row = out["logits"][0, -1]
            rows.append(row)
            toks.append(int(np.argmax(row)))
            n += len(ids)
            ids = [toks[-1]]
            past = {k: out[k.replace("past_key_values", "present")] for k in past}
        return toks, np.array(rows)

    def eval_cases(self, vocab, seed):
        """Inputs beyond what the LM runtime sends: batch 2 with left padding,
        then a decode step on the present it returned. Yields (feeds, ort outputs)."""
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, vocab, (2, 6)).astype(np.int64)
        mask = np.ones((2, 6), np.int64)
        mask[1, :2] = 0
        feeds, out = self.feed(ids, mask, self.empty_past(2), 0)
        yield feeds, out
        past = {k: out[k.replace("past_key_values", "present")] for k in self.empty_past(2)}
        ids2 = rng.integers(0, vocab, (2, 1)).astype(np.int64)
        mask2 = np.ones((2, 7), np.int64)
        mask2[1, :2] = 0
        yield self.feed(ids2, mask2, past, 6)


def file_digest(path):
    """Cheap identity of a model file or folder for the reference cache."""
    h = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.basename(p)}:{st.st_size}:{int(st.st_mtime)}".encode())
    for ref in ("ref_llama.py", "ref_bert.py"):
        with open(os.path.join(ROOT, "tests", "python", ref), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def numpy_decoder_reference(member, path, cache_dir):
    """float64 greedy run of ref_llama (cached: the real models take a while)."""
    ident = json.dumps([file_digest(path), member["prompt"], member["steps"]])
    key = hashlib.sha256(ident.encode()).hexdigest()[:20]
    cache = os.path.join(cache_dir, f"{member['name']}-{key}.npz")
    if os.path.exists(cache):
        z = np.load(cache)
        return [int(t) for t in z["tokens"]], z["logits"]
    import ref_llama
    if member["format"] == "gguf":
        cfg, W = ref_llama.load_gguf(path)
    elif member["format"] == "llama2.c":
        cfg, W = ref_llama.load_llama2c(path)
    else:
        cfg, W = ref_llama.load_hf(path)
    toks, logits = ref_llama.greedy(ref_llama.make_model(cfg, W), list(member["prompt"]), member["steps"])
    os.makedirs(cache_dir, exist_ok=True)
    np.savez(cache, tokens=np.array(toks), logits=logits)
    return toks, logits


def encoder_inputs(member, path, names):
    """Batch of token ids with padding on the last row; MiniLM gets real sentences."""
    B, S = member["batch"], member["seq"]
    rng = np.random.default_rng(1234)
    tok_json = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else None
    ids = None
    if tok_json and os.path.exists(tok_json) and member.get("sentences"):
        try:
            import tokenizers
            tok = tokenizers.Tokenizer.from_file(tok_json)
            tok.enable_padding(pad_id=0, pad_token="[PAD]", length=S)
            tok.enable_truncation(S)
            enc = tok.encode_batch(member["sentences"][:B])
            ids = np.array([e.ids for e in enc], np.int64)
            mask = np.array([e.attention_mask for e in enc], np.int64)
            types = np.array([e.type_ids for e in enc], np.int64)
        except ImportError:
            ids = None
    if ids is None:
        vocab = member["vocab"]
        ids = rng.integers(1, vocab, (B, S)).astype(np.int64)
        mask = np.ones((B, S), np.int64)
        mask[-1, S - S // 3:] = 0
        ids[mask == 0] = 0
        types = np.zeros((B, S), np.int64)
        types[:, S // 2:] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {k: v for k, v in feeds.items() if k in names}


# ---- kiln ----------------------------------------------------------------------

class Kiln:
    def __init__(self, path):
        self.path = path
        p = run([path, "ir", "--list-passes"])
        m = re.search(r"default pipeline: (\S+)", p.stdout)
        if p.returncode or not m:
            raise SystemExit(f"run_zoo: {path} does not run ({one_line(p.stderr) or p.returncode})")
        self.pipeline = m.group(1)

    def __call__(self, *args, timeout=900, check=True, what=None):
        p = run([self.path, *args], timeout=timeout)
        if check and p.returncode != 0:
            raise StageError(failure_text(p, f"kiln {what or args[0]}"))
        return p


def parse_ir_inputs(text):
    """{input name: (dtype, [dims as strings])} from `kiln ir` text."""
    ins = {}
    for m in re.finditer(r'^\s*input %("(?:[^"\\]|\\.)*"|\S+) : (\w+)\[([^\]]*)\]', text, re.M):
        name = m.group(1).strip('"')
        ins[name] = (m.group(2), [d.strip() for d in m.group(3).split(",") if d.strip()])
    return ins


def count_nodes(text):
    return sum(1 for l in text.splitlines() if re.match(r"\s*%.* = [A-Z]\w*\(", l))


def load_npys(out_dir, stdout):
    outs = {}
    for line in stdout.splitlines():
        name, sep, rest = line.partition(" -> ")
        if sep:
            name = name.split(": ")[0]
            outs[name] = np.load(rest.strip())
    return outs


def gpu_present():
    return shutil.which("nvidia-smi") is not None and run(["nvidia-smi", "-L"], timeout=60).returncode == 0


# ---- one member ------------------------------------------------------------------

class Member:
    def __init__(self, spec, kiln, args, work):
        self.m, self.k, self.args = spec, kiln, args
        self.dir = os.path.join(work, spec["name"])
        os.makedirs(self.dir, exist_ok=True)
        self.checks = list(spec.get("checks", CHECKS)) + (["gpu"] if args.target == "cuda" else [])
        self.r = {"name": spec["name"], "format": spec["format"], "kind": spec["kind"],
                  "reference": spec["reference"], "tolerance": spec["tolerance"], "status": "pass",
                  "failures": [], "import": None, "passes": None, "max_error": None, "errors": {},
                  "tokens_match": None, "compile_s": None, "arena_bytes": None, "cpu_tok_s": None,
                  "gpu_tok_s": None}
        self.model = None
        self.ref = None

    def fail(self, stage, msg):
        self.r["status"] = "fail"
        # paths inside the run's scratch folder change every run: keep diffs quiet
        msg = msg.replace(self.dir + os.sep, "").replace(ROOT + os.sep, "")
        self.r["failures"].append(f"{stage}: {msg}")

    def stage(self, name, fn):
        """Runs fn unless the check is off; a StageError marks the member failed."""
        if name not in self.checks:
            return None
        t0 = time.time()
        try:
            return fn()
        except StageError as e:
            self.fail(name, str(e))
        except subprocess.TimeoutExpired as e:
            self.fail(name, f"timed out after {e.timeout:.0f} s")
        except Exception as e:  # a reference or the runner itself broke: still a failed check
            self.fail(name, f"{type(e).__name__}: {one_line(str(e))}")
        finally:
            self.r.setdefault("stage_s", {})[name] = round(time.time() - t0, 2)
        return None

    # -- fetch
    def fetch(self):
        src = self.m["source"]
        if "generator" in src:
            out = os.path.join(self.dir, "model.onnx")
            p = run([sys.executable, os.path.join(ZOO, src["generator"]), out], timeout=300)
            if p.returncode:
                raise StageError(f"{src['generator']}: {one_line(p.stderr)}")
            return out
        if "shared_data" in src:
            p = os.path.join(ROOT, "..", "shared", "data", src["shared_data"])
            return os.path.abspath(p) if os.path.exists(p) else None
        path = os.path.join(ROOT, src["path"])
        if not os.path.exists(path) and self.args.fetch and src.get("fetch"):
            run([os.path.join(ROOT, src["fetch"])], timeout=1800)
        return path if os.path.exists(path) else None

    # -- stages
    def do_import(self):
        t0 = time.time()
        p = self.k("ir", self.model, what="ir")
        self.ir = p.stdout
        self.inputs = parse_ir_inputs(self.ir)
        n = count_nodes(self.ir)
        self.r["import"] = {"ok": True, "nodes": n, "seconds": round(time.time() - t0, 2)}
        return True

    def do_passes(self):
        p = self.k("ir", self.model, "--verify-each", "-v", what="ir --verify-each")
        counts = re.findall(r"pass (\S+)\s+(\d+) -> (\d+) nodes", p.stderr)
        self.r["passes"] = {"ok": True, "pipeline": self.k.pipeline,
                            "nodes_after": int(counts[-1][2]) if counts else count_nodes(p.stdout)}

    def bounds(self):
        """The symbol bounds kiln build plans for (and --memory reports at)."""
        if self.m["kind"] == "decoder":
            tok = self.inputs.get("input_ids") or self.inputs.get("tokens")
            past = next((v for n, v in self.inputs.items() if n.startswith("past_")), None)
            if not tok or not past or len(tok[1]) != 2 or len(past[1]) != 4:
                raise StageError("decoder inputs do not follow the LM convention")
            ctx = self.m["max_ctx"]
            return {tok[1][0]: 1, tok[1][1]: min(ctx, 512), past[1][2]: ctx}
        ids = self.inputs.get("input_ids")
        if not ids or len(ids[1]) != 2:
            raise StageError("encoder has no input_ids [batch, seq]")
        return {ids[1][0]: self.m["batch"], ids[1][1]: self.m["max_seq"]}

    def bound_args(self):
        out = []
        for k, v in self.bounds().items():
            if not re.fullmatch(r"-?\d+", k):  # static dims need no bound
                out += ["--bound", f"{k}={v}"]
        return out

    def do_build(self):
        self.exe = os.path.join(self.dir, "model.bin")
        extra = ["--max-ctx", str(self.m["max_ctx"])] if self.m["kind"] == "decoder" else self.bound_args()
        t0 = time.time()
        self.k("build", self.model, "-o", self.exe, *extra, timeout=1800, what="build")
        self.r["compile_s"] = round(time.time() - t0, 2)
        return True

    def do_memory(self):
        p = self.k("ir", self.model, "--passes", self.k.pipeline, "--memory", *self.bound_args(),
                   what="ir --memory")
        m = re.search(r"peak arena bytes: (\d+)", p.stdout)
        if not m:
            raise StageError("kiln ir --memory printed no 'peak arena bytes'")
        self.r["arena_bytes"] = int(m.group(1))

    def record_error(self, which, err):
        err = float(f"{err:.3g}")  # 3 digits: enough to see a regression, quiet in diffs
        self.r["errors"][which] = err
        self.r["max_error"] = max(self.r["errors"].values())
        if not err <= self.m["tolerance"]:
            raise StageError(f"{which} max error {err:.3g} > tolerance {self.m['tolerance']:.3g}")

    # -- references
    def reference(self):
        if self.ref is not None:
            return self.ref
        kind, refname = self.m["kind"], self.m["reference"]
        if kind == "decoder" and refname == "onnxruntime":
            dec = OrtDecoder(self.model)
            toks, logits = dec.greedy(self.m["prompt"], self.m["steps"])
            self.ref = {"tokens": toks, "logits": logits, "ort": dec}
        elif kind == "decoder":
            toks, logits = numpy_decoder_reference(self.m, self.model, os.path.join(self.args.cache, "ref"))
            self.ref = {"tokens": toks, "logits": logits}
        else:
            feeds = encoder_inputs(self.m, self.model, self.inputs)
            if refname == "onnxruntime":
                s = ort_session(self.model)
                outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
            else:
                import ref_bert
                cfg, W = ref_bert.load(self.model)
                hid, pooled = ref_bert.forward(cfg, W, feeds["input_ids"], feeds["attention_mask"],
                                               feeds.get("token_type_ids"))
                outs = {"last_hidden_state": hid, "sentence_embedding": pooled}
            self.ref = {"feeds": feeds, "outputs": outs}
        return self.ref

    def save_feeds(self, feeds, tag):
        args = []
        for name, arr in feeds.items():
            fn = os.path.join(self.dir, f"{tag}_{len(args)}.npy")
            np.save(fn, arr)
            args += ["--input", f"{name}={fn}"]
        return args

    def compare_outputs(self, got, want, which):
        err = 0.0
        for name, w in want.items():
            if name not in got:
                raise StageError(f"{which}: output {name} missing")
            err = max(err, max_error(got[name], w))
        self.record_error(which, err)

    def do_interp(self):
        ref = self.reference()
        if self.m["kind"] == "encoder":
            out_dir = os.path.join(self.dir, "interp_out")
            p = self.k("eval", self.model, *self.save_feeds(ref["feeds"], "in"), "--output-dir", out_dir,
                       what="eval")
            self.compare_outputs(load_npys(out_dir, p.stdout), ref["outputs"], "interp")
        elif "ort" in ref:
            # batch 2 with left padding, then one decode step: what the LM runtime never sends
            vocab = ref["logits"].shape[1]
            err = 0.0
            for i, (feeds, want) in enumerate(ref["ort"].eval_cases(vocab, seed=7)):
                out_dir = os.path.join(self.dir, f"interp_out{i}")
                p = self.k("eval", self.model, *self.save_feeds(feeds, f"case{i}"), "--output-dir", out_dir,
                           what="eval")
                got = load_npys(out_dir, p.stdout)
                for name, w in want.items():
                    if name not in got:
                        raise StageError(f"interp: output {name} missing")
                    err = max(err, max_error(got[name], w))
            self.record_error("interp", err)
        else:
            lg = os.path.join(self.dir, "interp_logits.npy")
            p = self.k("run", self.model, "--ids", ",".join(map(str, self.m["prompt"])), "-n", self.m["steps"],
                       "--logits", lg, what="run")
            toks = [int(t) for t in p.stdout.strip().split(",") if t]
            self.compare_prefix(toks, np.load(lg), "interp")
            if "oracle" in self.checks:
                self.r["oracle_match"] = toks == ref["tokens"]
                if toks != ref["tokens"]:
                    self.fail("oracle", f"kiln run tokens {fmt_ids(toks)} != reference {fmt_ids(ref['tokens'])}")

    def compare_prefix(self, toks, logits, which):
        """Logits rows agree while the token sequences agree (a diverging
        token changes every later row); the first row is always compared."""
        ref = self.reference()
        n = 1
        while n < min(len(toks), len(ref["tokens"])) and toks[n - 1] == ref["tokens"][n - 1]:
            n += 1
        if logits.shape[0] < n or logits.shape[1] != ref["logits"].shape[1]:
            raise StageError(f"{which}: logits shape {logits.shape} vs reference {ref['logits'].shape}")
        self.record_error(which, max_error(logits[:n], ref["logits"][:n]))

    def do_compiled(self):
        ref = self.reference()
        if self.m["kind"] == "encoder":
            out_dir = os.path.join(self.dir, "exe_out")
            p = run([self.exe, *self.save_feeds(ref["feeds"], "in"), "--output-dir", out_dir], timeout=600)
            if p.returncode:
                raise StageError(failure_text(p, "executable"))
            self.compare_outputs(load_npys(out_dir, p.stdout), ref["outputs"], "compiled")
            return
        lg = os.path.join(self.dir, "exe_logits.npy")
        p = run([self.exe, "--ids", ",".join(map(str, self.m["prompt"])), "-n", self.m["steps"], "--temp", 0,
                 "--logits", lg], timeout=600)
        if p.returncode:
            raise StageError(failure_text(p, "executable"))
        toks = [int(t) for t in p.stdout.strip().split(",") if t]
        self.r["tokens"] = toks
        self.r["ref_tokens"] = ref["tokens"]
        # how close the reference's greedy choices were (a near tie makes a
        # token mismatch a matter of rounding): min (top1 - top2) / max |logit|
        top2 = np.sort(ref["logits"], axis=1)[:, -2:]
        margin = (top2[:, 1] - top2[:, 0]) / np.max(np.abs(ref["logits"]), axis=1)
        self.r["ref_min_margin"] = float(f"{np.min(margin):.3g}")
        if "tokens" in self.checks:
            self.r["tokens_match"] = toks == ref["tokens"]
            if toks != ref["tokens"]:
                self.fail("tokens", f"compiled {fmt_ids(toks)} != reference {fmt_ids(ref['tokens'])}")
        self.compare_prefix(toks, np.load(lg), "compiled")

    def do_speed(self, exe=None, key="cpu_tok_s"):
        exe = exe or self.exe
        if self.m["kind"] == "encoder":
            feeds = self.reference()["feeds"]
            p = run([exe, *self.save_feeds(feeds, "in"), "--output-dir", os.path.join(self.dir, "speed_out"),
                     "--repeat", 5], timeout=600)
            m = re.search(r"best of \d+ runs: ([\d.]+) ms", p.stderr)
            if p.returncode or not m:
                raise StageError(failure_text(p, "executable") if p.returncode else "no timing printed")
            n_tok = feeds["input_ids"].size
            self.r[key] = round(n_tok / (float(m.group(1)) / 1e3), 1)
            return
        n = self.m.get("speed_tokens", self.m["steps"])
        p = run([exe, "--ids", ",".join(map(str, self.m["prompt"])), "-n", n, "--temp", 0], timeout=600)
        m = re.search(r"generated (\d+) tokens in ([\d.]+) s \(([\d.]+) tok/s\)", p.stderr)
        if p.returncode or not m:
            raise StageError(failure_text(p, "executable") if p.returncode else "no tok/s printed")
        self.r[key] = float(m.group(3))

    def do_gpu(self):
        if not gpu_present():
            self.r["gpu_tok_s"] = "n/a"
            return
        exe = os.path.join(self.dir, "model_cuda.bin")
        extra = ["--max-ctx", str(self.m["max_ctx"])] if self.m["kind"] == "decoder" else self.bound_args()
        p = self.k("build", self.model, "-o", exe, "--target", "cuda", *extra, timeout=1800, check=False)
        if p.returncode and "unknown target" in p.stderr:
            self.r["gpu_tok_s"] = "n/a"  # this kiln has no CUDA back end
            return
        if p.returncode:
            raise StageError(failure_text(p, "kiln build --target cuda"))
        if self.m["kind"] == "decoder":
            lg = os.path.join(self.dir, "cuda_logits.npy")
            p = run([exe, "--ids", ",".join(map(str, self.m["prompt"])), "-n", self.m["steps"], "--temp", 0,
                     "--logits", lg], timeout=600)
            if p.returncode:
                raise StageError(failure_text(p, "cuda executable"))
            toks = [int(t) for t in p.stdout.strip().split(",") if t]
            self.r["gpu_tokens_match"] = toks == self.reference()["tokens"]
            if not self.r["gpu_tokens_match"]:
                self.fail("gpu", f"cuda {fmt_ids(toks)} != reference {fmt_ids(self.reference()['tokens'])}")
            self.compare_prefix(toks, np.load(lg), "gpu")
        else:
            out_dir = os.path.join(self.dir, "cuda_out")
            ref = self.reference()
            p = run([exe, *self.save_feeds(ref["feeds"], "in"), "--output-dir", out_dir], timeout=600)
            if p.returncode:
                raise StageError(failure_text(p, "cuda executable"))
            self.compare_outputs(load_npys(out_dir, p.stdout), ref["outputs"], "gpu")
        self.do_speed(exe, "gpu_tok_s")

    def go(self):
        t0 = time.time()
        try:
            self.model = self.fetch()
        except StageError as e:
            self.fail("fetch", str(e))
            return self.r
        if not self.model:
            self.r["status"] = "skip"
            self.r["failures"].append("fetch: model not available (scripts/fetch_models.sh, ../shared/data)")
            return self.r
        if not self.stage("import", self.do_import):
            self.r["import"] = {"ok": False}
            self.r["passes"] = {"ok": False}
            return self.done(t0)
        self.stage("passes", self.do_passes)
        if self.r["passes"] is None:
            self.r["passes"] = {"ok": False}
        self.stage("memory", self.do_memory)
        built = self.stage("build", self.do_build)
        self.stage("interp", self.do_interp)
        if built:
            self.stage("compiled", self.do_compiled)
            self.stage("speed", self.do_speed)
            if self.args.target == "cuda":
                self.stage("gpu", self.do_gpu)
        return self.done(t0)

    def done(self, t0):
        self.r["seconds"] = round(time.time() - t0, 1)
        return self.r


def fmt_ids(t, n=12):
    return "[" + ",".join(map(str, t[:n])) + (",..." if len(t) > n else "") + "]"


# ---- reporting ---------------------------------------------------------------------

def fmt_bytes(b):
    return "-" if b is None else f"{b:,}"


def row_cells(r, cuda):
    def step(d, key):
        if r["status"] == "skip":
            return "skip"
        return f"ok ({d[key]} nodes)" if (d or {}).get("ok") else "FAIL"

    tm = r["tokens_match"]
    cells = [r["name"], r["format"], step(r["import"], "nodes"), step(r["passes"], "nodes_after"),
             "-" if r["max_error"] is None else f"{r['max_error']:.2e}",
             "-" if tm is None else ("yes" if tm else "NO"),
             "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}",
             fmt_bytes(r["arena_bytes"]),
             "-" if r["cpu_tok_s"] is None else f"{r['cpu_tok_s']:.0f}"]
    if cuda:
        g = r["gpu_tok_s"]
        cells.append("-" if g is None else (g if isinstance(g, str) else f"{g:.0f}"))
    cells.append(r["status"])
    return cells


HEAD = ["model", "format", "import", "passes", "max error", "tokens match", "compile s", "peak arena bytes",
        "CPU tok/s"]


def table(results, cuda, markdown=False):
    head = HEAD + (["GPU tok/s"] if cuda else []) + ["status"]
    rows = [row_cells(r, cuda) for r in results]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(c) + " |" for c in rows]
        return "\n".join(out)
    w = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head))]
    out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)) for row in rows]
    return "\n".join(out)


def failures(results):
    return [f"{r['name']}: {f}" for r in results for f in r["failures"]]


def revision():
    """The checkout's commit (+ "with local changes"), for the docs page."""
    try:
        rev = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], timeout=30).stdout.strip()
        dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + (" with local changes" if dirty else "")


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


DOC_HEAD = """# Model zoo

`make zoo` (or `python3 tests/zoo/run_zoo.py`) runs every member of
[`tests/zoo/manifest.json`](../tests/zoo/manifest.json) through kiln: import
(`kiln ir`), the default pass pipeline with `--verify-each` (each pass checked
against the interpreter), a CPU build (`kiln build`, timed), outputs compared
with the member's reference, greedy tokens of the compiled executable
compared token by token, the memory plan's peak arena at the build's bounds
(`kiln ir --memory`), and CPU speed. `--target cuda` adds GPU tokens/s on a
machine with a GPU (`n/a` elsewhere). CI (`ctest -R zoo`) runs the CPU zoo
and fails on any regression from [`tests/zoo/baseline.json`](../tests/zoo/baseline.json).

Members: tiny generated ONNX models written the way exporters write them
(`tests/zoo/gen_*.py`: random weights, fixed seeds, decomposed norms / GELU /
RoPE / attention, shapes rebuilt from `Shape` chains over symbolic
`batch_size` / `sequence_length` / `past_sequence_length`, the KV cache as
optimum's `past_key_values.N.*` / `present.N.*`), compared with onnxruntime
running the same file; and real checkpoints (stories260K llama2.c,
SmolLM2-135M Q4_1 GGUF, all-MiniLM-L6-v2 safetensors) compared with the
float64 numpy references in `tests/python/ref_llama.py` / `ref_bert.py`.

Columns: **max error** is max |kiln - reference| / max |reference| over every
compared output — the interpreter on inputs the LM runtime never sends
(batch 2, left padding, a decode step) and the compiled executable (the
logits of its greedy run, or the encoder's outputs); **tokens match**: the
executable's greedy tokens equal the reference's for every step; **peak
arena bytes**: activations the compiled model allocates (decoders: one
sequence, `--max-ctx` positions, prompt chunks of up to 512; encoders: the
listed batch and sequence bounds); **CPU tok/s**: decoders generate tokens,
encoders count input tokens of a batch (best of 5 runs). Timings come from
the machine below (shared, so noisy); only status, tokens and error are
checked against the baseline.

Adding a member: a generator `tests/zoo/gen_NAME.py OUT` (see
`tests/zoo/onnx_build.py` for the exporter-style pieces) or a real checkpoint,
an entry in the manifest (source, format, kind, reference, prompt/steps or
batch/seq, tolerance, checks), then `python3 tests/zoo/run_zoo.py --only NAME`
and, once it passes, `--write-baseline tests/zoo/baseline.json` over the
whole zoo.
"""


def write_markdown(path, results, cuda, kiln):
    lines = [DOC_HEAD, f"Generated by `python3 tests/zoo/run_zoo.py --markdown docs/zoo.md` "
                       f"(kiln {revision()}, default pipeline `{kiln.pipeline}`) on {machine()}.\n",
             table(results, cuda, markdown=True), ""]
    fl = failures(results)
    if fl:
        lines += ["## Failures", ""] + [f"- {f}" for f in fl] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ---- baseline ------------------------------------------------------------------------

def baseline_of(results):
    return {"members": {r["name"]: {"status": r["status"], "tokens_match": r["tokens_match"],
                                    "max_error": r["max_error"]} for r in results}}


def regressions(results, base, manifest, strict):
    """Messages for members that got worse than the baseline."""
    tol = {m["name"]: m["tolerance"] for m in manifest}
    bad, notes = [], []
    bm = base.get("members", {})
    for r in results:
        b = bm.get(r["name"])
        name = r["name"]
        if r["status"] == "skip":
            (bad if strict else notes).append(f"{name}: not run ({'; '.join(r['failures'])})")
            continue
        if b is None:
            if r["status"] != "pass":
                bad.append(f"{name}: new member does not pass: {'; '.join(r['failures'])}")
            continue
        if b["status"] == "pass" and r["status"] != "pass":
            bad.append(f"{name}: pass -> {r['status']}: {'; '.join(r['failures'])}")
        if b.get("tokens_match") and r["tokens_match"] is False:
            bad.append(f"{name}: tokens no longer match the reference")
        elif b.get("tokens_match") and r["tokens_match"] is None:
            bad.append(f"{name}: tokens no longer compared (the executable did not run)")
        if r["max_error"] is not None and not r["max_error"] <= tol[name]:
            bad.append(f"{name}: max error {r['max_error']:.3g} > tolerance {tol[name]:.3g}")
        if (b.get("max_error") is not None and r["max_error"] is not None and
                r["max_error"] > 10 * b["max_error"] and r["max_error"] <= tol[name]):
            notes.append(f"{name}: max error {r['max_error']:.3g} grew from {b['max_error']:.3g} "
                         "(within tolerance)")
    for name in bm:
        if name not in {r["name"] for r in results}:
            notes.append(f"{name}: in the baseline but not run")
    return bad, notes


# ---- main --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", default=os.environ.get("KILN_BIN") or os.path.join(ROOT, "build", "tools", "kiln"))
    ap.add_argument("--manifest", default=os.path.join(ZOO, "manifest.json"))
    ap.add_argument("--only", help="comma-separated member names")
    ap.add_argument("--target", choices=["cpu", "cuda"], default="cpu", help="cuda: add GPU tokens/s")
    ap.add_argument("--json", help="write the results here (e.g. tests/zoo/results.json)")
    ap.add_argument("--markdown", help="write the table as a markdown page (docs/zoo.md)")
    ap.add_argument("--baseline", help="compare with this baseline; exit 1 on a regression")
    ap.add_argument("--write-baseline", help="write the results' baseline form here")
    ap.add_argument("--strict", action="store_true", help="a member that cannot be fetched is a regression")
    ap.add_argument("--fetch", action="store_true", help="run scripts/fetch_models.sh for missing real models")
    ap.add_argument("--cache", default=os.path.join(ROOT, ".cache", "zoo"), help="reference cache and work dir")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (models, executables)")
    args = ap.parse_args()

    with open(args.manifest) as f:
        manifest = json.load(f)["members"]
    if args.only:
        want = args.only.split(",")
        unknown = [w for w in want if w not in {m["name"] for m in manifest}]
        if unknown:
            ap.error(f"unknown member(s): {', '.join(unknown)}")
        manifest = [m for m in manifest if m["name"] in want]
    kiln = Kiln(os.path.abspath(args.kiln))
    os.makedirs(args.cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="run-", dir=args.cache)
    cuda = args.target == "cuda"
    results = []
    t0 = time.time()
    try:
        for spec in manifest:
            print(f"zoo: {spec['name']} ...", file=sys.stderr, flush=True)
            r = Member(spec, kiln, args, work).go()
            print(f"zoo: {spec['name']}: {r['status']} ({r.get('seconds', 0):.1f} s)"
                  + "".join(f"\n  {f}" for f in r["failures"]), file=sys.stderr, flush=True)
            results.append(r)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"zoo: work directory kept: {work}", file=sys.stderr)

    print(table(results, cuda))
    for f in failures(results):
        print("  " + f)
    print(f"zoo: {sum(r['status'] == 'pass' for r in results)}/{len(results)} pass in {time.time() - t0:.0f} s")
    kiln_rel = os.path.relpath(kiln.path, ROOT) if kiln.path.startswith(ROOT + os.sep) else kiln.path
    doc = {"kiln": kiln_rel, "pipeline": kiln.pipeline, "target": args.target, "machine": machine(),
           "members": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True, default=float)
            f.write("\n")
    if args.markdown:
        write_markdown(args.markdown, results, cuda, kiln)
    if args.write_baseline:
        with open(args.write_baseline, "w") as f:
            json.dump(baseline_of(results), f, indent=1, sort_keys=True)
            f.write("\n")
    if args.baseline:
        with open(args.baseline) as f:
            base = json.load(f)
        with open(args.manifest) as f:
            full = json.load(f)["members"]
        bad, notes = regressions(results, base, full, args.strict)
        for n in notes:
            print(f"zoo: note: {n}")
        for b in bad:
            print(f"zoo: REGRESSION: {b}")
        if bad:
            return 1
        print(f"zoo: no regression from {os.path.relpath(args.baseline, ROOT)}")
        if any(r["status"] == "skip" for r in results):
            return 77  # ctest's "skipped": some members could not be checked
    return 0


if __name__ == "__main__":
    sys.exit(main())
