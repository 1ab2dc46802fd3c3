#!/usr/bin/env python3
"""Fails when a crate of the workspace has a cycle between its top-level modules.

A module `a` depends on `b` when a file of `a` names `crate::b` (or `super::b` from a
top-level file). Child modules count as their top-level module. Prints each cycle.
"""
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
crates = [d for d in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, d, "Cargo.toml")) and os.path.isdir(os.path.join(root, d, "src"))]
bad = 0
for c in crates:
    src = os.path.join(root, c, "src")
    tops = set()
    for f in os.listdir(src):
        if f.endswith(".rs") and f not in ("lib.rs", "main.rs"):
            tops.add(f[:-3])
        elif os.path.isdir(os.path.join(src, f)):
            tops.add(f)
    deps = {t: set() for t in tops}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            first = rel.split(os.sep)[0]
            top = first[:-3] if first.endswith(".rs") else first
            if top not in tops:
                continue
            text = open(os.path.join(dirpath, f), encoding="utf-8").read()
            # Strip test modules: a unit test may reach anywhere.
            text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
            text = re.sub(r"//.*", "", text)
            for m in re.finditer(r"crate::([a-z_][a-z0-9_]*)", text):
                if m.group(1) in tops and m.group(1) != top:
                    deps[top].add(m.group(1))
            # `use crate::{a, b::c}` groups
            for g in re.finditer(r"crate::\{([^}]*)\}", text):
                for name in re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)", g.group(1)):
                    if name in tops and name != top:
                        deps[top].add(name)
    # Find cycles with DFS.
    state = {}
    stack = []

    def visit(n):
        global bad
        state[n] = 1
        stack.append(n)
        for d in sorted(deps[n]):
            if state.get(d) == 1:
                cyc = stack[stack.index(d):] + [d]
                line = f"{c}: module cycle: {' -> '.join(cyc)}"
                print(line)
                bad += 1
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for t in sorted(tops):
        if t not in state:
            visit(t)
print(f"{len(crates)} crates checked, {bad} module cycles")
sys.exit(1 if bad else 0)
