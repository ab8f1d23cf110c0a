// PyTorch's CPU kernels (Debian's libtorch-dev, the library under python3-torch) alternated block
// by block with normlab's layer of the same name, in this one process ("paired/pytorch/...").
// pytorch_bench.py times PyTorch on its own, in its own process, as users call it; on a shared
// VM, where the same case moved 1.3-2x between programs run minutes apart, a ratio between two
// programs can be the machine's drift. Here both meet the same drift (time_abba), as onednn_bench's
// paired cases do for oneDNN. The calls are the ones pytorch_bench.py makes, through the C++ API:
// the same ops, flags and protocol (input handed anew to training passes, an untimed training
// forward before each backward, autograd's grad for x, γ and β), without the Python
// interpreter's overhead per call.
// Beside the timings, "accuracy/..." gives what each implementation's numerics cost in digits:
// both training forwards and backwards against PyTorch's in float64, on the suite's input and on
// the same input far from zero mean (run_accuracy).
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "normlab_case.hpp"

namespace normlab::bench {
namespace {

using torch::Tensor;
using Layer =
    std::function<Tensor(const Tensor& x, const Tensor& w, const Tensor& b,
                         const Tensor& running_mean, const Tensor& running_var, bool train)>;

constexpr double kEps = 1e-5;
// The largest difference between the two implementations' training outputs that counts as the
// same layer (RMSNorm's eps differs between them by far less than this moves its output).
constexpr double kAgreement = 1e-3;

// torch.nn.RMSNorm arrived after 1.13: its documented formula, as pytorch_bench.py composes it.
Tensor rms_norm(const Tensor& x, const Tensor& w) {
    std::vector<int64_t> dims, shape{1, -1};
    for (int64_t d = 1; d < x.dim(); ++d)
        dims.push_back(d);
    for (int64_t d = 2; d < x.dim(); ++d)
        shape.push_back(1);
    const double eps = double(std::numeric_limits<float>::epsilon());
    return x * torch::rsqrt(x.pow(2).mean(dims, true) + eps) * w.view(shape);
}

// PyTorch's op for a normlab variant, as pytorch_bench.py calls it; empty where it has none.
Layer pytorch_layer(const std::string& variant, const ShapeCase& shape) {
    if (variant == "batch_norm")
        return [](const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& rm,
                  const Tensor& rv, bool train) {
            return torch::batch_norm(x, w, b, rm, rv, train, 0.1, kEps, false);
        };
    if (variant == "layer_norm")
        // normlab's layer_norm: statistics over (C, ...) with per-channel γ, β: F.layer_norm on
        // (N, C), group_norm with one group on 4-D.
        return [](const Tensor& x, const Tensor& w, const Tensor& b, const Tensor&, const Tensor&,
                  bool) {
            return x.dim() == 2 ? torch::layer_norm(x, {x.size(1)}, w, b, kEps, false)
                                : torch::group_norm(x, 1, w, b, kEps, false);
        };
    if (variant == "group_norm")
        return [](const Tensor& x, const Tensor& w, const Tensor& b, const Tensor&, const Tensor&,
                  bool) { return torch::group_norm(x, 32, w, b, kEps, false); };
    if (variant == "rms_norm")
        return [](const Tensor& x, const Tensor& w, const Tensor&, const Tensor&, const Tensor&,
                  bool) { return rms_norm(x, w); };
    if (variant == "instance_norm" && shape.has_trailing_dims())
        return [](const Tensor& x, const Tensor& w, const Tensor& b, const Tensor&, const Tensor&,
                  bool) { return torch::instance_norm(x, w, b, {}, {}, true, 0.1, kEps, false); };
    return {};
}

// A copy of a normlab tensor as a PyTorch one.
Tensor to_torch(const normlab::Tensor& t) {
    std::vector<int64_t> dims(t.shape().begin(), t.shape().end());
    return torch::from_blob(const_cast<float*>(t.data()), dims, torch::kFloat32).clone();
}

// One PyTorch layer on one shape and pass: call() times one call after its untimed preparation,
// as NormlabCase::call times normlab's, on the same input and gradient as normlab's case.
class PytorchCase {
  public:
    PytorchCase(const std::string& variant, const ShapeCase& shape, const NormlabCase& same_data,
                Pass pass)
        : layer_(pytorch_layer(variant, shape)), pass_(pass) {
        x0_ = to_torch(same_data.input());
        const int64_t c = x0_.size(1);
        x_ = x0_.clone().requires_grad_(true);
        dy_ = to_torch(same_data.grad_output());
        w_ = torch::ones({c}).requires_grad_(true);
        b_ = torch::zeros({c}).requires_grad_(true);
        running_mean_ = torch::zeros({c});
        running_var_ = torch::ones({c});
        params_ =
            variant == "rms_norm" ? std::vector<Tensor>{x_, w_} : std::vector<Tensor>{x_, w_, b_};
    }

