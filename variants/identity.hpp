#pragma once
// No normalization: y = x. The baseline every comparison needs; it still checks its input's
// channel count and pairs backward with forward like every other layer.

#include "normlab/normalizer_base.hpp"

namespace normlab {

struct IdentityOptions {
    template <class V>
    void visit(V& /*v*/) {}
};

template <class T>
class Identity : public NormalizerBase<T> {
  public:
    static constexpr const char* kName = "identity";
    static constexpr const char* kSummary = "no normalization (baseline)";
    using Options = IdentityOptions;

    explicit Identity(std::size_t num_features, Options /*options*/ = {})
        : NormalizerBase<T>(kName, kName, num_features, false, false) {}

    Array<T> forward(const Array<T>& x, Mode /*mode*/, Grad grad = Grad::keep) override {
        this->check_input(x);
        SavedNormalization<T> ctx;
        ctx.shape = shape_of(x);
        this->save(std::move(ctx), grad);
        return x;
    }
    Array<T> backward(const Array<T>& dy) override {
        this->take(dy);
        return dy;
    }
    bool uses_batch_statistics() const override { return false; }
};

}  // namespace normlab
