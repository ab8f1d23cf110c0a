#include "normlab/runtime.hpp"

#include <cstdlib>  // defines __GLIBC__ on glibc systems

#if defined(__GLIBC__)
#include <malloc.h>
#endif

// OpenBLAS's control; a weak reference, null when another BLAS is linked.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace normlab {

bool reuse_freed_memory() {
#if defined(__GLIBC__)
    // No mmap for large blocks (served from the heap and reused), and no trimming of the heap.
    return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
#else
    return false;
#endif
}

bool set_blas_threads(int threads) {
    if (openblas_set_num_threads == nullptr) return false;
    openblas_set_num_threads(threads);
    return true;
}

}  // namespace normlab
