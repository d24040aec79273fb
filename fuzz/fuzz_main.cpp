// libFuzzer entry point of one target; PEFT_FUZZ_TARGET names it (set per binary by CMake).
#include "fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  peft::fuzz::PEFT_FUZZ_TARGET(data, size);
  return 0;
}
