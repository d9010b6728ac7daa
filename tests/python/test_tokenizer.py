"""Tokenizer tests: kiln's C tokenizer (driven through `kiln tokenize`) against
the Hugging Face `tokenizers` package, jinja2 renderings of chat templates,
and small independent Python references where no HF equivalent exists.

The C code produces every id and every decoded string checked here; Python
only builds the reference tokenizers and compares."""
import json
import os
import random
import subprocess
import tempfile

import gguf
import numpy as np
import pytest
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

from kiln_util import ROOT, kiln_bin, run_kiln

DATA = os.path.join(ROOT, "tests", "data", "multilingual.txt")
MINILM = os.path.join(ROOT, ".cache", "models", "minilm", "tokenizer.json")
SMOLLM = os.path.join(ROOT, ".cache", "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

RE_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
RE_LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
             r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
RE_QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
            r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Strings that stress the pre-tokenizer regexes, whitespace handling and
# special-token matching.
TRICKY = [
    "", " ", "  ", "   ", "\n", "\n\n", " \n ", "\r\n", "a\r\nb\r\n\r\nc", "   \n\n  x", "x  \n  y",
    "a", "'s", "'S", "'Re", "x's", "x'S", "!!'s", "''", "' s", "he's'll've", "I'M",
    "hello  world", "hello\tworld", "\thello", "hello\t", "\u00a0x", "a\u00a0\u00a0b", "\x1c\x1d\x1ex",
    "\x85x", "a\u3000b", "a\u2028b", "zero\u200bwidth", "\u200d", "\ufeffBOM",
    "12345678", "1 2  3", "1234567 89", "٣٤٥", "२०२४", "Ⅻ½²", "x2y10", "3.14", "-7",
    "((()))", "...", "!?", "a.b,c;d:e", "$$$ 100", "--flag=value", "#!/bin/sh", "__init__",
    "CamelCaseWord", "ALLCAPS", "naïve", "É", "ǅ", "ﬁ ligature", "e\u0301", "\u0301start",
    "Ἀθῆναι", "İı", "ß ẞ", "ΣΑΣ σας", "한국어", "\u1100\u1161\u11a8", "가각",
    "😀", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "a😀b", "日本語", "中文字符", "\U00020000\U0002a6d6",
    "\U0002b820\U0002b920",
    "<|im_start|>user\nhi<|im_end|>", "x<|im_end|>y", "<|im_start|><|im_start|>", "<|im_start", "<|endoftext|>",
    "[CLS] x [SEP]", "[UNK]", "[MASK] token", "<s> text </s>", "<0x41>",
    "a" * 300, "ab" * 150 + " " + "x" * 120, "\u4e00" * 50, "😀" * 30,
    "don't stop", "y'all", "rock'n'roll", "'tis", "O'Neil's",
]


def corpus_lines():
    with open(DATA, encoding="utf-8") as f:
        text = f.read()
    return text, text.split("\n")


def all_strings():
    text, lines = corpus_lines()
    return lines + [text] + TRICKY


# ---- driving kiln -------------------------------------------------------------------

def kiln_batch(tok_path, strings, *flags):
    """Encodes each string with kiln (one process); returns [(ids, decoded)]."""
    assert not any("\0" in s for s in strings)
    data = "\0".join(strings).encode("utf-8", "surrogatepass")
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        f.write(data)
    try:
        p = subprocess.run([kiln_bin(), "tokenize", tok_path, "--file", f.name, "--batch", *flags],
                           capture_output=True, timeout=600)
    finally:
        os.unlink(f.name)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    # strict UTF-8: kiln's decoder must never emit invalid sequences
    out = [json.loads(line.decode("utf-8")) for line in p.stdout.split(b"\n")[:-1]]
    assert len(out) == len(strings)
    return [(o["ids"], o["text"]) for o in out]


def kiln_ids(tok_path, text, *flags):
    p = run_kiln("tokenize", tok_path, text, *flags)
    return [int(x) for x in p.stdout.split()]


def kiln_decode(tok_path, ids, *flags):
    p = subprocess.run([kiln_bin(), "tokenize", tok_path, "--decode", ",".join(map(str, ids)), *flags],
                       capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("utf-8")
    assert out.endswith("\n")
    return out[:-1]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


def compare(tok_path, ref, strings, add_special=True, check_decode=True, roundtrip=False, what=""):
    """kiln ids == reference ids for every string; decoded text (special
    tokens skipped) == the reference's decode; with roundtrip, decoding
    without skipping gives back the string."""
    flags = [] if add_special else ["--no-special"]
    got = kiln_batch(tok_path, strings, "--skip-special", *flags)
    bad = []
    for s, (ids, text) in zip(strings, got):
        want = ref.encode(s, add_special_tokens=add_special).ids
        if ids != want:
            bad.append(f"{what} ids for {s[:60]!r}:\n  kiln {ids[:40]}\n  ref  {want[:40]}")
        elif check_decode and text != ref.decode(ids, skip_special_tokens=True):
            bad.append(f"{what} decode for {s[:60]!r}: {text[:80]!r} vs {ref.decode(ids)[:80]!r}")
    if roundtrip:
        for s, (ids, text) in zip(strings, kiln_batch(tok_path, strings, "--no-special")):
            if text != s:
                bad.append(f"{what} round trip for {s[:60]!r}: {text[:80]!r}")
    assert not bad, f"{len(bad)} mismatches of {len(strings)}:\n" + "\n".join(bad[:10])


def smollm_roundtrip_strings():
    """all_strings() less those with a byte SmolLM2's vocabulary lacks
    (0x1D, ...: dropped by design, as llama.cpp and tokenizers do)."""
    _, tokens, *_ = smollm_arrays()
    vocab = set(tokens)
    return [s for s in all_strings() if all(bytelevel_char(b) in vocab for b in s.encode())]


# ---- references -------------------------------------------------------------------------

def minilm_ref():
    t = Tokenizer.from_file(MINILM)
    t.no_padding()
    t.no_truncation()
    return t


def smollm_arrays():
    r = gguf.GGUFReader(SMOLLM)
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    merges = f["tokenizer.ggml.merges"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    return r, tokens, merges, types


def bytelevel_ref(pre, ignore_merges=False):
    """SmolLM2's vocabulary and merges (read from the GGUF by the gguf package)
    with the given pre-tokenizer, as a tokenizers.Tokenizer."""
    r, tokens, merges, types = smollm_arrays()
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], ignore_merges=ignore_merges)
    t = Tokenizer(bpe)
    t.pre_tokenizer = pre
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                          for i in range(len(tokens)) if types[i] == 3])
    return t


