#pragma once
// Which values share one mean and variance. The input is seen as [N][C][S]; a "row" is the S
// contiguous values of one (n, c), and every reduction set of BN, LN, IN, GN and RMSNorm is a
// union of whole rows:
//
//   BatchNorm      across_batch = true,  channels_per_set = 1
//   LayerNorm      across_batch = false, channels_per_set = C
//   InstanceNorm   across_batch = false, channels_per_set = 1
//   GroupNorm(G)   across_batch = false, channels_per_set = C / G
//
// Other set shapes (Batch-Layer Norm's per-position sets) are reached by reshaping the view.

#include <cstddef>

#include "normlab/tensor.hpp"

namespace normlab {

struct SetSpec {
    bool across_batch = false;
    std::size_t channels_per_set = 1;

    std::size_t sets_per_sample(const NcsView& v) const { return v.c / channels_per_set; }
    std::size_t num_sets(const NcsView& v) const {
        return (across_batch ? 1 : v.n) * sets_per_sample(v);
    }
    std::size_t set_size(const NcsView& v) const {
        return (across_batch ? v.n : 1) * channels_per_set * v.s;
    }
    std::size_t set_of(std::size_t n, std::size_t c, const NcsView& v) const {
        return (across_batch ? 0 : n * sets_per_sample(v)) + c / channels_per_set;
    }
};

}  // namespace normlab
