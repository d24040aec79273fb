// Process-wide runtime settings: LibTorch's intra-op thread count and which BLAS LibTorch runs on.
#pragma once

#include <string>

namespace peft {

// Sets LibTorch's intra-op threads to `threads`, or to the hardware thread count when threads <= 0
// (LibTorch starts with one thread on these machines). Returns the count in effect.
int set_num_threads(int threads = 0);

// The BLAS / LAPACK shared libraries mapped into this process (e.g. ".../openblas-pthread/libblas.so.3"),
// comma separated, resolved through symlinks; "unknown" if none can be found.
std::string blas_libraries();

}  // namespace peft
