"""The benchmark pair's text, defined once for the recipe (training, held-out perplexity) and the benchmark (prompts).

- Training domains: every Python file in the installed site-packages (docstrings and comments bring English), plus
  the shared wikitext-2, tinyshakespeare and GSM8K text. Files are read in path order and deduplicated whole; a file
  is held out when a hash of its path (relative to site-packages) says so, so the split does not depend on which
  other packages are installed.
- Out of domain, two kinds of text nothing in training, the tokenizer, calibration or the frequency counts reads:
  C and C++ headers from the same site-packages (`*.h`, `*.hpp`, `*.cuh`: torch, CUDA, numpy...), code of another
  language; and the packages' own documentation, the long descriptions in their `*.dist-info/METADATA` (Markdown or
  reStructuredText: prose about software with install commands, tables and links), a kind of text none of the
  training domains is.
"""

from __future__ import annotations

import hashlib
import json
import random
import site
from pathlib import Path

HELD_OUT_EVERY = 50  # one file in 50, by path hash
PYTHON = ("*.py",)
HEADERS = ("*.h", "*.hpp", "*.cuh")
METADATA = ("METADATA",)
OUT_OF_DOMAIN = "cpp_headers"
DOCS = "package_docs"  # the second out-of-domain category


def path_hash(relative: str) -> int:
    return int.from_bytes(hashlib.sha1(relative.encode()).digest()[:8], "little")


def site_package_files(patterns: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path relative to its site-packages, text) of every matching UTF-8 file, in path order, duplicates dropped."""
    paths = []
    for root in map(Path, site.getsitepackages()):
        for pattern in patterns:
            paths += [(str(p.relative_to(root)), p) for p in root.rglob(pattern) if p.is_file()]
    files, seen = [], set()
    for relative, path in sorted(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        digest = hashlib.sha1(text.encode()).digest()
        if text.strip() and digest not in seen:
            seen.add(digest)
            files.append((relative, text))
    if not files:
        raise FileNotFoundError(f"No {', '.join(patterns)} files found under {site.getsitepackages()}.")
    return files


def python_split() -> tuple[list[str], list[str]]:
    """(training, held-out) Python files of site-packages."""
    train, heldout = [], []
    for relative, text in site_package_files(PYTHON):
        (heldout if path_hash(relative) % HELD_OUT_EVERY == 0 else train).append(text)
    return train, heldout


def shared_text(data: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(training, held-out) documents of the shared text domains."""
    shakespeare = (data / "tinyshakespeare" / "input.txt").read_text()
    cut = int(len(shakespeare) * 0.9)
    gsm = lambda name: [f"{r['question']}\n{r['answer']}"  # noqa: E731
                        for r in map(json.loads, (data / "gsm8k" / name).read_text().splitlines())]
    train = {"wikitext": [(data / "wikitext2" / "valid.txt").read_text()], "shakespeare": [shakespeare[:cut]],
             "gsm8k": gsm("train.jsonl")}
    heldout = {"wikitext": [(data / "wikitext2" / "test.txt").read_text()], "shakespeare": [shakespeare[cut:]],
               "gsm8k": gsm("test.jsonl")}
    return train, heldout


def header_prompts(count: int, seed: int, chars: int = 2000) -> list[str]:
    """`count` out-of-domain prompts from C/C++ headers: see `cut_prompts`, which skips the licence text most headers
    open with."""
    return cut_prompts([text for _, text in site_package_files(HEADERS)], count, seed, chars)


def docs_prompts(count: int, seed: int, chars: int = 2000) -> list[str]:
    """`count` out-of-domain prompts from the packages' documentation (`package_descriptions`)."""
    return cut_prompts(package_descriptions(), count, seed, chars)


def cut_prompts(texts: list[str], count: int, seed: int, chars: int) -> list[str]:
    """A seeded sample of the texts of ≥ 3 × `chars` characters, each cut to `chars` from a third of the way in,
    starting on a line boundary."""
    long_enough = [text for text in texts if len(text) >= 3 * chars]
    prompts = []
    for text in random.Random(seed).sample(long_enough, min(count, len(long_enough))):
        start = text.find("\n", len(text) // 3) + 1
        prompts.append(text[start : start + chars])
    return prompts


def package_descriptions() -> list[str]:
    """The long description of every installed package: its `*.dist-info/METADATA` after the header fields."""
    descriptions = []
    for relative, text in site_package_files(METADATA):
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        if relative.split("/")[0].endswith(".dist-info") and body.strip():
            descriptions.append(body)
    return descriptions


def header_text(max_chars: int) -> str:
    """Out-of-domain text for perplexity: headers in path order up to `max_chars`."""
    return _joined([text for _, text in site_package_files(HEADERS)], max_chars)


def docs_text(max_chars: int) -> str:
    """The second out-of-domain text for perplexity: package descriptions in path order up to `max_chars`."""
    return _joined(package_descriptions(), max_chars)


def _joined(texts: list[str], max_chars: int) -> str:
    kept, total = [], 0
    for text in texts:
        kept.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n".join(kept)
