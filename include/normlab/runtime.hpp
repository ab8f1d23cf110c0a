#pragma once
// Process-wide settings that matter for speed but are the program's choice, not the library's.

namespace normlab {

// Asks glibc's malloc to keep freed memory for reuse instead of handing large blocks back to the
// kernel. Every training step allocates its outputs afresh; without this, each large tensor is
// mmapped and page-faulted in again on every step (on some virtual machines that costs more than
// the normalization itself). Trades a higher resident set for speed; call once at start-up.
// Returns false where the C library does not support it.
bool reuse_freed_memory();

}  // namespace normlab
