/*
 * fuzz_llm_anthropic: the Anthropic Messages reply parsers (src/llm/anthropic.c):
 * stream events, whole bodies, error bodies. See llm_fuzz.h for the input
 * format and the oracles.
 */
#include "llm_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_provider(&llm_anthropic_ops, data, size);
}