def smollm_ref():
    # what tokenizer.ggml.pre = "smollm" means: SmolLM2's tokenizer.json pre-tokenizer
    r, *_ = smollm_arrays()
    assert r.fields["tokenizer.ggml.pre"].contents() == "smollm"
    return bytelevel_ref(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]))


# ---- WordPiece (MiniLM) ---------------------------------------------------------------------

def test_minilm_ids_and_decode():
    compare(MINILM, minilm_ref(), all_strings(), what="minilm")


def test_minilm_dir_and_no_special():
    ref = minilm_ref()
    d = os.path.dirname(MINILM)
    text = "Hello, World! Ça va? 你好"
    assert kiln_ids(d, text) == ref.encode(text).ids
    assert kiln_ids(d, text, "--no-special") == ref.encode(text, add_special_tokens=False).ids


def test_minilm_info():
    out = run_kiln("tokenize", MINILM, "--info").stdout
    assert "model: wordpiece" in out and "vocab: 30522" in out


def write_bert_gguf(path):
    """MiniLM's vocabulary as llama.cpp's converter writes BERT vocabularies:
    word-initial tokens get a leading '▁', '##' continuations lose the '##'."""
    ref = json.load(open(MINILM))
    vocab = sorted(ref["model"]["vocab"].items(), key=lambda kv: kv[1])
    toks, types = [], []
    for t, _ in vocab:
        if t.startswith("[") and t.endswith("]"):
            toks.append(t)
            types.append(3)
        elif t.startswith("##"):
            toks.append(t[2:])
            types.append(1)
        else:
            toks.append("\u2581" + t)
            types.append(1)
    w = gguf.GGUFWriter(path, "bert")
    w.add_tokenizer_model("bert")
    w.add_token_list(toks)
    w.add_token_types(types)
    ids = {t: i for t, i in vocab}
    w.add_unk_token_id(ids["[UNK]"])
    w.add_sep_token_id(ids["[SEP]"])
    w.add_uint32("tokenizer.ggml.cls_token_id", ids["[CLS]"])
    w.add_pad_token_id(ids["[PAD]"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_bert_gguf(tmp):
    path = str(tmp / "bert.gguf")
    write_bert_gguf(path)
    compare(path, minilm_ref(), all_strings(), what="bert-gguf")


def test_wordpiece_normalizer_variants(tmp):
    """MiniLM's vocabulary under other normalizers / pre-tokenizers, which
    exercise the NFD/NFC/lowercase tables and the other splitters."""
    base = json.load(open(MINILM))
    variants = {
        "nfd-lower-strip-ws": (normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(),
                                                     normalizers.StripAccents()]),
                               pre_tokenizers.Whitespace()),
        "nfc-wsplit-digits": (normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()]),
                              pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Digits(individual_digits=False)])),
        "bert-cased-nochinese": (normalizers.BertNormalizer(lowercase=False, handle_chinese_chars=False,
                                                            strip_accents=False),
                                 pre_tokenizers.BertPreTokenizer()),
        "strip-replace": (normalizers.Sequence([normalizers.Strip(), normalizers.Replace("  ", " X "),
                                                normalizers.Lowercase()]),
                          pre_tokenizers.BertPreTokenizer()),
    }
    for name, (norm, pre) in variants.items():
        t = minilm_ref()
        t.normalizer = norm
        t.pre_tokenizer = pre
        path = str(tmp / f"wp-{name}.json")
        t.save(path)
        compare(path, t, all_strings(), what=name)
        # the normalizer alone, as text
        got = [json.loads(line)["norm"] for line in subprocess.run(
            [kiln_bin(), "tokenize", path, "--file", "-", "--batch", "--normalize"],
            input="\0".join(all_strings()).encode(), capture_output=True, check=True).stdout.split(b"\n")[:-1]]
        want = [t.normalizer.normalize_str(s) for s in all_strings()]
        assert got == want, name


