// Named moments at which a test can kill the process (SIGKILL, no clean-up), to prove that every
// file being written survives as it was before or complete.
//
// `PEFT_CRASH_AT=<name>` kills the process the first time `crash_point(<name>)` runs;
// `PEFT_CRASH_AT=<name>@<k>` the k-th time. Unset (always, outside tests), a crash point costs one
// comparison. The points are listed in docs/reliability.md ("Crash safety").
#pragma once

#include <string_view>

namespace peft::io {

void crash_point(std::string_view name);

}  // namespace peft::io
