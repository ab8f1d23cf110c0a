#pragma once
// Saving and restoring a normalizer: its spec, parameters, buffers and counters as members of a
// NumPy .npz archive. The format is documented in docs/state-files.md; round trips are
// bit-exact, and a file that does not match the layer is refused before anything is changed.

#include <memory>
#include <string>

#include "normlab/normalizer.hpp"
#include "normlab/npz.hpp"

namespace normlab {

// Members "<prefix>__spec__" (uint8 text), "<prefix>num_features" (int64), "<prefix><name>" for
// every parameter and buffer (the layer's dtype) and counter (int64, shape ()).
template <class T>
void write_state(BasicNormalizer<T>& norm, NpzArchive& archive, const std::string& prefix = "");

// Checks the spec, every shape and dtype first, then assigns everything; on any mismatch throws
// StateError or IoError and leaves the layer as it was.
template <class T>
void read_state(BasicNormalizer<T>& norm, const NpzArchive& archive,
                const std::string& prefix = "");

template <class T>
void save_state(BasicNormalizer<T>& norm, const std::string& path);

template <class T>
void load_state(BasicNormalizer<T>& norm, const std::string& path);

// Builds the layer recorded in the file and restores its state.
template <class T = float>
std::unique_ptr<BasicNormalizer<T>> load_normalizer(const std::string& path);

}  // namespace normlab
