"""kiln viz (.dot, .svg, .html) and kiln ir --memory.

Every expectation is computed here from the graph as `kiln ir --format json`
prints it (or from the ONNX model itself): nodes, edges with their
dtype[shape], fused-kernel clusters, buffer sizes at the --bound sizes,
lifetimes, the naive sum and the lower bound. The HTML is loaded in headless
Chromium, which must report no console output or script errors and render
one node element per IR node.
"""
import html.parser
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from kiln_util import run_kiln, shared_data

ALIGN = 64  # the planner's arena alignment (passes/memplan.c)
ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i8": 1, "u8": 1, "i16": 2, "u16": 2,
            "i32": 4, "u32": 4, "i64": 8, "u64": 8, "bool": 1}
SVG = "{http://www.w3.org/2000/svg}"


# ---- models ---------------------------------------------------------------------------

def kir_fused():
    """Fused groups (kernel ids), a value used twice by one node, two outputs."""
    return """kir 1
graph "fused" {
  sym batch, seq
  input %x : f32[batch, seq, 4]
  input %b : f32[4]
  %y : f32[batch, seq, 4] = Add(%x, %x) kernel 0
  %y2 = Mul(%y, %b) kernel 0
  %z = Softmax(%y2) {axis = -1}
  %e = Exp(%z) kernel 7
  %n = Neg(%e) kernel 7
  %s = Sub(%n, %y2) kernel 7
  %w = MatMul(%s, %y2) loc "final matmul"
  output %w, %y
}
"""


def kir_chain():
    """No elementwise or view ops, so every non-output result gets its own
    arena buffer; rows of 16 f32 are 64 bytes, so sizes are exact multiples
    of the alignment."""
    w = ", ".join(f"{v:.4f}" for v in np.linspace(-1, 1, 256))
    return f"""kir 1
graph "chain" {{
  sym seq
  input %x : f32[seq, 16]
  const %w1 : f32[16, 16] = [{w}]
  %h1 = MatMul(%x, %w1)
  %h2 = Softmax(%h1) {{axis = -1}}
  %h3 = MatMul(%h2, %w1)
  %t = Transpose(%h3) {{perm = [1, 0]}}
  %u = MatMul(%t, %h1)
  %s = Softmax(%u) {{axis = 0}}
  %c = Concat(%h2, %h3) {{axis = 0}}
  %m = MatMul(%c, %s)
  output %m
}}
"""


def kir_escape():
    """Names with markup and quote characters, a backslash, a tab, non-ASCII."""
    return ('kir 1\ngraph "a<b>&\\"q\\"" {\n'
            '  input %"x<&>\\"\'" : f32[4]\n'
            '  %"y&amp;" = Relu(%"x<&>\\"\'") loc "node <1> & \\"quoted\\" \\\\ back"\n'
            '  %z = Neg(%"y&amp;") loc "tab\\there"\n'
            '  %q = Exp(%z) loc "\u00fcber \u2192 \U0001f600"\n'
            '  output %q\n}\n')