# ---- byte-level BPE (SmolLM2 from GGUF) -----------------------------------------------------

def test_smollm2_gguf_ids_decode_roundtrip():
    compare(SMOLLM, smollm_ref(), all_strings(), what="smollm2")
    compare(SMOLLM, smollm_ref(), smollm_roundtrip_strings(), roundtrip=True, what="smollm2")


def test_smollm2_json_path(tmp):
    """The same tokenizer as tokenizer.json (the HF path) gives the same ids."""
    ref = smollm_ref()
    path = str(tmp / "smollm2.json")
    ref.save(path)
    compare(path, ref, all_strings(), what="smollm2-json")
    compare(path, ref, smollm_roundtrip_strings(), what="smollm2-json", roundtrip=True)


@pytest.mark.parametrize("kind", ["gpt2", "llama3", "qwen2"])
def test_bytelevel_regexes(tmp, kind):
    """GPT-2, Llama-3 and Qwen2 pre-tokenizer regexes (as tokenizer.json writes
    them), on SmolLM2's vocabulary."""
    if kind == "gpt2":
        ref = bytelevel_ref(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        ref = bytelevel_ref(pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(RE_LLAMA3 if kind == "llama3" else RE_QWEN2), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), ignore_merges=(kind == "llama3"))
    path = str(tmp / f"bl-{kind}.json")
    ref.save(path)
    compare(path, ref, all_strings(), what=kind)
    compare(path, ref, smollm_roundtrip_strings(), what=kind, roundtrip=True)


