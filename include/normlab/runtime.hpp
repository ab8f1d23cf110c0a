#pragma once
// Process-wide settings that matter for speed but are the program's choice, not the library's.

#include <cstddef>

namespace normlab {

// Asks glibc's malloc to keep freed memory for reuse instead of handing large blocks back to the
// kernel. Every training step allocates its outputs afresh; without this, each large tensor is
// mmapped and page-faulted in again on every step (on some virtual machines that costs more than
// the normalization itself). Trades a higher resident set for speed; call once at start-up.
// Returns false where the C library does not support it.
bool reuse_freed_memory();

// Sets the number of threads of the BLAS library behind Linear and Conv2d (OpenBLAS keeps its
// own pool, apart from OpenMP's). Programs that run several models side by side, one per core,
// need 1: a BLAS pool per run that spins while waiting oversubscribes the cores and slows every
// run by orders of magnitude. Returns false when the BLAS library offers no such control.
bool set_blas_threads(int threads);

// The size of the last-level cache the kernels plan their passes for: outputs of tensors from
// half of it on are written with streaming stores, since they would be evicted before anyone
// reads them, and tensors under a quarter of it (at most 8 MiB) are taken to stay in the cache
// from one call to the next, where another order of work is faster. Detected on first use from
// the C library (sysconf) or /sys (32 MiB where neither tells): 32 MiB on the AMD EPYC machines
// the kernels were first tuned on; 260 MiB on an Intel Xeon whose L3 ran a 77 MB working set at
// twice the bandwidth of its memory, where 25.7 MB outputs kept in the L3 reach the layer that
// reads them next at that speed. A program that shares the cache with others can plan for its
// share.
// The choice changes speed only: every path computes the same bits.
void set_last_level_cache_bytes(std::size_t bytes);  // 0: the detected size again
std::size_t last_level_cache_bytes();

}  // namespace normlab
