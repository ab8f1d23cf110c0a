// Process-wide speed settings (normlab/runtime.hpp): which OPENBLAS_CORETYPE fits a CPU whose
// model OpenBLAS did not know.
#include <gtest/gtest.h>

#include <cstdlib>

#include "normlab/runtime.hpp"

namespace {

using normlab::CpuVectorFeatures;
using normlab::fitting_blas_coretype;

CpuVectorFeatures avx512() {
    return {true, true, true, true, true, true, true};
}

TEST(BlasCoretype, PrescottFallbackGetsTheWidestKernelsTheCpuHas) {
    EXPECT_EQ(fitting_blas_coretype("Prescott", avx512()), "SkylakeX");
    EXPECT_EQ(fitting_blas_coretype("PRESCOTT", avx512()), "SkylakeX");
    CpuVectorFeatures avx2{true, true, true};
    EXPECT_EQ(fitting_blas_coretype("Prescott", avx2), "Haswell");
    // AVX-512 without all of BW, DQ and VL (the SkylakeX kernels use them): AVX2's kernels.
    CpuVectorFeatures partial = avx512();
    partial.avx512bw = false;
    EXPECT_EQ(fitting_blas_coretype("Prescott", partial), "Haswell");
    // AVX2 without FMA: no Haswell kernels, AVX ones.
    CpuVectorFeatures no_fma{true, true, false};
    EXPECT_EQ(fitting_blas_coretype("Prescott", no_fma), "Sandybridge");
    // SSE only: Prescott is what fits.
    EXPECT_EQ(fitting_blas_coretype("Prescott", CpuVectorFeatures{}), "");
}

TEST(BlasCoretype, ACoreOpenBlasRecognisedIsLeftAlone) {
    for (const char* core : {"Haswell", "SkylakeX", "Cooperlake", "Zen", "Sandybridge", ""})
        EXPECT_EQ(fitting_blas_coretype(core, avx512()), "") << core;
}

TEST(BlasCoretype, AChoiceAlreadyMadeInTheEnvironmentStands) {
    const char* before = std::getenv("OPENBLAS_CORETYPE");
    const std::string saved = before ? before : "";
    setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    EXPECT_EQ(fitting_blas_coretype(), "");
    if (before)
        setenv("OPENBLAS_CORETYPE", saved.c_str(), 1);
    else
        unsetenv("OPENBLAS_CORETYPE");
}

TEST(BlasCoretype, TheHostsAnswerIsOneOfTheKnownValues) {
    // Whatever OpenBLAS detected here, the suggestion is empty or a core OpenBLAS knows, and
    // never one the CPU lacks the instructions for.
    const std::string fitting = normlab::fitting_blas_coretype();
    const CpuVectorFeatures cpu = normlab::host_vector_features();
    if (fitting == "SkylakeX")
        EXPECT_TRUE(cpu.avx512f && cpu.avx512bw && cpu.avx512dq && cpu.avx512vl);
    else if (fitting == "Haswell")
        EXPECT_TRUE(cpu.avx2 && cpu.fma);
    else if (fitting == "Sandybridge")
        EXPECT_TRUE(cpu.avx);
    else
        EXPECT_EQ(fitting, "");
}

}  // namespace