def test_bytelevel_add_prefix_space_and_added_tokens(tmp):
    """ByteLevel(add_prefix_space) and added tokens with lstrip / rstrip /
    single_word / normalized flags."""
    ref = bytelevel_ref(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True))
    ref.normalizer = normalizers.Lowercase()
    ref.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=False, normalized=False),
                    AddedToken("Hello", normalized=True),
                    AddedToken("cat", single_word=True, normalized=False)])
    path = str(tmp / "bl-added.json")
    ref.save(path)
    strings = all_strings() + ["a <mask> b", "x<mask>y", "  <mask>  ", "HELLO hello Hello", "cat concat cat. cats",
                               "the cat sat", "<|im_end|> <mask>"]
    compare(path, ref, strings, what="added")


# ---- SentencePiece-style BPE with byte fallback ---------------------------------------------

def train_spm(tmp, llama_style):
    """A small BPE with byte fallback trained on the multilingual file: rare
    characters need <0xNN> tokens. llama_style: Llama-2's tokenizer.json layout
    (Prepend + Replace normalizer, no pre-tokenizer, Replace/ByteFallback/
    Fuse/Strip decoder); else a Metaspace pre-tokenizer and decoder."""
    text, lines = corpus_lines()
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False, special_tokens=[])
    t.train_from_iterator(lines * 3, trainer)
    trained = json.loads(t.to_str())["model"]
    # ids: <unk> <s> </s>, the 256 byte tokens, then the trained pieces
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    spm = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if llama_style:
        spm.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        spm.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        spm.pre_tokenizer = pre_tokenizers.Metaspace()
        spm.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    spm.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ("<unk>", "<s>", "</s>")])
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = str(tmp / f"spm-{'llama' if llama_style else 'meta'}.json")
    spm.save(path)
    return spm, path


@pytest.mark.parametrize("llama_style", [False, True])
def test_spm_byte_fallback(tmp, llama_style):
    ref, path = train_spm(tmp, llama_style)
    strings = all_strings()
    used = set()
    for ids, _ in kiln_batch(path, strings):
        used.update(ids)
    assert any(3 <= i < 259 for i in used), "no byte-fallback token was exercised"
    compare(path, ref, strings, what="spm")
    # round trip: decoding restores the text (for text without special
    # tokens: each piece between them gets its own "▁" prefix)
    plain = [s for s in strings if not any(t in s for t in ("<s>", "</s>", "<unk>"))]
    for s, (ids, text) in zip(plain, kiln_batch(path, plain, "--no-special")):
        if llama_style:
            assert text == s, (s, text)
        else:  # Metaspace turns "▁" in the text into spaces and drops a leading one
            assert text == s.replace("\u2581", " ").removeprefix(" ") or text == s, (s, text)


def spm_reference_encode(text, vocab, byte_ids, scores, add_bos, bos):
    """llama.cpp's SentencePiece algorithm, independently: escape spaces, then
    repeatedly merge the adjacent pair whose concatenation is the highest
    scoring vocabulary entry (leftmost on ties); pieces left outside the
    vocabulary become their <0xNN> byte tokens."""
    out = [bos] if add_bos else []
    if not text:
        return out
    syms = list(("\u2581" + text).replace(" ", "\u2581"))
    while True:
        best, best_i = None, -1
        for i in range(len(syms) - 1):
            m = syms[i] + syms[i + 1]
            if m in vocab and (best is None or scores[vocab[m]] > best):
                best, best_i = scores[vocab[m]], i
        if best_i < 0:
            break
        syms[best_i:best_i + 2] = [syms[best_i] + syms[best_i + 1]]
    for s in syms:
        if s in vocab:
            out.append(vocab[s])
        else:
            out += [byte_ids[f"<0x{b:02X}>"] for b in s.encode("utf-8")]
    return out


