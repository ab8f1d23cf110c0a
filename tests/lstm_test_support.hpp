// Small recurrent layers in double for the tests, and the gradient check of a whole recurrent
// layer (running statistics restored before every forward, so each sees the same state).
#pragma once

#include <memory>
#include <random>

#include "gradient_check.hpp"
#include "normlab/model/recurrent.hpp"
#include "normlab/state_snapshot.hpp"

namespace normlab::testing {

constexpr std::size_t kFeatures = 3;
constexpr std::size_t kHidden = 4;

inline std::unique_ptr<model::RecurrentLayer<double>> make_recurrent(model::RecurrentCell cell,
                                                                     model::RecurrentNorms norms,
                                                                     model::SequenceOutput output,
                                                                     std::size_t max_steps = 6,
                                                                     unsigned seed = 1) {
    std::mt19937 rng(seed);
    model::RecurrentOptions o;
    o.input_size = kFeatures;
    o.hidden_size = kHidden;
    o.max_steps = max_steps;
    o.norms = std::move(norms);
    o.output = output;
    return std::make_unique<model::RecurrentLayer<double>>(cell, o, rng);
}

// Random slot parameters (γ around 1, β around 0.3), so γ ≠ 1 and β ≠ 0 are exercised; the
// weights keep their initialization.
inline void randomize(model::RecurrentLayer<double>& layer, unsigned seed) {
    for (auto& p : layer.parameters())
        if (layer.is_normalizer_parameter(p.name))
            *p.value = random_array(shape_of(*p.value), seed++,
                                    p.name.ends_with("weight") ? 1.0 : 0.3, 0.3);
}

inline std::vector<NamedError> check_layer_gradients(model::RecurrentLayer<double>& layer,
                                                     const ArrayD& x,
                                                     const std::vector<std::size_t>& lengths,
                                                     Mode mode = Mode::train) {
    // One forward first: batch_layer_norm fixes its geometry and allocates its buffers at its
    // first call; every forward of the check should start from that state.
    layer.forward(x, lengths, mode, Grad::none);
    const StateSnapshot<model::Layer<double>> state(layer);
    return check_gradients(
        [&](const ArrayD& in, bool keep) {
            state.restore(layer);
            return layer.forward(in, lengths, mode, keep ? Grad::keep : Grad::none);
        },
        [&](const ArrayD& dy) { return layer.backward(dy); }, layer.parameters(), x);
}

}  // namespace normlab::testing
