// The OpenMP thread count for the duration of a scope, for tests that compare results on 1 and
// 2 threads (or more); the previous count comes back when the scope ends, failed ASSERTs included.
#pragma once

#include <omp.h>

namespace normlab::testing {

struct ThreadCount {
    explicit ThreadCount(int n) : previous(omp_get_max_threads()) { omp_set_num_threads(n); }
    ~ThreadCount() { omp_set_num_threads(previous); }
    ThreadCount(const ThreadCount&) = delete;
    ThreadCount& operator=(const ThreadCount&) = delete;
    int previous;
};

}  // namespace normlab::testing
