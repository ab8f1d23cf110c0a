#pragma once
// One gradient check for every layer (in double, central differences): the loss is
// L = Σ w ⊙ y with a fixed random w, so dy = w; the analytic dx and parameter gradients are
// compared with (L(θ + h) − L(θ − h)) / 2h for every element of x and of every parameter.

#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "normlab/normalizer.hpp"

namespace normlab::testing {

using ArrayD = Array<double>;

inline ArrayD random_array(const Shape& shape, unsigned seed, double mean = 0.0,
                           double stddev = 1.0) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> dist(mean, stddev);
    ArrayD a = ArrayD::from_shape(shape);
    for (auto& v : a)
        v = dist(gen);
    return a;
}

// Max |analytic − numeric| over a tensor, relative to the largest |numeric| (at least 1e-2, so
// gradients that are all ~0 are compared absolutely).
inline double relative_error(const ArrayD& analytic, const ArrayD& numeric) {
    double diff = 0, scale = 1e-2;
    for (std::size_t i = 0; i < numeric.size(); ++i) {
        diff = std::max(diff, std::abs(analytic.data()[i] - numeric.data()[i]));
        scale = std::max(scale, std::abs(numeric.data()[i]));
    }
    return diff / scale;
}

struct NamedError {
    std::string tensor;  // "dx" or the parameter name
    double error;
};

// Generic form for any layer: forward(x) -> y (saving a context), backward(dy) -> dx (adding
// into the parameters' grad), and the parameters to perturb.
inline std::vector<NamedError> check_gradients(
    const std::function<ArrayD(const ArrayD&, bool keep)>& forward,
    const std::function<ArrayD(const ArrayD&)>& backward, std::vector<ParamRef<double>> params,
    const ArrayD& x, unsigned seed = 7, double h = 1e-6) {
    for (auto& p : params)
        p.grad->fill(0.0);
    const ArrayD y = forward(x, true);
    const ArrayD w = random_array(shape_of(y), seed);
    const ArrayD dx = backward(w);

    auto loss = [&](const ArrayD& input) {
        const ArrayD out = forward(input, false);
        double l = 0;
        for (std::size_t i = 0; i < out.size(); ++i)
            l += w.data()[i] * out.data()[i];
        return l;
    };
    auto numeric = [&](ArrayD& target, const ArrayD& input) {
        ArrayD g = ArrayD::from_shape(target.shape());
        for (std::size_t i = 0; i < target.size(); ++i) {
            const double keep = target.data()[i];
            target.data()[i] = keep + h;
            const double up = loss(input);
            target.data()[i] = keep - h;
            const double down = loss(input);
            target.data()[i] = keep;
            g.data()[i] = (up - down) / (2 * h);
        }
        return g;
    };

    std::vector<NamedError> errors;
    ArrayD xp = x;
    errors.push_back({"dx", relative_error(dx, numeric(xp, xp))});
    for (auto& p : params)
        errors.push_back({p.name, relative_error(*p.grad, numeric(*p.value, x))});
    return errors;
}

// The normalizer form: perturbation forwards run with Grad::none and the given mode.
inline std::vector<NamedError> check_gradients(BasicNormalizer<double>& norm, const ArrayD& x,
                                               Mode mode, unsigned seed = 7, double h = 1e-6) {
    return check_gradients(
        [&](const ArrayD& in, bool keep) {
            return norm.forward(in, mode, keep ? Grad::keep : Grad::none);
        },
        [&](const ArrayD& dy) { return norm.backward(dy); }, norm.parameters(), x, seed, h);
}

inline void expect_gradients_match(const std::vector<NamedError>& errors, double tolerance = 1e-7) {
    for (const auto& e : errors)
        EXPECT_LT(e.error, tolerance) << "gradient of " << e.tensor << " differs from central "
                                      << "finite differences (relative error " << e.error << ")";
}

// Gives every parameter a random, non-trivial value so γ ≠ 1 and β ≠ 0 are exercised.
inline void randomize_parameters(BasicNormalizer<double>& norm, unsigned seed = 3) {
    for (auto& p : norm.parameters()) {
        const ArrayD r = random_array(shape_of(*p.value), seed++, 1.0, 0.5);
        *p.value = r;
    }
}

}  // namespace normlab::testing
