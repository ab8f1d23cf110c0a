#pragma once
// Process-wide settings that matter for speed but are the program's choice, not the library's.

#include <cstddef>
#include <string>
#include <string_view>

namespace normlab {

// Asks glibc's malloc to keep freed memory for reuse instead of handing large blocks back to the
// kernel. Every training step allocates its outputs afresh; without this, each large tensor is
// mmapped and page-faulted in again on every step (on some virtual machines that costs more than
// the normalization itself). Trades a higher resident set for speed; call once at start-up.
// Returns false where the C library does not support it.
bool reuse_freed_memory();

// Sets the number of threads of the BLAS library behind Linear and Conv2d (OpenBLAS keeps its
// own pool, apart from OpenMP's). Programs that run several models side by side, one per core,
// need 1: a BLAS pool per run that spins while waiting oversubscribes the cores and slows every
// run by orders of magnitude. Returns false when the BLAS library offers no such control.
bool set_blas_threads(int threads);

// Whether OpenMP's idle threads wait by spinning for long after each parallel region: GCC's
// libgomp does, some 300,000 rounds (milliseconds), unless OMP_WAIT_POLICY=passive or
// GOMP_SPINCOUNT says otherwise, both read when the program starts. A model whose layers
// alternate normlab's kernels (OpenMP threads) with OpenBLAS's GEMMs (its own threads) on the
// same cores then runs each GEMM beside threads that still spin: on a 2-vCPU AMD EPYC VM,
// training_bench's CNN took 3.0-4.8 s an epoch of 6000 examples with libgomp's default and
// 1.7-2.2 s with GOMP_SPINCOUNT=1000 (OMP_WAIT_POLICY=passive: 1.8-2.5 s, but 2-3.5x the time of
// normlab's kernels on (256, 1024), whose threads then sleep between calls; OPENBLAS_NUM_THREADS=1:
// 2.2-2.5 s), while the MLP and LSTM, whose tensors are small enough for one thread, did not
// change. The form taking the two variables' values (null: unset) is the rule; the other reads
// this process's environment.
bool openmp_spins_long(const char* wait_policy, const char* spin_count);
bool openmp_spins_long();

// The kernel set the BLAS library behind Linear and Conv2d chose for this CPU: OpenBLAS's core
// name ("Haswell", "SkylakeX", ...), or "" when the BLAS is not OpenBLAS.
std::string blas_core_name();

// What a program can do when OpenBLAS runs kernels below what the CPU offers. OpenBLAS up to
// 0.3.24 (Debian 12 ships 0.3.21) falls back to its SSE3 "Prescott" kernels on Intel CPUs whose
// model number it does not know, as virtual machines often report; its environment variable
// OPENBLAS_CORETYPE, read when the library loads (so it must be set before the program starts),
// picks the kernels instead. Given the detected core name and the CPU's instruction set, the
// value that gives the CPU the widest kernels it supports ("SkylakeX" with AVX-512 F, BW, DQ and
// VL; "Haswell" with AVX2 and FMA; "Sandybridge" with AVX), or "" when the detected core is not
// that fallback or nothing better fits. On a 2-vCPU Intel Xeon VM (AVX-512) that OpenBLAS 0.3.21
// took for a Prescott, its SkylakeX kernels trained training_bench's MLP and CNN 1.5-1.7x and its
// LSTM 1.3-1.5x as fast, and ran the stress test's quick preset in 74 s instead of 113.
struct CpuVectorFeatures {
    bool avx = false, avx2 = false, fma = false;
    bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
};
CpuVectorFeatures host_vector_features();
std::string fitting_blas_coretype(std::string_view detected_core, const CpuVectorFeatures& cpu);
// The same for this process: OpenBLAS's detected core and this CPU ("" also where
// OPENBLAS_CORETYPE is already set: the choice was made).
std::string fitting_blas_coretype();

// The size of the last-level cache the kernels plan their passes for: outputs of tensors from
// half of it on are written with streaming stores, since they would be evicted before anyone
// reads them, and tensors under a quarter of it (at most 8 MiB) are taken to stay in the cache
// from one call to the next, where another order of work is faster. Detected on first use from
// the C library (sysconf) and /sys (usable_cache_bytes): 32 MiB on the AMD EPYC machines the
// kernels were first tuned on; 260 MiB on an Intel Xeon whose L3 ran a 77 MB working set at
// twice the bandwidth of its memory, where 25.7 MB outputs kept in the L3 reach the layer that
// reads them next at that speed. A program that shares the cache with others can plan for its
// share, and so can the user of any program: the environment variable NORMLAB_LAST_LEVEL_CACHE
// (a size such as 32M, read on first use) takes the place of the detected size. A virtual
// machine reports the L3 of the host's socket, which it shares with other guests: on a 2-vCPU
// Intel Xeon VM that reported 105 MiB, a triad kept its speed in cache up to working sets of
// 24-32 MiB and from 48 MiB on ran at the speed of memory. There NORMLAB_LAST_LEVEL_CACHE=measure
// plans for what this machine's cache holds instead: probe_cache (normlab/bandwidth.hpp), run
// once on first use (about a second), finds where streaming stores overtake normal ones, up to
// the detected size (`normlab cache` prints the measurement).
// The choice changes speed only: every path computes the same bits.
void set_last_level_cache_bytes(std::size_t bytes);  // 0: the environment's or detected size
std::size_t last_level_cache_bytes();

// The environment variable above, and how a size in it reads: bytes, or a number with the unit
// K, M or G (powers of 1024). Throws OptionError naming what was expected and what came for
// anything else, zero included (the variable's other value, kMeasureCache, is no size).
inline constexpr const char* kCacheSizeVariable = "NORMLAB_LAST_LEVEL_CACHE";
inline constexpr const char* kMeasureCache = "measure";
std::size_t cache_size_setting(std::string_view text);

// The plan a value of the variable asks for: a size as cache_size_setting reads it, or for
// kMeasureCache the plan of probe_cache (normlab/bandwidth.hpp) up to the detected size, measured
// on each call. Throws OptionError as cache_size_setting does for anything else.
std::size_t cache_plan_setting(std::string_view text);

// The size the kernels plan for without the variable and set_last_level_cache_bytes: what the
// C library and /sys report (usable_cache_bytes).
std::size_t detected_last_level_cache_bytes();

// Where last_level_cache_bytes() takes its size from: "set_last_level_cache_bytes", the
// environment variable's name, "NORMLAB_LAST_LEVEL_CACHE=measure", or "detected" (what the
// benchmarks report beside the size).
std::string_view last_level_cache_source();

// Whether the kernels write an output of this many bytes with streaming stores under the plan
// above: from half of last_level_cache_bytes() on. (Programs that report what the kernels did,
// such as the benchmarks, ask this rather than repeat the rule.)
bool streams_output(std::size_t bytes);

// The cache of one core (its L2) the backward kernels plan for: with trailing dimensions, sets
// whose dy and input fit in it together (per-sample sets of LayerNorm, GroupNorm, InstanceNorm,
// RMSNorm; BatchNorm's channels over the batch where its fused backward runs) are reduced and
// then applied set by set, the apply reading the set again from this cache; larger sets are
// applied a group at a time while the next group is reduced. Detected on first use from /sys
// (level 2 of CPU 0: its size over the CPUs that share it, as hyperthreads running a kernel's
// threads each use their share) or else the C library (sysconf); 1 MiB where neither tells. Like
// the last-level plan, the choice changes speed only: every path computes the same bits.
void set_core_cache_bytes(std::size_t bytes);  // 0: the detected size
std::size_t core_cache_bytes();
std::size_t detected_core_cache_bytes();

// How many CPUs a /sys cpu list names ("0", "0-1", "0,4", "0-3,8-11"); 0 for anything else.
std::size_t cpu_list_count(std::string_view list);

// The last-level cache one core can use, from the C library's size (sysconf, read from cpuid)
// and the kernel's (/sys: the cache CPU 0 shares with its neighbours), 0 where one does not
// tell: the smaller where both do, else the one that does, else 32 MiB. On an AMD EPYC VM
// (2026-12) glibc gave 256 MiB, the L3 of all eight core complexes of the socket, where a core
// uses its complex's 32 MiB (/sys); planned for 256 MiB, BatchNorm inference kept its
// (32, 64, 56, 56) outputs, 25.7 MB, in a cache that could not hold them beside its input.
std::size_t usable_cache_bytes(std::size_t from_libc, std::size_t from_sysfs);

}  // namespace normlab