def onnx_mlp():
    """A small MLP built with onnx.helper; `fold_me` adds two initializers,
    so canonicalize folds it away (kiln viz --after sees one node less)."""
    rng = np.random.default_rng(7)
    init = lambda n, a: numpy_helper.from_array(np.asarray(a), n)  # noqa: E731
    nodes = [
        helper.make_node("Add", ["a", "b"], ["ab"], name="fold_me"),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "ab"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="mm2"),
        helper.make_node("Add", ["o", "x"], ["res"], name="residual"),
        helper.make_node("Softmax", ["res"], ["y"], name="softmax", axis=-1),
        helper.make_node("Transpose", ["y"], ["yt"], name="tr", perm=[1, 0]),
    ]
    g = helper.make_graph(
        nodes, "onnx_mlp", [helper.make_tensor_value_info("x", TP.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("yt", TP.FLOAT, [8, "batch"])],
        [init("w1", rng.standard_normal((8, 16)).astype(np.float32)),
         init("w2", rng.standard_normal((16, 8)).astype(np.float32)),
         init("a", np.ones(16, np.float32)), init("b", np.ones(16, np.float32))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


MODELS = ["fused", "chain", "escape", "onnx", "stories260K"]
BOUNDS = {"fused": ["batch=2", "seq=8"], "chain": ["seq=8"], "escape": [], "onnx": ["batch=4"],
          "stories260K": ["batch=1", "seq=32", "past=96"]}


def model_path(kind, tmp_path):
    if kind == "stories260K":
        p = shared_data("stories260K.bin")
        if not p:
            pytest.skip("stories260K.bin not in ../shared/data")
        return p
    if kind == "onnx":
        p = tmp_path / "mlp.onnx"
        onnx.save_model(onnx_mlp(), str(p))
        return str(p)
    text = {"fused": kir_fused, "chain": kir_chain, "escape": kir_escape}[kind]()
    p = tmp_path / f"{kind}.kir"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def bound_args(kind):
    return [a for b in BOUNDS[kind] for a in ("--bound", b)]


def ir_json(path, *extra):
    return json.loads(run_kiln("ir", path, "--format", "json", *extra).stdout)


# ---- facts computed from the IR JSON ----------------------------------------------------

def type_str(t):
    if t["shape"] is None:
        return t["dtype"] + "[*]"
    return t["dtype"] + "[" + ", ".join(str(d) for d in t["shape"]) + "]"


def src_id(j, v):
    val = j["values"][v]
    if val["kind"] == "node":
        return f"n{val['producer']}"
    if val["kind"] == "input":
        return f"v{v}"
    return None  # weights and consts are not drawn


def expected_edges(j):
    """(source id, target id, value id) per (value, consumer)."""
    edges = []
    for n in j["nodes"]:
        seen = set()
        for v in n["inputs"]:
            if v < 0 or v in seen:
                continue
            seen.add(v)
            s = src_id(j, v)
            if s:
                edges.append((s, f"n{n['id']}", v))
    for i, v in enumerate(j["outputs"]):
        s = src_id(j, v)
        if s:
            edges.append((s, f"o{i}", v))
    return edges


def kernels(j):
    ks = {}
    for n in j["nodes"]:
        if n["kernel"] >= 0:
            ks.setdefault(n["kernel"], set()).add(n["id"])
    return ks


def second_line(j, n):
    return n["name"] if n["name"] else "%" + j["values"][n["outputs"][0]]["name"]


def value_bytes(j, v, bounds):
    env = {k: int(x) for k, x in (b.split("=") for b in bounds)}
    t = j["values"][v]["type"]
    n = 1
    for d in t["shape"]:
        if isinstance(d, str):
            # symbolic dims print as sums/products of symbols ("past+seq");
            # unbound symbols plan at 1
            names = re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", d)
            d = eval(d.replace("/", "//"), {"__builtins__": {}}, {s: env.get(s, 1) for s in names})
        n *= d
    return n * ITEMSIZE[t["dtype"]]


def align(b):
    return (b + ALIGN - 1) // ALIGN * ALIGN


# ---- DOT ----------------------------------------------------------------------------------

TOKEN = re.compile(r'\s*(?:(->)|([{}\[\];,=])|"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_.]+))', re.S)


def dot_tokens(text):
    pos, out = 0, []
    while True:
        m = TOKEN.match(text, pos)
        if not m:
            assert text[pos:].strip() == "", f"DOT: cannot tokenize at {text[pos:pos + 40]!r}"
            return out
        pos = m.end()
        if m.group(3) is not None:
            s = re.sub(r'\\(.)', lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), m.group(3))
            out.append(("str", s))
        else:
            out.append(("sym", m.group(1) or m.group(2) or m.group(4)))


def parse_dot(text):
    """A parser for the DOT subset kiln writes: statements `ID [attrs]`,
    `ID -> ID [attrs]`, `graph|node|edge [attrs]`, `subgraph ID { ... }`,
    `ID = ID`. Returns nodes {id: attrs}, edges [(a, b, attrs)], clusters
    {name: [node ids]}."""
    toks = dot_tokens(text)
    i = 0

    def take(kind=None, val=None):
        nonlocal i
        assert i < len(toks), "DOT: unexpected end"
        t = toks[i]
        assert kind is None or t[0] == kind, f"DOT: expected {kind}, got {t}"
        assert val is None or t[1] == val, f"DOT: expected {val!r}, got {t}"
        i += 1
        return t[1]

    def attrs():
        a = {}
        if i < len(toks) and toks[i] == ("sym", "["):
            take("sym", "[")
            while toks[i] != ("sym", "]"):
                k = take()
                take("sym", "=")
                a[k] = take()
                if toks[i] in (("sym", ","), ("sym", ";")):
                    take()
            take("sym", "]")
        return a

    nodes, edges, clusters = {}, [], {}

    def stmts(cluster):
        while toks[i] != ("sym", "}"):
            t = take()
            if t == "subgraph":
                name = take()
                take("sym", "{")
                clusters[name] = []
                stmts(name)
                take("sym", "}")
            elif t in ("graph", "node", "edge"):
                attrs()
            elif i < len(toks) and toks[i] == ("sym", "->"):
                take()
                b = take()
                edges.append((t, b, attrs()))
            elif i < len(toks) and toks[i] == ("sym", "="):
                take()
                take()
            else:
                assert t not in nodes, f"DOT: node {t} defined twice"
                nodes[t] = attrs()
                if cluster:
                    clusters[cluster].append(t)
            if i < len(toks) and toks[i] == ("sym", ";"):
                take()

    take("sym", "digraph")
    take()
    take("sym", "{")
    stmts(None)
    take("sym", "}")
    assert i == len(toks), "DOT: text after the graph"
    return nodes, edges, clusters


@pytest.mark.parametrize("kind", MODELS)
def test_dot(kind, tmp_path):
    path = model_path(kind, tmp_path)
    j = ir_json(path)
    out = tmp_path / "g.dot"
    run_kiln("viz", path, "-o", out)
    nodes, edges, clusters = parse_dot(out.read_text())
    n = len(j["nodes"])
    assert sorted(k for k in nodes if k.startswith("n")) == sorted(f"n{i}" for i in range(n))
    assert sorted(k for k in nodes if k.startswith("v")) == sorted(f"v{v}" for v in j["inputs"])
    assert sorted(k for k in nodes if k.startswith("o")) == sorted(f"o{i}" for i in range(len(j["outputs"])))
    for node in j["nodes"]:
        assert nodes[f"n{node['id']}"]["label"] == node["op"] + "\n" + clean(second_line(j, node))
    exp = sorted((a, b, type_str(j["values"][v]["type"])) for a, b, v in expected_edges(j))
    got = sorted((a, b, at["label"]) for a, b, at in edges)
    assert got == exp
    want = {f"cluster_k{k}": ids for k, ids in kernels(j).items()}
    assert {c: {int(x[1:]) for x in ids} for c, ids in clusters.items()} == want
    if kind == "fused":
        assert len(clusters) == 2  # the test model must exercise clusters


def clean(s):
    """A name as DOT labels carry it: control characters become spaces."""
    return s.replace("\t", " ")


# ---- SVG ----------------------------------------------------------------------------------

def classes(el):
    return el.get("class", "").split()


def translate(el):
    m = re.fullmatch(r"translate\(([-\d.]+) ([-\d.]+)\)", el.get("transform"))
    return float(m.group(1)), float(m.group(2))


def svg_boxes(graph):
    """id -> (x0, y0, w, h, element) for node and io boxes."""
    boxes = {}
    for g in graph.iter(SVG + "g"):
        if "node" in classes(g) or "io" in classes(g):
            x, y = translate(g)
            r = g.find(SVG + "rect")
            boxes[g.get("id")] = (x, y, float(r.get("width")), float(r.get("height")), g)
    return boxes


def path_points(d):
    """On-curve points of a path made of M, C and L commands."""
    pts = []
    for cmd, args in re.findall(r"([MCL])([^MCL]*)", d):
        nums = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", args)]
        assert len(nums) == {"M": 2, "L": 2, "C": 6}[cmd], d
        pts.append((nums[-2], nums[-1]))
    assert d.startswith("M") and len(pts) >= 2
    return pts


@pytest.mark.parametrize("kind", MODELS)
def test_svg(kind, tmp_path):
    path = model_path(kind, tmp_path)
    j = ir_json(path)
    out = tmp_path / "g.svg"
    run_kiln("viz", path, "-o", out, *bound_args(kind))
    root = ET.parse(out).getroot()  # well-formed XML
    graph = next(g for g in root.iter(SVG + "g") if "graph" in classes(g))
    n = len(j["nodes"])
    node_els = [g for g in graph.iter(SVG + "g") if "node" in classes(g)]
    assert len(node_els) == n and int(graph.get("data-nodes")) == n
    assert sorted(int(g.get("data-node")) for g in node_els) == list(range(n))
    for g in node_els:
        node = j["nodes"][int(g.get("data-node"))]
        assert g.get("data-op") == node["op"] and int(g.get("data-kernel")) == node["kernel"]
        texts = [t.text for t in g.findall(SVG + "text")]
        assert texts[0] == node["op"]
        name = second_line(j, node)
        assert texts[1] == name or (texts[1].endswith("\u2026") and name.startswith(texts[1][:-1]))
    # edges: the expected set, each from the source's bottom centre to the target's top centre
    boxes = svg_boxes(graph)
    assert len(boxes) == n + len(j["inputs"]) + len(j["outputs"])
    paths = [p for p in graph.iter(SVG + "path") if "edge" in classes(p)]
    exp = sorted((a, b, j["values"][v]["name"]) for a, b, v in expected_edges(j))
    assert sorted((p.get("data-src"), p.get("data-dst"), p.get("data-value")) for p in paths) == exp
    # an edge crossing layers leaves its value's lane, drawn once from the
    # producer down to the deepest use
    lanes = {p.get("data-value"): p for p in graph.iter(SVG + "path") if "lane" in classes(p)}
    for p in paths:
        pts = path_points(p.get("d"))
        (sx, sy), (tx, ty) = pts[0], pts[-1]
        bx, by, bw, bh, _ = boxes[p.get("data-src")]
        src_port = (bx + bw / 2, by + bh)
        if p.get("data-lane"):
            lane = lanes[p.get("data-value")]
            assert lane.get("data-src") == p.get("data-src")
            lp = path_points(lane.get("d"))
            assert abs(lp[0][0] - src_port[0]) < 0.2 and abs(lp[0][1] - src_port[1]) < 0.2
            # the edge leaves at a lane point or along a straight vertical run
            assert any(abs(x0 - sx) < 0.2 and abs(x1 - sx) < 0.2 and y0 - 0.2 <= sy <= y1 + 0.2
                       for (x0, y0), (x1, y1) in zip(lp, lp[1:]))
            assert all(y1 >= y0 for (_, y0), (_, y1) in zip(lp, lp[1:]))
        else:
            assert abs(sx - src_port[0]) < 0.2 and abs(sy - src_port[1]) < 0.2
        bx, by, bw, bh, _ = boxes[p.get("data-dst")]
        assert abs(tx - (bx + bw / 2)) < 0.2 and abs(ty - by) < 0.2
        assert ty > sy  # layered top to bottom
    assert set(lanes) <= {p.get("data-value") for p in paths if p.get("data-lane")}
    if kind in ("fused", "stories260K"):
        assert lanes  # the models exercise edges that cross layers
    # every edge's value has its dtype[shape] written under the producer
    labels = {t.text for t in graph.iter(SVG + "text") if "elabel" in classes(t)}
    for _, _, v in expected_edges(j):
        assert type_str(j["values"][v]["type"]) in labels
    # boxes do not overlap one another and lie inside the picture
    vb = [float(x) for x in root.get("viewBox").split()]
    items = list(boxes.values())
    for a in range(len(items)):
        x0, y0, w0, h0, _ = items[a]
        assert x0 >= 0 and x0 + w0 <= vb[2]
        for b in range(a + 1, len(items)):
            x1, y1, w1, h1, _ = items[b]
            assert x0 + w0 <= x1 or x1 + w1 <= x0 or y0 + h0 <= y1 or y1 + h1 <= y0
    # one cluster box per kernel, around its nodes
    ks = kernels(j)
    cl = [g for g in graph.iter(SVG + "g") if "cluster" in classes(g)]
    assert sorted(int(c.get("data-kernel")) for c in cl) == sorted(ks)
    for c in cl:
        r = c.find(SVG + "rect")
        rx, ry, rw, rh = (float(r.get(k)) for k in ("x", "y", "width", "height"))
        members = ks[int(c.get("data-kernel"))]
        assert int(c.get("data-size")) == len(members)
        for i in members:
            x, y, w, h, _ = boxes[f"n{i}"]
            assert rx <= x and x + w <= rx + rw and ry <= y and y + h <= ry + rh
    if kind == "escape":
        titles = [t.text for t in graph.iter(SVG + "title")]
        assert any('node <1> & "quoted" \\ back' in t for t in titles)
        assert any('%x<&>"\'' in t for t in titles)
        assert any("\u00fcber \u2192 \U0001f600" in t for t in titles)
    check_timeline(root, j, kind)


def check_timeline(root, j, kind):
    mem = next(g for g in root.iter(SVG + "g") if "memory" in classes(g))
    bufs = [r for r in mem.iter(SVG + "rect") if "buf" in classes(r)]
    assert int(mem.get("data-buffers")) == len(bufs) > 0
    nn = len(j["nodes"])
    uses = {}
    for node in j["nodes"]:
        for v in node["inputs"]:
            if v >= 0:
                uses.setdefault(v, []).append(node["id"])
    rows = []
    for r in bufs:
        v = int(r.get("data-vid"))
        val = j["values"][v]
        assert val["kind"] == "node" and v not in j["outputs"]
        assert r.get("data-value") == val["name"]
        off, size = int(r.get("data-offset")), int(r.get("data-bytes"))
        first, last = int(r.get("data-first")), int(r.get("data-last"))
        assert size == value_bytes(j, v, BOUNDS[kind])
        assert first == val["producer"] == int(r.get("data-node")) and first <= last < nn
        assert off % ALIGN == 0
        rows.append((v, off, size, first, last))
    if kind == "chain":
        # no views and no in-place ops: lifetimes are exactly producer..last use
        assert sorted(v for v, *_ in rows) == sorted(
            v for v, val in enumerate(j["values"]) if val["kind"] == "node" and v not in j["outputs"])
        for v, _, _, first, last in rows:
            assert last == max(uses[v])
    # no two buffers live at the same time share bytes
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            _, oa, sa, fa, la = rows[a]
            _, ob, sb, fb, lb = rows[b]
            if fa <= lb and fb <= la:
                assert oa + align(sa) <= ob or ob + align(sb) <= oa, (rows[a], rows[b])
    peak = int(mem.get("data-arena-bytes"))
    assert peak == max(o + align(s) for _, o, s, _, _ in rows)
    assert int(mem.get("data-naive-bytes")) == sum(align(s) for _, _, s, _, _ in rows)
    live = max(sum(align(s) for _, _, s, f, la in rows if f <= t <= la) for t in range(nn + 1))
    assert int(mem.get("data-lower-bound")) == live <= peak


def test_svg_without_plan(tmp_path):
    """A shape that depends on input values cannot be planned: the picture
    still shows the graph and says why the timeline is missing."""
    p = tmp_path / "dd.kir"
    p.write_text('kir 1\ngraph "dd" {\n  input %x : f32[6]\n  input %s : i64[2]\n'
                 '  %y = Reshape(%x, %s)\n  %z = Relu(%y)\n  output %z\n}\n')
    out = tmp_path / "dd.svg"
    r = run_kiln("viz", p, "-o", out)
    assert "%y" in r.stderr
    root = ET.parse(out).getroot()
    assert len([g for g in root.iter(SVG + "g") if "node" in classes(g)]) == 2
    mem = next(g for g in root.iter(SVG + "g") if "memory" in classes(g))
    assert "memory plan unavailable" in "".join(mem.itertext()) and "%y" in "".join(mem.itertext())
    bad = run_kiln("ir", p, "--memory", check=False)
    assert bad.returncode == 2 and "%y" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_after_pass(tmp_path):
    """--after shows the graph after that pass (the folded Add is gone)."""
    path = model_path("onnx", tmp_path)
    raw, canon = ir_json(path), ir_json(path, "--after", "canonicalize")
    assert len(canon["nodes"]) == len(raw["nodes"]) - 1 == len(onnx_mlp().graph.node) - 1
    for j, extra in ((raw, []), (canon, ["--after", "canonicalize"])):
        out = tmp_path / "g.svg"
        run_kiln("viz", path, "-o", out, *extra)
        root = ET.parse(out).getroot()
        assert len([g for g in root.iter(SVG + "g") if "node" in classes(g)]) == len(j["nodes"])


# ---- kiln ir --memory -----------------------------------------------------------------------

def memory_report(path, bounds):
    out = run_kiln("ir", path, "--memory", *[a for b in bounds for a in ("--bound", b)]).stdout
    kv, rows = {}, []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line == "largest buffers:":
            for row in lines[i + 2:]:
                f = row.split()
                rows.append((int(f[0]), int(f[1]), f[2], f[3]))
            break
        k, sep, v = line.partition(": ")
        if sep:
            kv[k] = v
    return kv, rows


@pytest.mark.parametrize("seq", [8, 32])
def test_ir_memory_chain(seq, tmp_path):
    path = model_path("chain", tmp_path)
    j = ir_json(path)
    bounds = [f"seq={seq}"]
    kv, rows = memory_report(path, bounds)
    # independent: every non-output result is an arena buffer live from its
    # producer to its last use
    last = {}
    for node in j["nodes"]:
        for v in node["inputs"]:
            last[v] = node["id"]
    arena = [v for v, val in enumerate(j["values"]) if val["kind"] == "node" and v not in j["outputs"]]
    size = {v: value_bytes(j, v, bounds) for v in arena}
    naive = sum(align(size[v]) for v in arena)
    lower = max(sum(align(size[v]) for v in arena if j["values"][v]["producer"] <= t <= last[v])
                for t in range(len(j["nodes"]) + 1))
    peak = int(kv["peak arena bytes"])
    assert int(kv["naive sum bytes"]) == naive
    assert int(kv["lower bound bytes"]) == lower
    assert lower <= peak <= naive
    assert float(kv["peak / naive"]) == pytest.approx(peak / naive, abs=1e-4)
    assert float(kv["peak / lower bound"]) == pytest.approx(peak / lower, abs=1e-4)
    assert int(kv["arena buffers"]) == len(arena)
    # largest first, sizes and lifetimes as computed here
    assert len(rows) == min(10, len(arena))
    assert [r[0] for r in rows] == sorted((size[v] for v in arena), reverse=True)[:len(rows)]
    names = {j["values"][v]["name"]: v for v in arena}
    for b, off, span, name in rows:
        v = names[name[1:]]
        assert b == size[v] and span == f"{j['values'][v]['producer']}..{last[v]}"
        assert off + b <= peak


@pytest.mark.parametrize("kind", ["fused", "onnx", "stories260K"])
def test_ir_memory_matches_viz(kind, tmp_path):
    path = model_path(kind, tmp_path)
    kv, rows = memory_report(path, BOUNDS[kind])
    out = tmp_path / "g.svg"
    run_kiln("viz", path, "-o", out, *bound_args(kind))
    mem = next(g for g in ET.parse(out).getroot().iter(SVG + "g") if "memory" in classes(g))
    assert int(kv["peak arena bytes"]) == int(mem.get("data-arena-bytes"))
    assert int(kv["naive sum bytes"]) == int(mem.get("data-naive-bytes"))
    assert int(kv["lower bound bytes"]) == int(mem.get("data-lower-bound"))
    assert int(kv["arena buffers"]) == int(mem.get("data-buffers"))
    sizes = sorted((int(r.get("data-bytes")) for r in mem.iter(SVG + "rect") if "buf" in classes(r)),
                   reverse=True)
    assert [r[0] for r in rows] == sizes[:len(rows)]
    if kind == "stories260K":
        # the planner reuses memory across the five layers
        assert int(kv["peak arena bytes"]) * 3 < int(kv["naive sum bytes"])


# ---- HTML in headless Chromium ----------------------------------------------------------------

class DomScan(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.attrs_by_id, self.root_attrs, self.nodes, self.bufs = {}, None, 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.root_attrs = a
        if "id" in a:
            self.attrs_by_id[a["id"]] = a
        cls = (a.get("class") or "").split()
        self.nodes += tag == "g" and "node" in cls
        self.bufs += tag == "rect" and "buf" in cls


def chromium_load(page, tmp_path):
    """Loads a page headless; returns (returncode, DomScan, console lines)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (scripts/deps.sh installs Debian's chromium)")
    profile = tmp_path / "chromium-profile"
    p = subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                        "--disable-extensions", f"--user-data-dir={profile}", "--enable-logging=stderr",
                        "--v=0", "--dump-dom", "file://" + str(page)],
                       capture_output=True, text=True, timeout=240)
    scan = DomScan()
    scan.feed(p.stdout)
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line]
    return p.returncode, scan, console


@pytest.mark.parametrize("kind", MODELS)
def test_html_in_chromium(kind, tmp_path):
    path = model_path(kind, tmp_path)
    j = ir_json(path)
    page = tmp_path / "g.html"
    run_kiln("viz", path, "-o", page, *bound_args(kind))
    text = page.read_text(encoding="utf-8")
    # one self-contained file: nothing fetched
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", text, re.I)
    assert "<link" not in text and "@import" not in text and "url(http" not in text
    rc, dom, console = chromium_load(page, tmp_path)
    assert rc == 0
    assert console == [], console
    assert dom.root_attrs is not None and "data-errors" not in dom.root_attrs
    viz = dom.attrs_by_id["kiln-viz"]
    assert viz.get("data-status") == "ok"  # the page's script ran to its end
    n = len(j["nodes"])
    assert int(viz["data-rendered-nodes"]) == int(viz["data-nodes"]) == dom.nodes == n
    assert int(viz["data-rendered-buffers"]) == int(viz["data-buffers"]) == dom.bufs > 0


PROBE = """<!DOCTYPE html><html><body>
<iframe id="f" src="g.html" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById('f').addEventListener('load', function () {
  var d = this.contentDocument, w = this.contentWindow, out = [];
  function ev(el, type, init) { el.dispatchEvent(new w.MouseEvent(type, init || {})); }
  try {
    var nodes = d.querySelectorAll('#graph-svg g.node'), node = nodes[1];
    ev(node, 'mouseenter');
    out.push('details=' + (d.getElementById('details').textContent.indexOf(node.getAttribute('data-op')) === 0));
    out.push('marked=' + node.classList.contains('hl'));
    out.push('edges=' + d.querySelectorAll('path.edge.hl').length);
    ev(node, 'mouseleave');
    out.push('unmarked=' + d.querySelectorAll('.hl').length);
    var svg = d.getElementById('graph-svg'), vb = svg.viewBox.baseVal, w0 = vb.width, r = svg.getBoundingClientRect();
    svg.dispatchEvent(new w.WheelEvent('wheel', {deltaY: -100, clientX: r.left + r.width / 2,
                                                 clientY: r.top + 100, bubbles: true, cancelable: true}));
    out.push('zoomed=' + (vb.width < w0));
    var x0 = vb.x;
    ev(svg, 'mousedown', {clientX: r.left + 300, clientY: r.top + 200, bubbles: true});
    ev(w, 'mousemove', {clientX: r.left + 350, clientY: r.top + 200});
    ev(w, 'mouseup');
    out.push('panned=' + (vb.x < x0));
    ev(svg, 'dblclick', {bubbles: true});
    out.push('reset=' + (vb.width === w0));
    var find = d.getElementById('find'), last = nodes[nodes.length - 1];
    find.value = 'final MATMUL';
    find.dispatchEvent(new w.KeyboardEvent('keydown', {key: 'Enter'}));
    out.push('found=' + last.classList.contains('hl'));
    var m = /translate\\(([-\\d.]+) ([-\\d.]+)\\)/.exec(last.getAttribute('transform'));
    var r0 = last.querySelector('rect'), cx = +m[1] + r0.width.baseVal.value / 2,
        cy = +m[2] + r0.height.baseVal.value / 2;
    out.push('centred=' + (Math.abs(vb.x + vb.width / 2 - cx) < 1 && Math.abs(vb.y + vb.height / 2 - cy) < 1));
    var buf = d.querySelector('rect.buf');
    ev(buf, 'mouseenter');
    out.push('producer=' + d.getElementById('n' + buf.getAttribute('data-node')).classList.contains('hl'));
  } catch (e) { out.push('error=' + e.message); }
  document.body.setAttribute('data-result', out.join(';'));
});
</script></body></html>
"""


def test_html_interaction(tmp_path):
    """Hover details and highlights, wheel zoom, drag pan, reset, search,
    buffer -> producer: driven by synthetic events from a page that embeds
    the viz page."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (scripts/deps.sh installs Debian's chromium)")
    path = model_path("fused", tmp_path)
    run_kiln("viz", path, "-o", tmp_path / "g.html", *bound_args("fused"))
    (tmp_path / "probe.html").write_text(PROBE)
    p = subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                        "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}",
                        "--window-size=1300,1000", "--dump-dom", "file://" + str(tmp_path / "probe.html")],
                       capture_output=True, text=True, timeout=240)
    m = re.search(r'data-result="([^"]*)"', p.stdout)
    assert m, p.stdout[-2000:]
    got = dict(kv.split("=", 1) for kv in m.group(1).split(";"))
    touching = sum("n1" in (a, b) for a, b, _ in expected_edges(ir_json(path)))
    assert got == {"details": "true", "marked": "true", "edges": str(touching), "unmarked": "0", "zoomed": "true",
                   "panned": "true", "reset": "true", "found": "true", "centred": "true", "producer": "true"}, got


