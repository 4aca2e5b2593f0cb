#!/bin/sh
# Builds the CPU backend, then builds and runs cpu/test_ops.c against it: sh cpu/test.sh
set -eu
lib=$(sh "$(dirname "$0")/build.sh")
libdir=$(dirname "$lib")
cd "$(dirname "$0")/.."
gcc -std=c11 -O2 -Wall -Wextra -Iffi -o build/test_ops cpu/test_ops.c \
  -L"$libdir" -lrabbitllm_cpu -Wl,-rpath,"$libdir" -lm -pthread
exec build/test_ops
