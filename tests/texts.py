"""Deterministic, varied test texts: short, long, over-long, non-ASCII, real prose (stdlib docstrings)."""

from __future__ import annotations

import inspect
import json
import os
import re
import textwrap

HANDWRITTEN = [
    "hi",
    "A",
    "The cat sits on the mat.",
    "A feline rests on a rug.",
    "What is the weather like in Paris today?",
    "¿Dónde está la biblioteca?",
    "Ünïcödé àccents: café, naïve, coöperate, Ångström.",
    "日本語のテキストも埋め込みできます。",
    "中文句子用于测试嵌入模型。",
    "Русский текст для проверки.",
    "نص عربي للاختبار",
    "emoji 🙂🚀🔥 and symbols ∑∫√∞ ≠ ≤",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "UPPER CASE SHOUTING TEXT",
    "numbers 3.14159 2.71828 1e-9 42 0x1F",
    "code: def f(x): return x ** 2  # comment",
    "<html><body><p>markup &amp; entities</p></body></html>",
    "a " * 300,  # over the 256-token limit: needs truncation
    "word " * 1000,
]


def _stdlib_docstrings(limit: int) -> list[str]:
    import collections
    import email
    import json as json_mod
    import pathlib
    import statistics
    import string
    import textwrap as tw

    texts = []
    for module in (collections, email, json_mod, pathlib, statistics, string, tw, os, re, inspect):
        for _name, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc and len(doc.split()) >= 3:
                texts.append(" ".join(doc.split())[:2000])
            if len(texts) >= limit:
                return texts
    return texts


def varied_texts(n_prose: int = 220) -> list[str]:
    """Handwritten edge cases first, then real English prose of many lengths."""
    texts = HANDWRITTEN + _stdlib_docstrings(n_prose)
    # Deduplicate but keep order.
    return list(dict.fromkeys(texts))


def passages(n: int) -> list[str]:
    """`n` English passages for benchmarks (stdlib docstrings, cycled if needed)."""
    base = _stdlib_docstrings(10_000)
    out = [base[i % len(base)] for i in range(n)]
    return out


def distinct_passages(n: int) -> list[str]:
    """`n` different English passages (benchmarks that must not be helped by repeats): the
    docstrings, then again from their second word, third word, ... (distinct, still prose)."""
    base = [text.split() for text in _stdlib_docstrings(10_000)]
    out, seen = [], set()
    for start in range(max(map(len, base))):
        for words in base:
            text = " ".join(words[start:])
            if len(words) - start >= 3 and text not in seen:
                seen.add(text)
                out.append(text)
                if len(out) == n:
                    return out
    raise ValueError(f"only {len(out)} distinct passages can be made, not {n}")


def long_passages(n: int, words: int = 200) -> list[str]:
    """`n` passages of ~256 MiniLM tokens (stdlib docstring words, 200 at a time)."""
    pool = " ".join(passages(4000)).split()
    return [" ".join(pool[(i * words) % len(pool) :][:words]) for i in range(n)]


if __name__ == "__main__":
    t = varied_texts()
    print(len(t), json.dumps([textwrap.shorten(x, 40) for x in t[:5]]))
