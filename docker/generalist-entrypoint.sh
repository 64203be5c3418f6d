#!/bin/sh
# Starts vLLM's OpenAI server with SmolLM2 as the hub expects it (the same settings as
# 'gsco generalist serve'). The dtype follows this CPU: bfloat16 only where the CPU has
# AVX-512 BF16 or AMX, float32 otherwise (emulated bfloat16 is 3-5x slower).
# GSCO_DTYPE overrides; further arguments go to vLLM.
set -eu
dtype="${GSCO_DTYPE:-}"
if [ -z "$dtype" ]; then
  if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then dtype=bfloat16; else dtype=float32; fi
fi
# The launcher replaces vLLM's per-token CPU LoRA ops with one product per adapter
# (generalist/_vllm_cpu_launch.py), then runs vLLM's OpenAI server.
exec python3 /opt/vllm/gsco_vllm_cpu_launch.py \
  --model /opt/models/smollm2-135m-instruct \
  --served-model-name smollm2-135m-instruct \
  --host "${GSCO_GENERALIST_HOST:-0.0.0.0}" --port "${GSCO_GENERALIST_PORT:-8000}" \
  --max-model-len 2048 --max-num-seqs 16 --dtype "$dtype" \
  --enable-lora --max-lora-rank 16 --max-loras 4 \
  "$@"
