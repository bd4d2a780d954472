#!/usr/bin/env python3
"""Checks the repository's relative links (tests/run-all.sh runs it first): every [text](target) in a
tracked Markdown file, and every repo-relative `docs/…md#anchor` mention in any tracked text file,
must name a file that exists and, with #anchor, a heading whose GitHub anchor it is."""
import os, re, subprocess, sys

root = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
os.chdir(root)
files = subprocess.check_output(["git", "ls-files", "--cached", "--others", "--exclude-standard"], text=True).split()
files = [f for f in files if "node_modules" not in f and os.path.isfile(f)]

def slug(heading):
    h = heading.strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)   # GitHub keeps letters, digits, _, -, spaces
    return h.replace(" ", "-")

anchors_cache = {}
def anchors(path):
    if path not in anchors_cache:
        seen, out = {}, set()
        in_code = False
        for line in open(path, encoding="utf-8"):
            if line.startswith("```"):
                in_code = not in_code
            if in_code:
                continue
            m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
            if m:
                text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # link text only
                s = slug(text)
                n = seen.get(s, 0)
                out.add(s if n == 0 else f"{s}-{n}")
                seen[s] = n + 1
        anchors_cache[path] = out
    return anchors_cache[path]

errors, checked = [], 0
def check(src, lineno, target, base):
    global checked
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
        return  # external (http:, mailto:, …)
    path, _, anchor = target.partition("#")
    dest = os.path.normpath(os.path.join(base, path)) if path else src
    checked += 1
    if not os.path.exists(dest):
        errors.append(f"{src}:{lineno}: {target}: no such file {dest}")
    elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
        errors.append(f"{src}:{lineno}: {target}: no heading with anchor #{anchor} in {dest}")

link = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
mention = re.compile(r"(?<![\w/.(-])((?:[\w.-]+/)*[\w.-]+\.md)#([\w-]+)")
for f in files:
    if not f.endswith((".md", ".rs", ".py", ".sh", ".cfg", ".toml", ".yml", ".sql", ".mjs")) and "/" in f and not f.startswith(".ci/"):
        continue
    try:
        lines = open(f, encoding="utf-8").read().split("\n")
    except UnicodeDecodeError:
        continue
    in_code = False
    for n, line in enumerate(lines, 1):
        if f.endswith(".md"):
            if line.startswith("```"):
                in_code = not in_code
            if not in_code:
                for t in link.findall(line):
                    check(f, n, t, os.path.dirname(f))
        # repo-relative mentions such as docs/DIRAC.md#whoami in comments
        for path, anchor in mention.findall(line):
            if f.endswith(".md") and f"]({path}#{anchor})" in line:
                continue
            base = "" if os.path.exists(path) else os.path.dirname(f)
            check(f, n, f"{path}#{anchor}", base)

print(f"{checked} links checked, {len(errors)} broken")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
