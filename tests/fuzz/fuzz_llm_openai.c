/*
 * fuzz_llm_openai: the OpenAI-compatible Chat Completions reply parsers (src/llm/openai.c):
 * stream events, whole bodies, error bodies. See llm_fuzz.h for the input
 * format and the oracles.
 */
#include "llm_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_provider(&llm_openai_ops, data, size);
}
