#pragma once
// The float vector width of the kernels' hottest loops.

// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64, and the loader picks the
// machine's, so that portable binaries vectorize at the machine's width.
#define NORMLAB_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace normlab::kernels {

// Whether the kernels' sums (rows::paired_sums: every sum over a run) take floats sixteen to a
// vector: on machines with AVX-512 (detected at start-up), where the avx512f clone holds each
// vector in one register and does half the instructions of two vectors of eight. Elsewhere
// eight: the other clones would split a vector of sixteen, and GCC spills such vectors through
// memory on AVX2 (each clone has both loops and takes one by this flag, once per run).
// Value i goes to lane i % 16 at either width, so results are the same bits; tests switch the
// width to compare them (safe on any x86-64: the loops for sixteen have clones for every ISA).
extern bool wide_vector_width;
inline bool wide_vectors() {
    return wide_vector_width;
}
void set_wide_vectors(bool wide);

// Whether the machine has AVX-512 (what rows::stream_line needs), which tests do not switch.
extern const bool host_has_avx512;

}  // namespace normlab::kernels
