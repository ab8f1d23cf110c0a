#pragma once
// Per-channel running mean and variance with PyTorch's update rule, saved with the layer as the
// buffers running_mean (zeros), running_var (ones) and the counter num_batches_tracked.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "normlab/errors.hpp"
#include "normlab/normalizer.hpp"
#include "normlab/options.hpp"

namespace normlab {

template <class T>
struct RunningStats {
    Array<T> mean;
    Array<T> var;  // unbiased estimates: what the layer normalizes with in eval mode
    std::int64_t batches = 0;

    explicit RunningStats(std::size_t channels)
        : mean(xt::zeros<T>({channels})), var(xt::ones<T>({channels})) {}

    // Throws OptionError unless momentum is none or in [0, 1].
    static void check_momentum(const std::string& label, const std::optional<double>& momentum) {
        if (momentum && !(*momentum >= 0 && *momentum <= 1))
            throw OptionError(label + ": momentum must lie in [0, 1] or be none, got " +
                              format_value(*momentum));
    }

    // running ← (1−f)·running + f·batch, with f = momentum, or f = 1/batches (the cumulative
    // average of every batch seen) when momentum is none.
    void update(const std::optional<double>& momentum, const std::vector<double>& batch_mean,
                const std::vector<double>& batch_var) {
        ++batches;
        const double f = momentum ? *momentum : 1.0 / double(batches);
        // Over the storage, so that the loops vectorize (element access kept them scalar).
        T* running_mean = mean.data();
        T* running_var = var.data();
        for (std::size_t c = 0; c < batch_mean.size(); ++c)
            running_mean[c] = T((1 - f) * double(running_mean[c]) + f * batch_mean[c]);
        for (std::size_t c = 0; c < batch_mean.size(); ++c)
            running_var[c] = T((1 - f) * double(running_var[c]) + f * batch_var[c]);
    }

    std::vector<BufferRef<T>> buffers() { return {{"running_mean", &mean}, {"running_var", &var}}; }
    std::vector<CounterRef> counters() { return {{"num_batches_tracked", &batches}}; }
};

}  // namespace normlab