    double call() {
        using clock = std::chrono::steady_clock;
        if (pass_ == Pass::fwd_eval) {
            torch::NoGradGuard no_grad;
            const auto t0 = clock::now();
            Tensor y = forward(false);
            return std::chrono::duration<double>(clock::now() - t0).count();
        }
        hand_over_input();
        if (pass_ == Pass::fwd_train) {
            // As in training: autograd records what backward needs.
            const auto t0 = clock::now();
            Tensor y = forward(true);
            return std::chrono::duration<double>(clock::now() - t0).count();
        }
        Tensor y = forward(true);
        const auto t0 = clock::now();
        auto grads = torch::autograd::grad({y}, params_, {dy_});
        const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
        benchmark::DoNotOptimize(grads.front().data_ptr());
        return seconds;
    }

    // y of a training forward (batch statistics), to check against normlab's.
    Tensor training_output() {
        torch::NoGradGuard no_grad;
        return layer_(x0_, w_, b_, running_mean_.clone(), running_var_.clone(), true);
    }

  private:
    // The input written anew by the intra-op threads, as a previous layer would write it.
    void hand_over_input() {
        torch::NoGradGuard no_grad;
        x_.copy_(x0_);
    }
    Tensor forward(bool train) {
        Tensor y = layer_(x_, w_, b_, running_mean_, running_var_, train);
        benchmark::DoNotOptimize(y.data_ptr());
        return y;
    }

