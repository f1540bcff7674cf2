"""Build a docstring -> code retrieval set (train and eval JSONL) from Python source files.

    python scripts/make_code_search_data.py runs/code-search-data            # this Python's stdlib
    python scripts/make_code_search_data.py OUT --source path/to/package     # any tree of .py files

Real text that needs no download: each function or method with a docstring gives one example. The
query is the docstring's first sentence, the positive is the function's source with the docstring
removed (so the answer is not a copy of the question), and the hard negative is another documented
function of the same module (same vocabulary, different job). Train and eval are split by module, so
eval queries come from modules never seen in training. Output is deterministic for a given source tree.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

from embeddinggemma.errors import InputError
from embeddinggemma.eval.retrieval import RetrievalSet
from embeddinggemma.files import write_atomic
from embeddinggemma.train.sources import examples, open_rows

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__", "turtledemo"}
MIN_WORDS, MAX_WORDS = 5, 40  # query length in words: shorter is too vague, longer is a paragraph
MAX_CODE_LINES = 16  # positives keep the first lines of a function (the signature and the start of the body)


def summary(docstring: str) -> str | None:
    """The docstring's first sentence with whitespace collapsed, or None when it is not a usable query."""
    first = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    text = " ".join(first.split())
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return text if MIN_WORDS <= len(text.split()) <= MAX_WORDS else None


def functions(path: Path, source: str) -> Iterator[tuple[str, str, str]]:
    """(qualified name, query, code without its docstring) for every documented function in a file."""
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError):  # files for other Python versions, templates
        return
    lines = source.splitlines()
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                stack.append((child, f"{prefix}{child.name}."))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(child)
                query = summary(doc) if doc else None
                if query is None:
                    continue
                first_stmt = child.body[0]
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)]) - 1
                body = lines[start : first_stmt.lineno - 1] + lines[first_stmt.end_lineno : child.end_lineno]
                code = textwrap.dedent("\n".join(line for line in body if line.strip())).splitlines()
                code = "\n".join(code[:MAX_CODE_LINES])
                if code.count("\n") >= 2:  # a signature and a real body
                    yield f"{prefix}{child.name}", query, code


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def collect(root: Path) -> dict[str, list[tuple[str, str, str]]]:
    """{module: [(name, query, code), ...]} over every .py file under root, in a stable order."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        found = list(functions(path, path.read_text(encoding="utf-8", errors="replace")))
        if found:
            out[module_name(root, path)] = found
    return out


def is_eval_module(name: str, eval_fraction: float) -> bool:
    """A stable split by module name (independent of which other modules exist)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < eval_fraction


def build(
    root: Path, *, eval_fraction: float = 0.15, max_eval: int = 300, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(train examples, eval examples); duplicate queries are dropped so each query has one answer."""
    rng = random.Random(seed)
    train: list[dict] = []
    evals: list[dict] = []
    seen: set[str] = set()
    for module, found in collect(root).items():
        items = []
        for item in found:
            if item[1] not in seen:
                seen.add(item[1])
                items.append(item)
        if len(items) < 2:  # a hard negative needs a second function of the module
            continue
        for i, (_, query, code) in enumerate(items):
            negative = items[(i + 1 + rng.randrange(len(items) - 1)) % len(items)][2]
            example = {"query": query, "positive": code, "negatives": [negative]}
            (evals if is_eval_module(module, eval_fraction) else train).append(example)
    rng.shuffle(train)
    rng.shuffle(evals)
    return train, evals[:max_eval]


def write(
    out_dir: str | Path,
    source: str | Path | None = None,
    *,
    eval_fraction: float = 0.15,
    max_eval: int = 300,
    seed: int = 0,
) -> tuple[int, int]:
    """train.jsonl, eval.jsonl and eval-beir/ (the eval set as a BEIR directory) in `out_dir`, from the .py files
    under `source` (default: this Python's standard library); (train, eval) example counts."""
    source = Path(source) if source is not None else Path(sysconfig.get_paths()["stdlib"])
    if not source.is_dir():
        raise InputError(f"{source}: not a directory of Python sources")
    train, evals = build(source, eval_fraction=eval_fraction, max_eval=max_eval, seed=seed)
    if not train or not evals:
        raise InputError(f"{source}: too few documented functions ({len(train)} train, {len(evals)} eval examples)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", evals)):
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
        write_atomic(out_dir / f"{name}.jsonl", lambda f, lines=lines: f.writelines(line.encode() for line in lines))
    RetrievalSet.from_examples(examples(open_rows(out_dir / "eval.jsonl"))).write_beir(out_dir / "eval-beir")
    return len(train), len(evals)
