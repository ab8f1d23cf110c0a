// Built against an installed normlab: exits 0 when a layer normalizes as it should.
#include <cmath>

#include "normlab/normlab.hpp"
#include "variants/layer_norm.hpp"

int main() {
    normlab::LayerNorm<float> direct(4);
    auto norm = normlab::make_normalizer("layer_norm", 4);
    normlab::Tensor x = {{1.f, 2.f, 3.f, 4.f}};
    const normlab::Tensor y = norm->forward(x, normlab::Mode::train);
    const normlab::Tensor z = direct.forward(x, normlab::Mode::train);
    double sum = 0;
    for (float v : y)
        sum += v;
    return std::abs(sum) < 1e-5 && std::abs(y(0, 3) - 1.3416355f) < 1e-5 && y == z ? 0 : 1;
}