    Layer layer_;
    Pass pass_;
    Tensor x0_, x_, dy_, w_, b_, running_mean_, running_var_;
    std::vector<Tensor> params_;
};

// PyTorch's call and normlab's alternated in blocks in the order ABBA (time_abba): the two medians
// and `paired_ratio`, PyTorch's median over normlab's (the target is 1.5 and above).
void run_paired(benchmark::State& state, const std::string& variant, const ShapeCase& shape,
                Pass pass) {
    NormlabCase normlab_case(spec_for(variant, shape), shape);
    PytorchCase pytorch_case(variant, shape, normlab_case, pass);
    // The two compute the same layer: their training outputs agree to float rounding (γ = 1,
    // β = 0 in both, values of order 1). A wrong op or argument order would time something else.
    const Tensor pytorch_y = pytorch_case.training_output();
    const normlab::Tensor normlab_y = normlab_case.training_output();
    const double max_diff = (pytorch_y - to_torch(normlab_y)).abs().max().item<double>();
    state.counters["max_abs_diff"] = max_diff;
    if (!(max_diff < kAgreement)) {
        state.SkipWithError(("PyTorch's and normlab's training outputs differ by " +
                             std::to_string(max_diff) + ", expected below " +
                             std::to_string(kAgreement))
                                .c_str());
        return;
    }
    time_paired(
        state, "pytorch", [&] { return pytorch_case.call(); },
        [&] { return normlab_case.call(pass); });
    state.counters["pytorch_threads"] = at::get_num_threads();
}

// The inputs of the accuracy cases: the suite's input (normal, mean 1, std 2) moved by these
// offsets. Activations far from zero mean (the input of a network's first layer, or of a layer
// after a ReLU without a normalizer before it) are where statistics in float lose digits.
constexpr float kAccuracyOffsets[] = {0.0f, 100.0f};

// How far each implementation's training forward y (float32; γ = 1, β = 0, batch statistics),
// or its dx for the suite's dy, lies from PyTorch's in float64 on the same float32 values: the
// largest absolute difference over the tensor, `normlab_max_error` and `pytorch_max_error` (y is
// of order 1, dx of order 1/σ, so these are errors relative to their scale). Computed once; the
// case's time is not a measurement.
void run_accuracy(benchmark::State& state, const std::string& variant, const ShapeCase& shape,
                  Pass pass, float offset) {
    const std::string spec = spec_for(variant, shape);
    const SuiteData data = suite_data(shape);
    normlab::Tensor x = data.x + offset;
    const Tensor x_torch = to_torch(x), dy_torch = to_torch(data.dy);
    const int64_t c = x_torch.size(1);
    const Layer layer = pytorch_layer(variant, shape);
    const bool backward = pass == Pass::bwd;
    const auto pytorch_output = [&](torch::ScalarType type) {
        Tensor input = x_torch.to(type).requires_grad_(backward);
        Tensor y = layer(input, torch::ones({c}, type), torch::zeros({c}, type),
                         torch::zeros({c}, type), torch::ones({c}, type), true);
        return backward ? torch::autograd::grad({y}, {input}, {dy_torch.to(type)})[0] : y;
    };
    const Tensor reference = pytorch_output(torch::kFloat64);
    const auto max_error = [&](const Tensor& out) {
        return (out.to(torch::kFloat64) - reference).abs().max().item<double>();
    };
    auto norm = make_normalizer(spec, shape.dims[1]);
    normlab::Tensor out = norm->forward(x, Mode::train, backward ? Grad::keep : Grad::none);
    if (backward) out = norm->backward(data.dy);
    const double normlab_error = max_error(to_torch(out));
    const double pytorch_error = max_error(pytorch_output(torch::kFloat32));
    for (auto _ : state)
        benchmark::DoNotOptimize(normlab_error + pytorch_error);
    if (!std::isfinite(normlab_error) || !std::isfinite(pytorch_error)) {
        state.SkipWithError("an output is not finite");
        return;
    }
    state.counters["normlab_max_error"] = normlab_error;
    state.counters["pytorch_max_error"] = pytorch_error;
    state.counters["offset"] = offset;
}

void register_all() {
    for (const std::string variant :
         {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"})
        for (const auto& shape : shape_suite()) {
            if (!pytorch_layer(variant, shape)) continue;
            for (Pass pass : {Pass::fwd_train, Pass::bwd})
                for (float offset : kAccuracyOffsets)
                    benchmark::RegisterBenchmark(
                        ("accuracy/" + variant + "/" + shape.name + "/" + pass_name(pass) +
                         "/offset:" + std::to_string(int(offset)))
                            .c_str(),
                        [variant, shape, pass, offset](benchmark::State& s) {
                            run_accuracy(s, variant, shape, pass, offset);
                        })
                        ->Iterations(1)
                        ->Unit(benchmark::kMicrosecond);
        }
    for (const std::string variant :
         {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"}) {
        for (const auto& shape : shape_suite()) {
            if (!pytorch_layer(variant, shape)) continue;
            for (Pass pass : {Pass::fwd_train, Pass::fwd_eval, Pass::bwd}) {
                const std::string name =
                    "paired/pytorch/" + variant + "/" + shape.name + "/" + pass_name(pass);
                register_timed(name, [variant, shape, pass](benchmark::State& s) {
                    run_paired(s, variant, shape, pass);
                });
            }
        }
    }
}

}  // namespace
}  // namespace normlab::bench

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    // PyTorch's intra-op threads: as many as normlab's OpenMP threads (OMP_NUM_THREADS).
    at::set_num_threads(omp_get_max_threads());
    // As normalizer_bench, for both implementations here. Unlike the other programs, this one
    // does not lock its memory: pytorch_bench.py does not, and PyTorch's allocations were up to
    // 1.5x slower locked.
    normlab::reuse_freed_memory();
    benchmark::AddCustomContext("pytorch_parallel", at::get_parallel_info());
    normlab::bench::register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