def test_chromium_harness_sees_errors(tmp_path):
    """The check above can fail: a page with a script error and console
    output is caught both ways."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><script>window.addEventListener('error',function(e){"
                    "document.documentElement.setAttribute('data-errors',e.message);});</script></head>"
                    "<body><script>console.error('boom');</script><script>noSuchFunction();</script>"
                    "</body></html>")
    rc, dom, console = chromium_load(page, tmp_path)
    assert any("boom" in c for c in console)
    assert "noSuchFunction" in dom.root_attrs.get("data-errors", "")


def test_invalid_utf8_names(tmp_path):
    """Names are bytes from model files; pictures stay valid UTF-8 (and
    XML), invalid bytes shown as '?'."""
    p = tmp_path / "bad.kir"
    p.write_bytes(b'kir 1\ngraph "g" {\n  input %x : f32[4]\n'
                  b'  %y = Relu(%x) loc "bad\xff\xfe utf8 \xc3"\n  output %y\n}\n')
    for ext in ("svg", "dot", "html"):
        out = tmp_path / f"g.{ext}"
        run_kiln("viz", p, "-o", out)
        out.read_bytes().decode("utf-8")  # strict
    root = ET.parse(tmp_path / "g.svg").getroot()
    node = next(g for g in root.iter(SVG + "g") if "node" in classes(g))
    assert [t.text for t in node.findall(SVG + "text")] == ["Relu", "bad?? utf8 ?"]
    nodes, _, _ = parse_dot((tmp_path / "g.dot").read_text())
    assert nodes["n0"]["label"] == "Relu\nbad?? utf8 ?"
    rc, dom, console = chromium_load(tmp_path / "g.html", tmp_path)
    assert rc == 0 and console == [] and dom.nodes == 1
    assert dom.attrs_by_id["kiln-viz"].get("data-status") == "ok"


# ---- bad input ----------------------------------------------------------------------------------

def test_viz_bad_input(tmp_path):
    good = model_path("chain", tmp_path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07\x12\xff\xff\xff\xff\x0fnot a model")
    broken = tmp_path / "broken.kir"
    broken.write_text('kir 1\ngraph "g" {\n  input %x : f32[4]\n  %y = NoSuchOp(%x)\n  output %y\n}\n')
    cases = [
        (["viz", tmp_path / "missing.kir", "-o", tmp_path / "a.svg"], "missing.kir"),
        (["viz", garbage, "-o", tmp_path / "a.svg"], "garbage.onnx"),
        (["viz", broken, "-o", tmp_path / "a.svg"], "broken.kir"),
        (["viz", good, "-o", tmp_path / "a.png"], "a.png"),
        (["viz", good, "-o", tmp_path / "no" / "such" / "dir" / "a.svg"], "a.svg"),
        (["viz", good, "-o", tmp_path / "a.svg", "--after", "nosuchpass"], "nosuchpass"),
        (["viz", good, "-o", tmp_path / "a.svg", "--bound", "seq"], "--bound"),
        (["viz", good], "usage"),
        (["viz", good, "-o", tmp_path / "a.svg", "--frobnicate"], "usage"),
        (["ir", good, "--memory", "--bound", "seq=-3"], "--bound"),
    ]
    for args, needle in cases:
        r = run_kiln(*args, check=False)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
    assert not (tmp_path / "a.svg").exists() and not (tmp_path / "a.png").exists()


# ---- docs/cli.md ----------------------------------------------------------------------------------

def test_cli_reference_covers_usage():
    """docs/cli.md has a section per command `kiln --help` lists, and each
    section names every option of that command's usage line."""
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "cli.md")).read()
    sections = dict(re.findall(r"^## kiln (\S+)\n(.*?)(?=^## |\Z)", doc, re.M | re.S))
    cmds = re.findall(r"^  (\S+)\s{2,}\S", run_kiln("--help").stdout, re.M)
    assert "viz" in cmds and len(cmds) >= 8
    for cmd in cmds:
        assert cmd in sections, f"docs/cli.md has no section for kiln {cmd}"
        usage = run_kiln(cmd, "--help").stdout
        for opt in set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage)):
            assert opt in sections[cmd], f"docs/cli.md: kiln {cmd} does not mention {opt}"
