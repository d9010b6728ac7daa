"""Reads the CUDA program blob (runtime/kiln_cuda.h) out of a `kiln build
--target cuda` artifact: images (cubins per SM version, PTX), kernels and
launches. Used by tests/python/test_cuda_build.py and bench/gpu.sh; run it
as a script to print a summary:  python3 bench/gpu_prog.py ARTIFACT [SYM=N ...]
"""
import struct
import sys

MAGIC = b"KILNCUP1"
DX_CONST, DX_SYM, DX_ADD, DX_SUB, DX_MUL, DX_DIV = range(6)


class Reader:
    def __init__(self, b, off):
        self.b, self.o = b, off

    def u(self, n):
        v = int.from_bytes(self.b[self.o:self.o + n], "little")
        if self.o + n > len(self.b):
            raise ValueError("CUDA program truncated")
        self.o += n
        return v

    def s64(self):
        v = self.u(8)
        return v - (1 << 64) if v >> 63 else v

    def bytes(self, n):
        if self.o + n > len(self.b):
            raise ValueError("CUDA program truncated")
        v = self.b[self.o:self.o + n]
        self.o += n
        return v

    def dimexpr(self):
        return [(self.u(1), self.s64()) for _ in range(self.u(1))]


def eval_dim(e, syms):
    st = []
    for op, arg in e:
        if op == DX_CONST:
            st.append(arg)
        elif op == DX_SYM:
            st.append(syms[arg])
        else:
            b, a = st.pop(), st.pop()
            st.append({DX_ADD: a + b, DX_SUB: a - b, DX_MUL: a * b, DX_DIV: a // b if b else 0}[op])
    return st[-1] if st else 0


def read(path):
    """Parses the program inside an artifact; returns a dict."""
    with open(path, "rb") as f:
        blob = f.read()
    # the runtime's own code holds the magic string too: take the copy that
    # parses as a program
    off, err = blob.find(MAGIC), None
    while off >= 0:
        try:
            return parse(blob, off)
        except (ValueError, UnicodeDecodeError) as e:
            err = e
        off = blob.find(MAGIC, off + 1)
    raise ValueError(f"{path}: no CUDA program inside ({err})")


def parse(blob, off):
    r = Reader(blob, off + 8)
    p = {"version": r.u(4), "flags": r.u(4)}
    if p["version"] != 1:
        raise ValueError("not a version 1 program")
    ns, nk, nl, ni = r.u(4), r.u(4), r.u(4), r.u(4)
    const_bytes, p["scratch"] = r.u(8), r.u(8)
    r.bytes(const_bytes)
    p["const_bytes"] = const_bytes
    p["slots"] = [(r.u(1), r.u(4), r.s64()) for _ in range(ns)]
    p["kernels"] = [r.bytes(r.u(2)).decode() for _ in range(nk)]
    launches = []
    for _ in range(nl):
        L = {"kind": r.u(1), "kernel": r.u(4), "block": r.u(4), "smem": r.u(4), "grid": []}
        for _ in range(3):
            L["grid"].append((r.dimexpr(), r.s64()))
        L["cond"] = r.u(1)
        L["cond_e"] = r.dimexpr()
        L["cond_c"] = r.s64()
        L["args"] = [(r.u(1), r.s64()) for _ in range(r.u(2))]
        L["node"] = r.u(4)
        launches.append(L)
    p["launches"] = launches
    p["images"] = []
    for _ in range(ni):
        arch, size = r.u(4), r.u(8)
        p["images"].append((arch, r.bytes(size)))
    return p


def active(p, syms):
    """Launches that run for the given symbol values (list of launch dicts)."""
    out = []
    for L in p["launches"]:
        if L["cond"]:
            v = eval_dim(L["cond_e"], syms)
            if not (v <= L["cond_c"] if L["cond"] == 1 else v > L["cond_c"]):
                continue
        if L["kind"] == 0:
            g = [-(-eval_dim(e, syms) // per) for e, per in L["grid"]]
            if min(g) <= 0:
                continue
        out.append(L)
    return out


def cubin_arch(img):
    """SM version an ELF cubin was built for (from e_flags), or None."""
    if img[:4] != b"\x7fELF":
        return None
    e_machine = struct.unpack_from("<H", img, 18)[0]
    if e_machine != 190:  # EM_CUDA
        return None
    flags = struct.unpack_from("<I", img, 48)[0]
    # CUDA 12+ cubins keep the SM number in bits 8..15, older ones in 0..7
    return (flags >> 8) & 0xff if (flags >> 8) & 0xff else flags & 0xff


if __name__ == "__main__":
    prog = read(sys.argv[1])
    syms = [1] * 16
    for a in sys.argv[2:]:
        i, v = a.split("=")
        syms[int(i)] = int(v)
    print("images:", [(a, len(b), cubin_arch(b)) for a, b in prog["images"]])
    print("kernels:", len(prog["kernels"]), "launches:", len(prog["launches"]),
          "active at", syms[:4], ":", len(active(prog, syms)))