def test_spm_gguf_scores(tmp):
    """GGUF tokenizer.ggml.model = "llama": merges come from token scores."""
    ref, _ = train_spm(tmp, True)
    vocab = ref.get_vocab()
    toks = [None] * len(vocab)
    for t, i in vocab.items():
        toks[i] = t
    # scores like SentencePiece's: later (rarer) pieces score lower
    scores = [0.0] * len(toks)
    types = [1] * len(toks)
    for i, t in enumerate(toks):
        if i < 3:
            types[i] = 2 if i == 0 else 3
        elif i < 259:
            types[i] = 6
        else:
            scores[i] = -float(i)
    path = str(tmp / "spm.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    normal = {t: i for i, t in enumerate(toks) if types[i] == 1}
    strings = [s for s in all_strings() if "<s>" not in s and "</s>" not in s and "<unk>" not in s]
    got = kiln_batch(path, strings)
    bad = []
    for s, (ids, text) in zip(strings, got):
        want = spm_reference_encode(s, normal, vocab, scores, True, 1)
        if ids != want:
            bad.append((s[:40], ids[:20], want[:20]))
        if text != ref.decode(ids, skip_special_tokens=False):
            bad.append(("decode", s[:40], text[:40], ref.decode(ids, skip_special_tokens=False)[:40]))
    assert not bad, bad[:5]


# ---- chat templates ---------------------------------------------------------------------------

def render(template, messages, **kw):
    import jinja2
    env = jinja2.Environment()
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(ValueError(m))
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **kw)


def test_chatml_smollm2():
    r, tokens, *_ = smollm_arrays()
    template = r.fields["tokenizer.chat_template"].contents()
    ref = smollm_ref()
    for user, system in [("What is 2+2?", None), ("Bonjour 😀\nligne 2", "Be brief."), ("", None)]:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        want = render(template, msgs)
        sys_args = ["--system", system] if system else []
        got = run_kiln("tokenize", SMOLLM, user, "--chat-text", *sys_args).stdout
        assert got == want
        assert kiln_ids(SMOLLM, user, "--chat", *sys_args) == ref.encode(want, add_special_tokens=False).ids
    assert "chat_template: chatml" in run_kiln("tokenize", SMOLLM, "--info").stdout


# Public chat templates of the Llama-2 and Llama-3 instruct models (the parts
# that matter without tools), used as fixtures.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def chat_dir(tmp, name, template, specials, bos, eos):
    ref, path = train_spm(tmp, True)
    ref.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    d = tmp / name
    d.mkdir(exist_ok=True)
    ref.save(str(d / "tokenizer.json"))
    cfg = {"bos_token": bos, "eos_token": {"content": eos}}
    if template is not None:
        cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return ref, str(d)


@pytest.mark.parametrize("kind", ["llama2", "llama3"])
def test_llama_chat_templates(tmp, kind):
    if kind == "llama2":
        ref, d = chat_dir(tmp, kind, LLAMA2_TEMPLATE, [], "<s>", "</s>")
        bos, eos = "<s>", "</s>"
    else:
        ref, d = chat_dir(tmp, kind, LLAMA3_TEMPLATE,
                          ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                          "<|begin_of_text|>", "<|eot_id|>")
        bos, eos = "<|begin_of_text|>", "<|eot_id|>"
    assert f"chat_template: {kind}" in run_kiln("tokenize", d, "--info").stdout
    for user, system in [("  Hi there!  ", None), ("Question?\n", "  You are terse. "), ("x", "")]:
        msgs = ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user", "content": user}]
        want = render(LLAMA2_TEMPLATE if kind == "llama2" else LLAMA3_TEMPLATE, msgs, bos_token=bos,
                      eos_token=eos)
        sys_args = ["--system", system] if system is not None else []
        got = run_kiln("tokenize", d, user, "--chat-text", *sys_args).stdout
        assert got == want, (got, want)
        assert kiln_ids(d, user, "--chat", *sys_args) == ref.encode(want, add_special_tokens=False).ids


