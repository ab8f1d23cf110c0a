#include "normlab/runtime.hpp"

#include "normlab/bandwidth.hpp"
#include "normlab/errors.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cstdlib>  // defines __GLIBC__ on glibc systems
#include <fstream>
#include <string>
#include <string_view>
#include <utility>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

// OpenBLAS's controls; weak references, null when another BLAS is linked.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" char* openblas_get_corename() __attribute__((weak));

namespace normlab {

bool reuse_freed_memory() {
#if defined(__GLIBC__)
    // No mmap for large blocks (served from the heap and reused), and no trimming of the heap.
    return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
#else
    return false;
#endif
}

namespace {

constexpr std::size_t kFallbackCacheBytes = std::size_t{32} << 20;

// A size in bytes, or with the unit K, M or G (powers of 1024): "48K", "2048K", "266240K",
// "32M" as /sys/devices/system/cpu/cpu0/cache/index*/size writes it, and what
// NORMLAB_LAST_LEVEL_CACHE takes. 0 for anything else, zero itself and sizes past half of size_t.
std::size_t parse_cache_size(const std::string& text) {
    if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return 0;
    std::size_t pos = 0;
    unsigned long long number = 0;
    try {
        number = std::stoull(text, &pos);
    } catch (const std::exception&) {
        return 0;
    }
    const std::string unit = text.substr(pos);
    const std::size_t scale = unit.empty()  ? 1
                              : unit == "K" ? std::size_t{1} << 10
                              : unit == "M" ? std::size_t{1} << 20
                              : unit == "G" ? std::size_t{1} << 30
                                            : 0;
    if (scale == 0 || number > (std::size_t(-1) >> 1) / scale) return 0;
    return std::size_t(number) * scale;
}

// A cache of CPU 0 as sysfs describes it (all 0 where it tells nothing).
struct SysfsCache {
    std::size_t level = 0, bytes = 0;
    std::size_t sharing_cpus = 0;  // the CPUs its shared_cpu_list names
};

// The cache of CPU 0 with the highest level, or with exactly `wanted_level` where that is not 0.
SysfsCache cache_from_sysfs(std::size_t wanted_level = 0) {
    SysfsCache best;
    for (int index = 0; index < 16; ++index) {
        const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
        std::ifstream level_file(dir + "/level"), size_file(dir + "/size"),
            shared_file(dir + "/shared_cpu_list");
        std::size_t level = 0;
        std::string size, shared;
        if (!(level_file >> level) || !(size_file >> size)) continue;
        if (wanted_level != 0 ? level == wanted_level : level >= best.level) {
            std::getline(shared_file, shared);
            best = {level, parse_cache_size(size), cpu_list_count(shared)};
        }
    }
    return best;
}

constexpr std::size_t kFallbackCoreCacheBytes = std::size_t{1} << 20;

std::atomic<std::size_t> chosen_core_cache_bytes{0};

}  // namespace

std::size_t detected_last_level_cache_bytes() {
    static const std::size_t detected = [] {
        std::size_t from_libc = 0;
#if defined(_SC_LEVEL3_CACHE_SIZE)
        const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (l3 > 0) from_libc = std::size_t(l3);
#endif
        // A /sys that lists no L3 (some VMs show only L1 and L2) is no answer to compare
        // sysconf's L3 with; it still serves where sysconf does not know.
        const SysfsCache last = cache_from_sysfs();
        return usable_cache_bytes(from_libc, last.level >= 3 || from_libc == 0 ? last.bytes : 0);
    }();
    return detected;
}

std::size_t cpu_list_count(std::string_view list) {
    while (!list.empty() && std::isspace(static_cast<unsigned char>(list.back())))
        list.remove_suffix(1);
    if (list.empty()) return 0;
    std::size_t count = 0;
    while (!list.empty()) {
        const std::size_t comma = list.find(',');
        const std::string_view range = list.substr(0, comma);
        list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
        const std::size_t dash = range.find('-');
        // The whole text as a number of at most nine digits (std::from_chars takes no sign or
        // space), so that counts cannot overflow.
        const auto number = [](std::string_view text, std::size_t& value) {
            if (text.size() > 9) return false;
            const char* end = text.data() + text.size();
            const auto [stop, error] = std::from_chars(text.data(), end, value);
            return error == std::errc() && stop == end;
        };
        std::size_t first = 0, last = 0;
        if (!number(range.substr(0, dash), first)) return 0;
        if (dash == std::string_view::npos)
            last = first;
        else if (!number(range.substr(dash + 1), last) || last < first)
            return 0;
        count += last - first + 1;
    }
    return count;
}

std::size_t detected_core_cache_bytes() {
    static const std::size_t detected = [] {
        const SysfsCache l2 = cache_from_sysfs(2);
        if (l2.bytes > 0) return l2.bytes / std::max<std::size_t>(l2.sharing_cpus, 1);
#if defined(_SC_LEVEL2_CACHE_SIZE)
        const long from_libc = sysconf(_SC_LEVEL2_CACHE_SIZE);
        if (from_libc > 0) return std::size_t(from_libc);
#endif
        return kFallbackCoreCacheBytes;
    }();
    return detected;
}

void set_core_cache_bytes(std::size_t bytes) {
    chosen_core_cache_bytes.store(bytes, std::memory_order_relaxed);
}

std::size_t core_cache_bytes() {
    const std::size_t chosen = chosen_core_cache_bytes.load(std::memory_order_relaxed);
    return chosen > 0 ? chosen : detected_core_cache_bytes();
}

namespace {

// NORMLAB_LAST_LEVEL_CACHE as it was at first use: empty where it is unset.
const std::string& cache_setting_from_environment() {
    static const std::string setting = [] {
        const char* text = std::getenv(kCacheSizeVariable);
        return std::string(text ? text : "");
    }();
    return setting;
}

// What NORMLAB_LAST_LEVEL_CACHE sets, found once: 0 where it is unset or empty, the probe's plan
// (up to the detected size) where it is `measure`.
std::size_t cache_bytes_from_environment() {
    static const std::size_t from_environment = [] {
        const std::string& text = cache_setting_from_environment();
        return text.empty() ? std::size_t{0} : cache_plan_setting(text);
    }();
    return from_environment;
}

std::atomic<std::size_t> chosen_cache_bytes{0};

}  // namespace

std::size_t cache_size_setting(std::string_view text) {
    const std::string value(text);
    const std::size_t bytes = parse_cache_size(value);
    if (bytes == 0)
        throw OptionError(std::string(kCacheSizeVariable) +
                          ": expected a cache size above zero in bytes, or with a unit K, M or G "
                          "(such as 32M or 32768K), or 'measure'; got '" +
                          value + "'");
    return bytes;
}

std::size_t cache_plan_setting(std::string_view text) {
    if (text == kMeasureCache) return probe_cache(detected_last_level_cache_bytes()).plan_bytes;
    return cache_size_setting(text);
}

std::size_t usable_cache_bytes(std::size_t from_libc, std::size_t from_sysfs) {
    if (from_libc > 0 && from_sysfs > 0) return std::min(from_libc, from_sysfs);
    if (from_libc > 0) return from_libc;
    return from_sysfs > 0 ? from_sysfs : kFallbackCacheBytes;
}

void set_last_level_cache_bytes(std::size_t bytes) {
    chosen_cache_bytes.store(bytes, std::memory_order_relaxed);
}

std::size_t last_level_cache_bytes() {
    const std::size_t chosen = chosen_cache_bytes.load(std::memory_order_relaxed);
    if (chosen > 0) return chosen;
    const std::size_t from_environment = cache_bytes_from_environment();
    return from_environment > 0 ? from_environment : detected_last_level_cache_bytes();
}

std::string_view last_level_cache_source() {
    if (chosen_cache_bytes.load(std::memory_order_relaxed) > 0) return "set_last_level_cache_bytes";
    if (cache_bytes_from_environment() == 0) return "detected";
    return cache_setting_from_environment() == kMeasureCache ? "NORMLAB_LAST_LEVEL_CACHE=measure"
                                                             : kCacheSizeVariable;
}

bool streams_output(std::size_t bytes) {
    return bytes >= last_level_cache_bytes() / 2;
}

std::string blas_core_name() {
    if (openblas_get_corename == nullptr) return "";
    const char* name = openblas_get_corename();
    return name ? std::string(name) : std::string();
}

CpuVectorFeatures host_vector_features() {
    CpuVectorFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx = __builtin_cpu_supports("avx");
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512dq = __builtin_cpu_supports("avx512dq");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
#endif
    return f;
}

std::string fitting_blas_coretype(std::string_view detected_core, const CpuVectorFeatures& cpu) {
    std::string core(detected_core);
    std::transform(core.begin(), core.end(), core.begin(),
                   [](unsigned char c) { return char(std::tolower(c)); });
    if (core != "prescott") return "";
    if (cpu.avx512f && cpu.avx512bw && cpu.avx512dq && cpu.avx512vl) return "SkylakeX";
    if (cpu.avx2 && cpu.fma) return "Haswell";
    if (cpu.avx) return "Sandybridge";
    return "";
}

std::string fitting_blas_coretype() {
    if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return "";
    return fitting_blas_coretype(blas_core_name(), host_vector_features());
}

bool openmp_spins_long(const char* wait_policy, const char* spin_count) {
    if (spin_count != nullptr) return false;
    if (wait_policy == nullptr) return true;
    std::string policy(wait_policy);
    std::transform(policy.begin(), policy.end(), policy.begin(),
                   [](unsigned char c) { return char(std::tolower(c)); });
    return policy != "passive";
}

bool openmp_spins_long() {
    return openmp_spins_long(std::getenv("OMP_WAIT_POLICY"), std::getenv("GOMP_SPINCOUNT"));
}

bool set_blas_threads(int threads) {
    if (openblas_set_num_threads == nullptr) return false;
    openblas_set_num_threads(threads);
    return true;
}

}  // namespace normlab
