#!/usr/bin/env bash
# Checks that native/ (C++ and CUDA) is formatted with native/.clang-format; exits non-zero and lists the files
# (with the diff clang-format wants) when not. Fix with:  scripts/check-format-native.sh --fix
# Needs clang-format (tested with Debian's 14); when it is missing and apt-get can be used (root), it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "clang-format not found: installing Debian's clang-format with apt-get" >&2
    apt-get install -y --no-install-recommends clang-format >&2 || { apt-get update >&2 && apt-get install -y --no-install-recommends clang-format >&2; }
  fi
  if ! command -v clang-format >/dev/null 2>&1; then
    echo "clang-format not found: install it (Debian/Ubuntu: apt-get install clang-format)" >&2
    exit 2
  fi
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
