#!/usr/bin/env bash
# Gate a CPython checkout: build its JIT stencils with its own
# Tools/jit/build.py, then verify them with stencilcheck using that same
# checkout's Python/jit.c as the patcher (--jit-c).
#
#   scripts/cpython-gate.sh CPYTHON_SRC [TRIPLE...]   (default triple: x86_64-unknown-linux-gnu)
#
# Env:
#   OUT_DIR      where headers and objects go, emptied first (default: CPYTHON_SRC/build/stencilcheck)
#   PLACEMENTS   placements per stencil (default 64)
#   STENCILCHECK a stencilcheck binary (default: build this checkout with cargo)
#   LLVM_VERSION override the LLVM major version build.py insists on
#   PYTHON       the Python that runs build.py (default python3)
#
# Result per triple: OUT_DIR/<triple>/jit_stencils.h, OUT_DIR/<triple>/objs/*.o
# (the objects build.py compiled, which it normally deletes); then one
# `stencilcheck verify OUT_DIR` over all of them (a report per input and a
# summary line each).
# Exit status: 0 when every triple verifies clean, 1 on any finding, 2 on bad
# input or a failed stencil build. The checkout itself is not modified: build.py
# runs from a patched copy of Tools/jit inside the checkout, removed on exit.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
src=$(cd "$1" && pwd)
shift
triples=("$@")
[ ${#triples[@]} -gt 0 ] || triples=(x86_64-unknown-linux-gnu)
here=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT_DIR:-$src/build/stencilcheck}
python=${PYTHON:-python3}
for f in Python/jit.c Tools/jit/build.py Tools/jit/_targets.py; do
  [ -f "$src/$f" ] || { echo "cpython-gate: $src/$f: not a CPython checkout with a JIT" >&2; exit 2; }
done

# stencilcheck itself.
if [ -n "${STENCILCHECK:-}" ]; then
  sc=$STENCILCHECK
else
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
  sc=${CARGO_TARGET_DIR:-$here/target}/release/stencilcheck
fi

# build.py needs pyconfig.h.
[ -f "$src/pyconfig.h" ] || (cd "$src" && ./configure -q >/dev/null)

# A copy of Tools/jit that keeps its objects (KEEP_OBJS), beside the original
# so its paths to the checkout stay the same.
jit=$src/Tools/.jit-stencilcheck-$$
trap 'rm -rf "$jit"' EXIT
rm -rf "$jit" && cp -r "$src/Tools/jit" "$jit"
if [ -n "${LLVM_VERSION:-}" ]; then
  sed -i "s/^_LLVM_VERSION = .*/_LLVM_VERSION = $LLVM_VERSION/" "$jit/_llvm.py"
fi
"$python" - "$jit/_targets.py" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
if "KEEP_OBJS" not in s and "with tempfile.TemporaryDirectory() as tempdir:" in s:
    s = s.replace("with tempfile.TemporaryDirectory() as tempdir:", "with _kept_dir() as tempdir:")
    s = s.replace("import tempfile\n", "import tempfile\nimport contextlib\n\n\n"
                  "@contextlib.contextmanager\ndef _kept_dir():\n"
                  "    d = os.environ.get('KEEP_OBJS') or tempfile.mkdtemp()\n"
                  "    os.makedirs(d, exist_ok=True)\n    yield d\n", 1)
    if "import os\n" not in s:
        s = "import os\n" + s
    open(p, "w").write(s)
EOF

status=0
built=""
case "$out" in /|"$HOME"|"") echo "cpython-gate: refusing to empty OUT_DIR=$out" >&2; exit 2 ;; esac
rm -rf "$out" && mkdir -p "$out"
for t in "${triples[@]}"; do
  dest=$out/$t
  rm -rf "$dest" && mkdir -p "$dest/objs" "$dest/build"
  cp "$src/pyconfig.h" "$dest/build/"
  case "$t" in
    aarch64-*-linux-gnu) [ -d /usr/aarch64-linux-gnu/include ] && export CPATH=/usr/aarch64-linux-gnu/include ;;
    *) unset CPATH ;;
  esac
  echo "cpython-gate: building $t stencils (log: $dest/build/build.log)"
  if ! (cd "$dest/build" && KEEP_OBJS="$dest/objs" "$python" "$jit/build.py" "$t" -f >build.log 2>&1); then
    echo "cpython-gate: $t: build.py failed, see $dest/build/build.log" >&2
    status=2
    continue
  fi
  # 3.13 writes jit_stencils.h; later versions may name it per target.
  header=$(ls "$dest/build"/jit_stencils*.h 2>/dev/null | head -n 1 || true)
  if [ -z "$header" ]; then
    echo "cpython-gate: $t: build.py wrote no jit_stencils*.h" >&2
    status=2
    continue
  fi
  mv "$header" "$dest/jit_stencils.h"
  rm -f "$dest/objs"/*.c "$dest/objs"/*.ll
  built="$built $t"
done
[ -n "$built" ] || exit $status
# One run over the whole build: every triple's header (and objects), a
# summary line each, the worst exit status.
set +e
"$sc" verify "$out" --jit-c "$src/Python/jit.c" --placements "${PLACEMENTS:-64}"
rc=$?
set -e
echo "cpython-gate: stencilcheck exit $rc"
if [ $rc -gt $status ]; then status=$rc; fi
exit $status
