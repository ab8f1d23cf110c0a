#pragma once
// RMSNorm: each sample is divided by the root mean square of its values (channels and trailing
// dims), with no mean subtraction, then scaled per channel.
//
// Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019, arXiv:1910.07467.
// Implements spec/normalizers.md §8.1 in PyTorch's form (ε inside the square root, default ε the
// machine epsilon of the scalar type, weight only).

#include <optional>

#include "normlab/set_normalizer.hpp"

namespace normlab {

struct RmsNormOptions {
    std::optional<double> eps = std::nullopt;  // none: machine epsilon of T, as PyTorch
    bool affine = true;
    bool bias = false;

    template <class V>
    void visit(V& v) {
        v("eps", eps, "added to the mean square inside the square root; none = machine epsilon");
        v("affine", affine, "learnable per-channel weight (gamma)");
        v("bias", bias, "also a learnable per-channel bias (beta); needs affine=true");
    }
};

template <class T>
class RmsNorm : public SetNormalizer<T> {
  public:
    static constexpr const char* kName = "rms_norm";
    static constexpr const char* kSummary =
        "per sample by the root mean square over channels and trailing dims, no centring (Zhang "
        "& Sennrich 2019)";
    using Options = RmsNormOptions;

    explicit RmsNorm(std::size_t num_features, Options options = {});

    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    bool uses_batch_statistics() const override { return false; }

    const Options& options() const { return options_; }

  private:
    Options options_;
};

}  // namespace normlab
