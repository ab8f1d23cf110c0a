#pragma once
// One normlab normalizer on one shape of the suite, timed call by call as every benchmark program
// times it: normalizer_bench on its own, onednn_bench and torch_bench alternating it with a
// peer's call.

#include <chrono>
#include <memory>
#include <string>

#include <xtensor/xrandom.hpp>

#include "bench_common.hpp"
#include "normlab/normlab.hpp"

namespace normlab::bench {

// The spec each registered variant is benchmarked with, or "" where it does not apply.
inline std::string spec_for(const std::string& name, const ShapeCase& shape) {
    if (name == "identity") return "";
    if (name == "instance_norm" && !shape.has_trailing_dims()) return "";
    if (name == "group_norm") return "group_norm(groups=32)";
    if (name == "batch_layer_norm")
        // At a batch of one the population variances are undefined (B/(B-1)); inference then
        // takes the variances of its input.
        return "batch_layer_norm(batch_size=" + std::to_string(shape.dims[0]) +
               (shape.dims[0] == 1 ? ", batch_moving_var=false, feature_moving_var=false" : "") +
               ")";
    return name;
}

// A copy of x written as a network's previous layer would write it (copy_by_threads).
inline Tensor copied_by_threads(const Tensor& x) {
    Tensor out = Tensor::from_shape(x.shape());
    copy_by_threads(x.data(), out.data(), x.size());
    return out;
}

// A normalizer of `spec` after a training epoch of a few steps on x, so that eval mode has
// running statistics to use.
inline std::unique_ptr<Normalizer> trained_on(const std::string& spec, const Tensor& x) {
    auto norm = make_normalizer(spec, x.shape()[1]);
    norm->begin_epoch();
    for (int i = 0; i < 2; ++i)
        norm->forward(x, Mode::train, Grad::none);
    norm->end_epoch();
    return norm;
}

// `shape`'s input x (normal, mean 1, std 2) and gradient dy (standard normal), seeded alike in
// every program.
struct SuiteData {
    Tensor x;
    Tensor dy;
};

inline SuiteData suite_data(const ShapeCase& shape) {
    xt::random::seed(1);
    Tensor x = xt::random::randn<float>(shape.dims, 1.0f, 2.0f);
    Tensor dy = xt::random::randn<float>(shape.dims);
    return {std::move(x), std::move(dy)};
}

// The normalizer of `spec` on `shape`'s suite_data.
class NormlabCase {
  public:
    NormlabCase(const std::string& spec, const ShapeCase& shape)
        : NormlabCase(spec, suite_data(shape)) {}

    // The seconds of one call of `pass`, after its untimed preparation. Training forwards are
    // handed their input, as Sequential hands each layer the output of the one before (the copy
    // stands for that layer's output): layers that can keep it instead of writing x̂ do. Each
    // backward follows a training forward on such an input. Inference reads x itself, call after
    // call (a copy would only evict it from the cache).
    double call(Pass pass) {
        using clock = std::chrono::steady_clock;
        if (pass == Pass::bwd) {
            norm_->forward(copied_by_threads(x_), Mode::train, Grad::keep);
            const auto t0 = clock::now();
            Tensor dx = norm_->backward(dy_);
            const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
            benchmark::DoNotOptimize(dx.data());
            return seconds;
        }
        // Training keeps what backward needs; evaluation is inference, as in the peers'
        // forward-inference primitives and PyTorch's no-grad forward.
        const bool train = pass == Pass::fwd_train;
        Tensor input = train ? copied_by_threads(x_) : Tensor();
        const auto t0 = clock::now();
        Tensor y = train ? norm_->forward(std::move(input), Mode::train, Grad::keep)
                         : norm_->forward(x_, Mode::eval, Grad::none);
        const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
        benchmark::DoNotOptimize(y.data());
        norm_->clear_saved();
        return seconds;
    }

    const Tensor& input() const { return x_; }
    const Tensor& grad_output() const { return dy_; }

    // y of a training forward on the input (batch statistics), to check a peer's output against.
    Tensor training_output() {
        Tensor y = norm_->forward(x_, Mode::train, Grad::none);
        norm_->clear_saved();
        return y;
    }

  private:
    NormlabCase(const std::string& spec, SuiteData data)
        : x_(std::move(data.x)), dy_(std::move(data.dy)), norm_(trained_on(spec, x_)) {}

    Tensor x_;
    Tensor dy_;
    std::unique_ptr<Normalizer> norm_;
};

}  // namespace normlab::bench
