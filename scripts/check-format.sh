#!/bin/sh
# Fails if any C++ source differs from .clang-format.
set -eu
cd "$(dirname "$0")/.."
files=$(git ls-files 'src/*.cc' 'src/*.h' 2>/dev/null || find src -name '*.cc' -o -name '*.h')
bad=""
for f in $files; do
  [ -f "$f" ] || continue
  clang-format --style=file "$f" | cmp -s - "$f" || bad="$bad $f"
done
if [ -n "$bad" ]; then
  echo "check-format.sh: not clang-formatted:$bad" >&2
  echo "fix with: clang-format -i$bad" >&2
  exit 1
fi
echo "check-format.sh: sources are clang-formatted"
