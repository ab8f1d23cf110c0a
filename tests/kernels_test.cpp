// The shared statistics kernel: results do not depend on the number of threads (each set is
// reduced by one thread in a fixed order), and the dense and strided paths agree.
#include <omp.h>

#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "normlab/normlab.hpp"

namespace normlab {
namespace {

struct ThreadCount {
    explicit ThreadCount(int n) : previous(omp_get_max_threads()) { omp_set_num_threads(n); }
    ~ThreadCount() { omp_set_num_threads(previous); }
    int previous;
};

TEST(Kernels, ResultsAreIdenticalWithOneAndTwoThreads) {
    for (const std::string spec : {"batch_norm", "layer_norm", "group_norm(groups=8)", "rms_norm"}) {
        for (const Shape& shape : {Shape{512, 64}, Shape{16, 64, 12, 12}}) {
            const Tensor x = xt::cast<float>(testing::random_array(shape, 1, 3.0, 2.0));
            const Tensor dy = xt::cast<float>(testing::random_array(shape, 2));
            Tensor y[2], dx[2];
            for (int threads : {1, 2}) {
                ThreadCount tc(threads);
                auto norm = make_normalizer(spec, 64);
                y[threads - 1] = norm->forward(x, Mode::train);
                dx[threads - 1] = norm->backward(dy);
            }
            EXPECT_EQ(y[0], y[1]) << spec << " " << format_shape(shape);
            EXPECT_EQ(dx[0], dx[1]) << spec << " " << format_shape(shape);
        }
    }
}

TEST(Kernels, DenseInputEqualsTheSameDataWithATrailingUnitDimension) {
    // (N, C) takes the dense column path of the kernel, (N, C, 1) the row path.
    for (const std::string spec : {"batch_norm", "layer_norm", "group_norm(groups=4)"}) {
        const auto x = testing::random_array({9, 8}, 3, 1.0, 2.0);
        const auto dy = testing::random_array({9, 8}, 4);
        auto dense = make_normalizer<double>(spec, 8);
        auto rows = make_normalizer<double>(spec, 8);
        testing::randomize_parameters(*dense);
        testing::randomize_parameters(*rows);
        const testing::ArrayD x3 = xt::reshape_view(x, {9, 8, 1});
        const testing::ArrayD dy3 = xt::reshape_view(dy, {9, 8, 1});
        const testing::ArrayD y_rows = rows->forward(x3, Mode::train);
        EXPECT_TRUE(xt::allclose(dense->forward(x, Mode::train), xt::reshape_view(y_rows, {9, 8}),
                                 1e-14, 1e-14))
            << spec;
        const testing::ArrayD dx_rows = rows->backward(dy3);
        EXPECT_TRUE(xt::allclose(dense->backward(dy), xt::reshape_view(dx_rows, {9, 8}), 1e-13,
                                 1e-13))
            << spec;
    }
}

}  // namespace
}  // namespace normlab
