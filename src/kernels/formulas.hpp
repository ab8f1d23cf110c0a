#pragma once
// The two elementwise formulas of the statistics kernel, for one value or a vector of values.
// Every stage that forms x̂ or dx uses them, and so does a layer that applies the kernel's
// coefficients in a pass of its own (Batch-Layer Norm's two branches), so that all give the
// same bits.

namespace normlab::kernels {

// x̂ = (x − m)·sc: the one formula of every stage, whether forward stores x̂ or backward forms
// it again from the input, so both give the same bits. (An offset, Batch Renormalization's d,
// is added only where it is not 0; x̂ with an offset is always stored.)
template <class V>
__attribute__((always_inline)) inline V standardized(V x, V m, V sc) {
    return (x - m) * sc;
}

// dx = cg·(g·dy − c1 − cx·x̂): the one formula of every apply stage, whether x̂ is stored or
// formed again from the input, run by run or down columns, so they all give the same bits. The
// bracket is formed before the scaling, so that a set of one value (g·dy = c1, x̂ = 0) gets
// exactly 0 however large cg = 1/σ is. Without x̂ (no cx term) the second form.
template <class V>
__attribute__((always_inline)) inline V applied(V cg, V g, V dy, V c1, V cx, V h) {
    return cg * (g * dy - c1 - cx * h);
}

template <class V>
__attribute__((always_inline)) inline V applied(V cg, V g, V dy, V c1) {
    return cg * (g * dy - c1);
}

}  // namespace normlab::kernels
