#!/usr/bin/env bash
# Checks that native/ (C++ and CUDA) is formatted with native/.clang-format; exits non-zero and lists the files
# (with the diff clang-format wants) when not. Fix with:  scripts/check-format-native.sh --fix
# Needs clang-format (Debian: apt-get install clang-format; tested with 14).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null 2>&1; then
  echo "clang-format not found: install it (Debian/Ubuntu: apt-get install clang-format)" >&2
  exit 2
fi
mapfile -t files < <(git ls-files 'native/*.cc' 'native/*.h' 'native/*.cu' 'native/*.cuh')
if [ "${#files[@]}" -eq 0 ]; then
  echo "no C++/CUDA files under native/" >&2
  exit 2
fi
if [ "${1:-}" = "--fix" ]; then
  clang-format -i --style=file "${files[@]}"
  echo "formatted ${#files[@]} files"
  exit 0
fi
clang-format --dry-run -Werror --style=file "${files[@]}"
echo "clang-format: ${#files[@]} files under native/ are formatted ($(clang-format --version | head -1))"
