// Process-wide speed settings (normlab/runtime.hpp): which OPENBLAS_CORETYPE fits a CPU whose
// model OpenBLAS did not know, and whether OpenMP's idle threads spin for long.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "normlab/errors.hpp"
#include "normlab/runtime.hpp"

namespace {

using normlab::CpuVectorFeatures;
using normlab::fitting_blas_coretype;

CpuVectorFeatures avx512() {
    return {true, true, true, true, true, true, true};
}

// Sets an environment variable (null: unsets it) until the end of the scope, then puts back what
// the process had.
class ScopedVariable {
  public:
    ScopedVariable(const char* name, const char* value) : name_(name) {
        const char* before = std::getenv(name);
        had_ = before != nullptr;
        if (had_) saved_ = before;
        set(value);
    }
    ~ScopedVariable() { set(had_ ? saved_.c_str() : nullptr); }
    ScopedVariable(const ScopedVariable&) = delete;
    ScopedVariable& operator=(const ScopedVariable&) = delete;

    void set(const char* value) const {
        if (value)
            setenv(name_, value, 1);
        else
            unsetenv(name_);
    }

  private:
    const char* name_;
    bool had_ = false;
    std::string saved_;
};

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
    const ScopedVariable coretype("OPENBLAS_CORETYPE", "Haswell");
    EXPECT_EQ(fitting_blas_coretype(), "");
}

TEST(OpenMpWait, SpinsLongUnlessThePolicyIsPassiveOrTheCountIsGiven) {
    using normlab::openmp_spins_long;
    EXPECT_TRUE(openmp_spins_long(nullptr, nullptr));
    EXPECT_TRUE(openmp_spins_long("active", nullptr));
    EXPECT_TRUE(openmp_spins_long("ACTIVE", nullptr));
    EXPECT_FALSE(openmp_spins_long("passive", nullptr));
    EXPECT_FALSE(openmp_spins_long("PASSIVE", nullptr));
    EXPECT_FALSE(openmp_spins_long(nullptr, "1000"));
    // A count given is the program's choice, with either policy.
    EXPECT_FALSE(openmp_spins_long("active", "1000"));
}

TEST(OpenMpWait, ReadsThisProcesssEnvironment) {
    const ScopedVariable spin_count("GOMP_SPINCOUNT", "1000");
    EXPECT_FALSE(normlab::openmp_spins_long());
    spin_count.set(nullptr);
    EXPECT_EQ(normlab::openmp_spins_long(),
              normlab::openmp_spins_long(std::getenv("OMP_WAIT_POLICY"), nullptr));
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

TEST(CacheSizeSetting, ReadsBytesAndPowersOf1024) {
    using normlab::cache_size_setting;
    EXPECT_EQ(cache_size_setting("33554432"), std::size_t{32} << 20);
    EXPECT_EQ(cache_size_setting("32768K"), std::size_t{32} << 20);
    EXPECT_EQ(cache_size_setting("32M"), std::size_t{32} << 20);
    EXPECT_EQ(cache_size_setting("1G"), std::size_t{1} << 30);
}

TEST(CacheSizeSetting, RefusesWhatIsNoSizeNamingWhatCame) {
    using normlab::cache_size_setting;
    for (const char* text : {"", "M", "abc", "32MB", "32 M", "32m", "-5M", "0", "0M", "+32M",
                             "99999999999999999999", "9999999999999G"}) {
        try {
            cache_size_setting(text);
            ADD_FAILURE() << "accepted '" << text << "'";
        } catch (const normlab::OptionError& e) {
            const std::string message = e.what();
            EXPECT_NE(message.find("NORMLAB_LAST_LEVEL_CACHE"), std::string::npos) << message;
            EXPECT_NE(message.find("such as 32M"), std::string::npos) << message;
            EXPECT_NE(message.find("or 'measure'"), std::string::npos) << message;
            EXPECT_NE(message.find("'" + std::string(text) + "'"), std::string::npos) << message;
        }
    }
}

// A value of the variable as a plan: a size as read above, `measure` as the probe's plan up to
// the detected size, anything else refused as above.
TEST(CacheSizeSetting, PlanSettingTakesSizesAndMeasure) {
    EXPECT_EQ(normlab::cache_plan_setting("32M"), std::size_t{32} << 20);
    const std::size_t detected = normlab::detected_last_level_cache_bytes();
    const std::size_t measured = normlab::cache_plan_setting(normlab::kMeasureCache);
    EXPECT_GE(measured, std::min(detected, std::size_t{2} << 20));
    EXPECT_LE(measured, std::max(detected, std::size_t{2} << 20));
    EXPECT_THROW(normlab::cache_plan_setting("measured"), normlab::OptionError);
    EXPECT_THROW(normlab::cache_plan_setting(""), normlab::OptionError);
}

// The environment's size takes the place of the detected one, and set_last_level_cache_bytes
// still overrides both. CTest runs this twice more, with NORMLAB_LAST_LEVEL_CACHE=5M and =measure
// (tests/CMakeLists.txt), so that every side is checked on every machine.
TEST(CacheSizeSetting, EnvironmentTakesThePlaceOfTheDetectedSize) {
    const std::size_t pinned = normlab::last_level_cache_bytes();
    normlab::set_last_level_cache_bytes(0);
    const char* text = std::getenv(normlab::kCacheSizeVariable);
    const std::size_t detected = normlab::detected_last_level_cache_bytes();
    if (text != nullptr && std::string(text) == normlab::kMeasureCache) {
        // The probe's plan: from its first working set (2 MiB) up to the detected size.
        const std::size_t measured = normlab::last_level_cache_bytes();
        EXPECT_GE(measured, std::min(detected, std::size_t{2} << 20));
        EXPECT_LE(measured, std::max(detected, std::size_t{2} << 20));
        EXPECT_EQ(measured % 1024, 0u);
        EXPECT_EQ(normlab::last_level_cache_source(), "NORMLAB_LAST_LEVEL_CACHE=measure");
    } else if (text != nullptr && *text != '\0') {
        EXPECT_EQ(normlab::last_level_cache_bytes(), normlab::cache_size_setting(text));
        EXPECT_EQ(normlab::last_level_cache_source(), normlab::kCacheSizeVariable);
    } else {
        EXPECT_GE(detected, std::size_t{1} << 20);
        EXPECT_EQ(normlab::last_level_cache_bytes(), detected);
        EXPECT_EQ(normlab::last_level_cache_source(), "detected");
    }
    normlab::set_last_level_cache_bytes(std::size_t{3} << 20);
    EXPECT_EQ(normlab::last_level_cache_bytes(), std::size_t{3} << 20);
    EXPECT_EQ(normlab::last_level_cache_source(), "set_last_level_cache_bytes");
    EXPECT_TRUE(normlab::streams_output(std::size_t{3} << 19));
    normlab::set_last_level_cache_bytes(pinned);
}
