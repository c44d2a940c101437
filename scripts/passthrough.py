#!/usr/bin/env python3
"""Keeps the pass-through half of `BatchInvariant<B>` complete.

The danger with a decorator backend is a *defaulted* trait method that we forget to write:
the compiler accepts the omission and the default body then runs on the decorator's own
primitives, or, worse, a method the inner backend overrides with a faster kernel silently
stops being used. This script reads every ops trait of burn-backend 0.21.0 and

  --check     fails (exit 1) when an impl file in crates/burn-batch-invariant/src/ops/
              lacks a method of its trait, required or defaulted (routed in `route!`,
              forwarded in `forward!` or written out), that is not listed on a
              `// default-body: a, b` line, or when burn-cubecl or burn-fusion overrides a
              method listed there (then the mode switched off would not compute what `B`
              computes); the test command runs it;
  --generate  prints a `forward!` block for one trait, the starting point of a new ops
              file (`--generate FloatTensorOps`).

It parses only what it needs: trait bodies, method names, parameter names, signatures.
"""

import glob
import os
import re
import sys

TRAITS = {
    # trait name -> (file under burn-backend/src/backend/ops, our impl file)
    "FloatTensorOps": ("tensor.rs", "float_tensor.rs"),
    "IntTensorOps": ("int_tensor.rs", "int_tensor.rs"),
    "BoolTensorOps": ("bool_tensor.rs", "bool_tensor.rs"),
    "ModuleOps": ("modules/base.rs", "module.rs"),
    "ActivationOps": ("activation.rs", "activation.rs"),
    "QTensorOps": ("qtensor.rs", "qtensor.rs"),
    "TransactionOps": ("transaction.rs", "transaction.rs"),
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "crates", "burn-batch-invariant", "src", "ops")


def registry_crate(name):
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    hits = glob.glob(os.path.join(home, "registry", "src", "*", name))
    if not hits:
        sys.exit("passthrough.py: %s sources not found; run `cargo fetch` first" % name)
    return hits[0]


def burn_backend_ops_dir():
    return os.path.join(registry_crate("burn-backend-0.21.0"), "src", "backend", "ops")


def inner_overrides():
    """Names of the methods the backends we wrap write in their ops impls: burn-cubecl's
    CubeBackend and burn-fusion's Fusion (both can be the inner backend)."""
    names = {}
    for crate in ("burn-cubecl-0.21.0", "burn-fusion-0.21.0"):
        for path in glob.glob(os.path.join(registry_crate(crate), "src", "ops", "*.rs")):
            with open(path) as f:
                for name in re.findall(r"^    fn\s+(\w+)", f.read(), flags=re.M):
                    names.setdefault(name, crate.rsplit("-", 1)[0])
    return names


def trait_body(src, trait):
    m = re.search(r"pub trait %s<B: Backend>[^{]*\{" % trait, src)
    if not m:
        sys.exit("passthrough.py: trait %s not found" % trait)
    i, depth = m.end(), 1
    start = i
    while depth:
        c = src[i]
        depth += c == "{"
        depth -= c == "}"
        i += 1
    return src[start : i - 1]


def methods(body):
    """Yields (name, signature text up to the body or ';', parameter names, has_default)."""
    i = 0
    depth = 0
    out = []
    while i < len(body):
        c = body[i]
        if body.startswith("//", i):
            i = body.index("\n", i)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and re.match(r"\bfn\s", body[i : i + 3] + " ") and (
            i == 0 or not body[i - 1].isalnum()
        ):
            j, paren = i, 0
            while True:
                cj = body[j]
                paren += cj in "(["
                paren -= cj in ")]"
                if paren == 0 and cj in ";{":
                    break
                j += 1
            sig = body[i:j].strip()
            name = re.match(r"fn\s+(\w+)", sig).group(1)
            out.append((name, sig, params(sig), body[j] == "{"))
            i = j
            continue
        i += 1
    return out


def params(sig):
    inner = sig[sig.index("(") + 1 :]
    depth, cur, parts = 0, "", []
    for k, c in enumerate(inner):
        if c in "(<[":
            depth += 1
        elif c == ">" and inner[k - 1] == "-":
            pass
        elif c in ")>]":
            if depth == 0:
                break
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    return [p.split(":")[0].strip() for p in parts if ":" in p]


def trait_methods(trait):
    path, _ = TRAITS[trait]
    with open(os.path.join(burn_backend_ops_dir(), path)) as f:
        return methods(trait_body(f.read(), trait))


def check():
    missing, overridden = [], []
    inner = inner_overrides()
    for trait, (_, ours) in TRAITS.items():
        with open(os.path.join(OURS, ours)) as f:
            text = f.read()
        have = set(re.findall(r"\bfn\s+(\w+)", text))
        kept = set()
        for line in re.findall(r"//\s*default-body:(.*)", text):
            kept.update(n.strip() for n in line.split(",") if n.strip())
        for name, _, _, default in trait_methods(trait):
            if name in kept:
                if not default:
                    missing.append("%s::%s (listed as default-body but has no default)" % (trait, name))
                elif name in inner:
                    overridden.append("%s::%s (%s)" % (trait, name, inner[name]))
            elif name not in have:
                missing.append("%s::%s%s" % (trait, name, " (defaulted)" if default else ""))
    if missing:
        print("BatchInvariant<B> does not write these backend methods (see scripts/passthrough.py):")
        for m in missing:
            print("  " + m)
    if overridden:
        print("default-body methods that an inner backend overrides (mode off would differ from B):")
        for m in overridden:
            print("  " + m)
    if missing or overridden:
        sys.exit(1)
    total = sum(len(trait_methods(t)) for t in TRAITS)
    print("passthrough check: all %d methods of %d ops traits are written" % (total, len(TRAITS)))


def generate(trait):
    print("impl<B: KernelHost> %s<Self> for BatchInvariant<B> {" % trait)
    print("    forward! {")
    for name, sig, names, _ in trait_methods(trait):
        sig = re.sub(r"\bB\b", "Self", sig)
        sig = re.sub(r"\s+", " ", sig).replace("( ", "(").replace(", )", ")")
        sig = re.sub(r"\b_(\w+):", r"\1:", sig)
        print("        %s;" % sig)
    print("    }")
    print("}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--check":
        check()
    elif len(sys.argv) == 3 and sys.argv[1] == "--generate":
        generate(sys.argv[2])
    else:
        sys.exit(__doc__)