def test_chat_template_errors(tmp):
    _, d = chat_dir(tmp, "weird", "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}",
                    [], "<s>", "</s>")
    p = run_kiln("tokenize", d, "hi", "--chat", check=False)
    assert p.returncode == 2 and "unrecognized chat template" in p.stderr and "<<{{ m['role'] }}>>" in p.stderr
    _, d = chat_dir(tmp, "none", None, [], "<s>", "</s>")
    p = run_kiln("tokenize", d, "hi", "--chat", check=False)
    assert p.returncode == 2 and "no chat template" in p.stderr
    p = run_kiln("tokenize", MINILM, "hi", "--chat", check=False)
    assert p.returncode == 2 and "no chat template" in p.stderr


# ---- streaming decode ----------------------------------------------------------------------------

def stream_chunks(tok, ids, *flags):
    p = subprocess.run([kiln_bin(), "tokenize", tok, "--decode", ",".join(map(str, ids)), "--stream", *flags],
                       capture_output=True, timeout=600, check=True)
    raw = p.stdout.split(b"\n")[:-1]
    assert len(raw) == len(ids) + 1  # one chunk per token, then the flush
    chunks = [json.loads(c.decode("utf-8")) for c in raw]  # each chunk strictly valid UTF-8
    for c in chunks:
        c.encode("utf-8")  # no lone surrogates either
    return chunks


