// The API example of the README: build a normalizer from a spec, run forward and backward,
// read the gradients, save and reload the state.
#include <filesystem>
#include <iostream>

#include <xtensor/xrandom.hpp>

#include "normlab/normlab.hpp"

int main() {
    xt::random::seed(0);
    normlab::Tensor x = xt::random::randn<float>({8, 64, 5, 5});

    auto norm = normlab::make_normalizer("batch_norm(momentum=0.1,eps=1e-5)", 64);
    normlab::Tensor y = norm->forward(x, normlab::Mode::train);  // saves what backward needs
    normlab::Tensor dx = norm->backward(xt::ones_like(y));       // accumulates dγ, dβ
    for (auto& p : norm->parameters())
        std::cout << p.name << ": grad[0] = " << (*p.grad)(0) << "\n";

    const auto path = std::filesystem::temp_directory_path() / "normlab_batch_norm_state.npz";
    normlab::save_state(*norm, path.string());
    auto restored = normlab::load_normalizer(path.string());
    normlab::Tensor y_eval = restored->forward(x, normlab::Mode::eval, normlab::Grad::none);
    std::cout << restored->spec() << ": eval output[0] = " << y_eval(0, 0, 0, 0) << "\n";
    std::filesystem::remove(path);
    return 0;
}
