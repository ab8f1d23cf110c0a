#pragma once
// Process-wide settings that matter for speed but are the program's choice, not the library's.

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

}  // namespace normlab
