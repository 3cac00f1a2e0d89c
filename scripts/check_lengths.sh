#!/usr/bin/env bash
# Prints the line count and the longest function of every C++ source in the given folders
# (default: launch/) and fails when a file is over 600 lines or a function over 80.
# A function is a brace block opened at namespace or class level after a header with '(' (comments,
# string, character and raw-string literals are skipped); its length runs from the first line of
# its signature to its closing brace.
#   scripts/check_lengths.sh [--quiet] [DIR ...]   (--quiet: print only what is over the limits)
set -euo pipefail
cd "$(dirname "$0")/.."
quiet=0
if [ "${1:-}" = "--quiet" ]; then quiet=1; shift; fi
dirs=("$@")
[ ${#dirs[@]} -eq 0 ] && dirs=(launch)
files=$(git ls-files -co --exclude-standard "${dirs[@]/%//*.h}" "${dirs[@]/%//*.cc}" | sort -u)
[ -z "$files" ] && { echo "check_lengths: no files"; exit 0; }
MAX_FILE=600 MAX_FN=80 QUIET=$quiet python3 - $files <<'EOF'
import os, re, sys

MAX_FILE, MAX_FN = int(os.environ["MAX_FILE"]), int(os.environ["MAX_FN"])
quiet = os.environ["QUIET"] == "1"


def code_only(text):
    """`text` with comments and literals blanked (newlines kept, so line numbers hold)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c == "R" and text.startswith('R"', i) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == "_")):
            k = text.find("(", i + 2)
            end = ")" + text[i + 2:k] + '"'
            j = text.find(end, k)
            j = n if j < 0 else j + len(end)
            out.append('""' + re.sub(r"[^\n]", " ", text[i + 2:j])); i = j
        elif c in "\"'" and not (c == "'" and i > 0 and text[i-1].isalnum()):  # 1'000 digit marks
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * (j - i - 1) + c); i = j + 1
        else:
            out.append(c); i += 1
    # A preprocessor line ends any header ("#if defined(X)" is no function).
    return re.sub(r"(?m)^[ \t]*#.*$", lambda m: ";" + " " * (len(m.group()) - 1), "".join(out))


def functions(code):
    """(name, first line, last line) of every function body at namespace or class level."""
    found, stack, header_start = [], [], 0
    line_of = lambda pos: code.count("\n", 0, pos) + 1
    for m in re.finditer(r"[{};]", code):
        ch, pos = m.group(), m.start()
        if ch == "{":
            header = code[header_start:pos]
            words = header.split()
            in_fn = any(kind == "fn" for kind, _, _ in stack)
            if in_fn:
                kind = "block"
            elif re.match(r'\s*(namespace\b|extern\s+"\s*")', header):
                kind = "scope"
            elif re.search(r"\b(class|struct|union|enum)\b[^(=]*$", header):
                kind = "scope"
            elif "(" in header and not re.search(r"=[^(]*\(", header.replace("operator=", "op")):
                kind = "fn"
            else:
                kind = "block"  # an initialiser list, an array, a lambda assigned at file level
            name = re.findall(r"([\w:~<>=!+\-*/\[\]]+)\s*\(", header)
            test = re.search(r"\b(TEST\w*)\s*\(([^)]*)\)", header)
            if test:  # TEST(Suite, Name)
                name = [test.group(1) + "(" + " ".join(test.group(2).split()) + ")"]
            first = header_start + len(header) - len(header.lstrip())
            stack.append((kind, name[0] if name else "?", line_of(first)))
            header_start = pos + 1
        elif ch == "}":
            if stack:
                kind, name, first = stack.pop()
                if kind == "fn":
                    found.append((name, first, line_of(pos)))
            header_start = pos + 1
        else:
            header_start = pos + 1
    return found


status = 0
for path in sys.argv[1:]:
    text = open(path, encoding="utf-8").read()
    lines = text.count("\n")
    fns = functions(code_only(text))
    long = [(b - a + 1, name, a) for name, a, b in fns if b - a + 1 > MAX_FN]
    longest = max(((b - a + 1, name, a) for name, a, b in fns), default=(0, "-", 0))
    bad = lines > MAX_FILE or long
    if bad:
        status = 1
    if not quiet or bad:
        print(f"{path:40s} {lines:5d} lines{'  OVER ' + str(MAX_FILE) if lines > MAX_FILE else ''}"
              f"   longest function: {longest[1]} ({longest[0]} lines, line {longest[2]})")
    for n, name, a in long:
        print(f"  {path}:{a}: {name} is {n} lines (over {MAX_FN})")
print("check_lengths: ok" if status == 0 else
      f"check_lengths: files over {MAX_FILE} lines or functions over {MAX_FN} lines", flush=True)
sys.exit(status)
EOF
