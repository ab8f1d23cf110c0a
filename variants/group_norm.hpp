#pragma once
// Group Normalization: the channels are split into G groups of C/G consecutive channels; each
// (sample, group) is standardized over its channels and trailing dims; γ, β per channel.
// No batch dependence; same computation in train and eval.
//
// Wu & He, "Group Normalization", ECCV 2018, arXiv:1803.08494. Implements spec/normalizers.md
// §5 (with §0 for the backward). G = 1 equals LayerNorm, G = C equals InstanceNorm (with γ, β).

#include <cstdint>

#include "normlab/set_normalizer.hpp"

namespace normlab {

struct GroupNormOptions {
    std::int64_t groups = 32;
    double eps = 1e-5;
    bool affine = true;

    template <class V>
    void visit(V& v) {
        v("groups", groups, "number of groups G; must divide the number of channels");
        v("eps", eps, "added to the variance inside the square root");
        v("affine", affine, "learnable per-channel weight (gamma) and bias (beta)");
    }
};

template <class T>
class GroupNorm : public SetNormalizer<T> {
  public:
    static constexpr const char* kName = "group_norm";
    static constexpr const char* kSummary =
        "per sample and group of C/G channels over those channels and trailing dims (Wu & He "
        "2018)";
    using Options = GroupNormOptions;

    explicit GroupNorm(std::size_t num_features, Options options = {});

    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    bool uses_batch_statistics() const override { return false; }

    const Options& options() const { return options_; }

  private:
    Options options_;
};

}  // namespace normlab
