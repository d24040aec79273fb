// The fuzz targets: one function per parser, fed raw bytes. Each catches the typed errors a bad
// input must give (peft::Error) and lets anything else escape, so a crash, a sanitizer report, an
// untyped exception (std::bad_alloc, c10::Error) or a hang is a finding. Built two ways: as
// libFuzzer binaries by the fuzz preset (fuzz_main.cpp), and into the unit tests, which replay
// fuzz/regressions/<target>/ under the normal build.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace peft::fuzz {

using Target = void (*)(const uint8_t* data, size_t size);

void safetensors(const uint8_t* data, size_t size);     // a .safetensors file
void lora_config(const uint8_t* data, size_t size);     // adapter_config.json
void tokenizer_json(const uint8_t* data, size_t size);  // tokenizer.json, then text to encode
void sentencepiece(const uint8_t* data, size_t size);   // tokenizer.model, then text
void chat_template(const uint8_t* data, size_t size);   // a template, then messages JSON
void train_jsonl(const uint8_t* data, size_t size);     // a training data file
void bnb_state(const uint8_t* data, size_t size);       // a bitsandbytes 4-bit quant state
void gptq_state(const uint8_t* data, size_t size);      // a GPTQ layer's tensors
void model_config(const uint8_t* data, size_t size);    // a model's config.json (every family)
void launch_env(const uint8_t* data, size_t size);      // NAME=VALUE lines: torchrun's environment

// Drops warnings (unknown config keys, ...): expected on fuzzed input, and printing them would
// only slow the run down.
void silence_warnings();

// Every target by name (the name of its binary without "fuzz_" and of its regressions folder).
const std::vector<std::pair<std::string, Target>>& targets();

// Splits an input in two: the first four bytes give the length of the first part (little-endian,
// clamped to what is there), the rest is the second part.
std::pair<std::string_view, std::string_view> split2(const uint8_t* data, size_t size);

}  // namespace peft::fuzz
