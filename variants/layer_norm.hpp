#pragma once
// Layer Normalization: each sample is standardized with the mean and biased variance of all its
// values (channels and trailing dims); γ, β per channel. Same computation in train and eval.
//
// Ba, Kiros & Hinton, "Layer Normalization", 2016, arXiv:1607.06450. Implements
// spec/normalizers.md §3 (§3.1 forward, §3.2 backward). For (N, C) input this is PyTorch
// LayerNorm(C); for 4-D input it equals GroupNorm(1, C) (per-channel γ, β).

#include "normlab/set_normalizer.hpp"

namespace normlab {

struct LayerNormOptions {
    double eps = 1e-5;
    bool affine = true;

    template <class V>
    void visit(V& v) {
        v("eps", eps, "added to the variance inside the square root");
        v("affine", affine, "learnable per-channel weight (gamma) and bias (beta)");
    }
};

template <class T>
class LayerNorm : public SetNormalizer<T> {
  public:
    static constexpr const char* kName = "layer_norm";
    static constexpr const char* kSummary =
        "per sample over channels and trailing dims (Ba, Kiros & Hinton 2016)";
    using Options = LayerNormOptions;

    explicit LayerNorm(std::size_t num_features, Options options = {});

    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    bool uses_batch_statistics() const override { return false; }

    const Options& options() const { return options_; }

  private:
    Options options_;
};

}  // namespace normlab