def bytelevel_char(b):
    """GPT-2's printable stand-in for byte b (computed as GPT-2 defines it)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if b in bs:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in bs].index(b))


def test_stream_decode_holds_back_partial_characters(tmp):
    ref = smollm_ref()
    blob = str(tmp / "smollm-stream.ktok")  # imported once, reused by every call below
    run_kiln("tokenize", SMOLLM, "--save", blob)
    _, tokens, *_ = smollm_arrays()
    text = "Emoji 👨‍👩‍👧‍👦 and 日本語 and ḉ\u0301 and 🇫🇷!"
    ids = ref.encode(text).ids
    chunks = stream_chunks(blob, ids)
    assert "".join(chunks) == text
    # some token ended inside a character, so its chunk had to wait
    assert any("\ufffd" in ref.decode([i]) for i in ids)
    assert any(c == "" for c in chunks[:-1])
    # invalid byte sequences become U+FFFD like Python's (and Rust's) lossy decoding
    vocab = {t: i for i, t in enumerate(tokens)}
    byte_tok = {b: vocab[bytelevel_char(b)] for b in range(256) if bytelevel_char(b) in vocab}
    rng = random.Random(5)
    for trial in range(40):
        raw = bytes(rng.choice([0x41, 0x80, 0xbf, 0xc3, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xed, 0xa0,
                                0xf4, 0x90, 0xe0, 0x20]) for _ in range(rng.randint(1, 12)))
        ids = [byte_tok[b] for b in raw]
        chunks = stream_chunks(blob, ids)
        assert "".join(chunks) == raw.decode("utf-8", "replace"), raw
        assert kiln_decode(blob, ids) == raw.decode("utf-8", "replace")


def test_decode_skip_special():
    ref = smollm_ref()
    ids = ref.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert kiln_decode(SMOLLM, ids) == "<|im_start|>user\nhi<|im_end|>"
    assert kiln_decode(SMOLLM, ids, "--skip-special") == ref.decode(ids, skip_special_tokens=True)


# ---- robustness and speed ---------------------------------------------------------------------------

def test_invalid_utf8_input(tmp):
    raw = b"ok \xff\xfe bad \xc3 trunc \xe2\x82 x \xed\xa0\x80 surrogate \xc0\xaf overlong"
    path = tmp / "bad.txt"
    path.write_bytes(raw)
    for tok in (SMOLLM, MINILM):
        p = run_kiln("tokenize", tok, "--file", str(path))
        ids = [int(x) for x in p.stdout.split()]
        assert ids
    # byte-level BPE keeps every byte it has a token for (SmolLM2 has none for
    # 0xC0 0xC1 0xF5..0xFF, which UTF-8 never uses: they are dropped, as
    # llama.cpp does); decoding gives the lossy text of what is left
    _, tokens, *_ = smollm_arrays()
    missing = {b for b in range(256) if bytelevel_char(b) not in set(tokens)}
    ids = [int(x) for x in run_kiln("tokenize", SMOLLM, "--file", str(path)).stdout.split()]
    kept = bytes(b for b in raw if b not in missing)
    assert missing & set(raw) and kiln_decode(SMOLLM, ids) == kept.decode("utf-8", "replace")
    _, path_spm = train_spm(tmp, True)
    ids = [int(x) for x in run_kiln("tokenize", path_spm, "--file", str(path), "--no-special").stdout.split()]
    assert kiln_decode(path_spm, ids).encode() == raw.decode("utf-8", "replace").encode()


def test_bad_inputs(tmp):
    cases = [
        (["tokenize", str(tmp / "missing.json"), "x"], "no such file"),
        (["tokenize", DATA, "x"], "not valid JSON"),
        (["tokenize", SMOLLM, "--decode", "1,99999999"], "out of range"),
        (["tokenize", SMOLLM, "--decode", "1,x"], "bad token id"),
        (["tokenize"], "usage"),
    ]
    (tmp / "unigram.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    cases.append((["tokenize", str(tmp / "unigram.json"), "x"], "Unigram is not supported"))
    t = minilm_ref()
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d+"), behavior="isolated")
    t.save(str(tmp / "regex.json"))
    cases.append((["tokenize", str(tmp / "regex.json"), "x"], "Split pre-tokenizer"))
    for args, msg in cases:
        p = run_kiln(*args, check=False)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert msg in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) <= 3


def test_corrupt_blobs_never_crash(tmp):
    """A .ktok blob truncated or with random bytes flipped is refused or
    tokenizes without crashing (every table is bounds-checked at load)."""
    good = str(tmp / "minilm.ktok")
    run_kiln("tokenize", MINILM, "--save", good)
    spath = str(tmp / "smollm.ktok")
    run_kiln("tokenize", SMOLLM, "--save", spath)
    for src in (good, spath):
        blob = open(src, "rb").read()
        assert kiln_ids(src, "Hello world") == kiln_ids(MINILM if src == good else SMOLLM, "Hello world")
        rng = np.random.default_rng(1)
        for trial in range(60):
            b = bytearray(blob)
            if trial < 10:
                b = b[: int(rng.integers(0, len(b)))]
            else:
                # hit the header often: that is where offsets and sizes live
                for _ in range(int(rng.integers(1, 8))):
                    pos = int(rng.integers(0, 200 if trial % 2 else len(b)))
                    b[pos] = int(rng.integers(0, 256))
            bad = str(tmp / "bad.ktok")
            open(bad, "wb").write(bytes(b))
            p = subprocess.run([kiln_bin(), "tokenize", bad, "Hello wörld 😀 [CLS] 12", "--pieces"],
                               capture_output=True, timeout=60)
            assert p.returncode in (0, 2), (trial, p.returncode, p.stderr)
            p2 = subprocess.run([kiln_bin(), "tokenize", bad, "--decode", "0,1,2,3,100,101,102"],
                                capture_output=True, timeout=60)
            assert p2.returncode in (0, 2), (trial, p2.returncode, p2.stderr)


def test_speed_1mb():
    """1 MB of mixed text encodes well under a second (kiln's own timer
    around kiln_tok_encode), with exactly the reference ids."""
    text, _ = corpus_lines()
    big = (text * (1_000_000 // len(text.encode()) + 1))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(big)
    try:
        for tok, ref in ((SMOLLM, smollm_ref()), (MINILM, minilm_ref())):
            p = run_kiln("tokenize", tok, "--file", f.name, "--time")
            secs = float(p.stderr.split(" in ")[1].split(" s")[0])
            assert secs < 1.0, p.stderr
            ids = [int(x) for x in p.stdout.split()]
            assert ids == ref.encode(big).ids
    finally:
        os.unlink(f.name)
