// Shows what every registered normalizer does to one small batch: the mean and standard
// deviation of its output per channel in train mode and in eval mode (after a few training
// steps have filled the running statistics), on input with mean 3 and standard deviation 2.
#include <cmath>
#include <cstdio>
#include <string>

#include <xtensor/xrandom.hpp>

#include "normlab/normlab.hpp"

namespace {

// Mean and std of y over everything but the channel axis, averaged over channels.
std::pair<double, double> channel_stats(const normlab::Tensor& y) {
    const std::size_t n = y.shape()[0], c = y.shape()[1], s = y.size() / (n * c);
    double mean_sum = 0, std_sum = 0;
    for (std::size_t ch = 0; ch < c; ++ch) {
        double sum = 0, sq = 0;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < s; ++j) {
                const double v = y.data()[(i * c + ch) * s + j];
                sum += v;
                sq += v * v;
            }
        const double m = sum / double(n * s);
        mean_sum += m;
        std_sum += std::sqrt(std::max(sq / double(n * s) - m * m, 0.0));
    }
    return {mean_sum / double(c), std_sum / double(c)};
}

}  // namespace

int main() {
    const std::size_t channels = 8;
    xt::random::seed(42);
    std::printf("normalizer output statistics on a (4, %zu, 6, 6) batch, input mean 3, std 2\n\n",
                channels);
    std::printf("%-78s %18s %18s\n", "spec", "train mean / std", "eval mean / std");
    for (const auto& variant : normlab::registered_variants()) {
        const std::string spec =
            variant.name == "group_norm" ? "group_norm(groups=4)" : variant.name;
        auto norm = normlab::make_normalizer(spec, channels);
        normlab::Tensor y_train;
        normlab::Tensor x;
        // One training epoch of 20 steps; the epoch hooks let variants with population
        // statistics (batch_layer_norm) finalize them.
        norm->begin_epoch();
        for (int step = 0; step < 20; ++step) {
            x = 3.0f + 2.0f * xt::random::randn<float>(std::vector<std::size_t>{4, channels, 6, 6});
            y_train = norm->forward(x, normlab::Mode::train, normlab::Grad::none);
        }
        norm->end_epoch();
        const normlab::Tensor y_eval = norm->forward(x, normlab::Mode::eval, normlab::Grad::none);
        const auto [tm, ts] = channel_stats(y_train);
        const auto [em, es] = channel_stats(y_eval);
        std::printf("%-78s %8.4f / %7.4f %8.4f / %7.4f\n", norm->spec().c_str(), tm, ts, em, es);
    }
    std::printf(
        "\nbatch_norm's eval output uses running statistics (momentum 0.1, 20 steps),\n"
        "so its mean and std are close to, not exactly, 0 and 1; identity keeps the\n"
        "input's; rms_norm scales without centring (mean stays positive).\n");
    return 0;
}
