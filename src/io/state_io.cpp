#include "normlab/state_io.hpp"

#include <cstdint>
#include <vector>

#include "normlab/registry.hpp"

namespace normlab {
namespace {

std::string text_member(const NpzArchive& archive, const std::string& name) {
    const auto bytes = archive.get<std::uint8_t>(name);
    return std::string(bytes.begin(), bytes.end());
}

}  // namespace

template <class T>
void write_state(BasicNormalizer<T>& norm, NpzArchive& archive, const std::string& prefix) {
    const std::string spec = norm.spec();
    archive.put(
        prefix + "__spec__",
        Array<std::uint8_t>(xt::adapt(std::vector<std::uint8_t>(spec.begin(), spec.end()))));
    archive.put(prefix + "num_features", Array<std::int64_t>(std::int64_t(norm.num_features())));
    for (auto& p : norm.parameters())
        archive.put(prefix + p.name, *p.value);
    for (auto& b : norm.buffers())
        archive.put(prefix + b.name, *b.value);
    for (auto& c : norm.counters())
        archive.put(prefix + c.name, Array<std::int64_t>(*c.value));
}

template <class T>
void read_state(BasicNormalizer<T>& norm, const NpzArchive& archive, const std::string& prefix) {
    const std::string label = norm.name() + "(" + std::to_string(norm.num_features()) + ")";
    const std::string spec = text_member(archive, prefix + "__spec__");
    const auto features = archive.get<std::int64_t>(prefix + "num_features");
    if (spec != norm.spec() || features.size() != 1 ||
        features(0) != std::int64_t(norm.num_features()))
        throw StateError(label + ": expected state of '" + norm.spec() + "' with " +
                         std::to_string(norm.num_features()) + " features, the file holds '" +
                         spec + "' with " +
                         (features.size() == 1 ? std::to_string(features(0)) : "?") + " features");

    // Read and check everything before assigning anything.
    std::vector<std::pair<Array<T>*, Array<T>>> tensors;
    auto stage = [&](const std::string& name, Array<T>* target) {
        Array<T> value = archive.get<T>(prefix + name);
        if (shape_of(value) != shape_of(*target))
            throw StateError(label + ": expected '" + name + "' of shape " +
                             format_shape(shape_of(*target)) + ", the file holds " +
                             format_shape(shape_of(value)));
        tensors.emplace_back(target, std::move(value));
    };
    for (auto& p : norm.parameters())
        stage(p.name, p.value);
    for (auto& b : norm.buffers())
        stage(b.name, b.value);
    std::vector<std::pair<std::int64_t*, std::int64_t>> counts;
    for (auto& c : norm.counters()) {
        const auto value = archive.get<std::int64_t>(prefix + c.name);
        if (value.size() != 1)
            throw StateError(label + ": expected counter '" + c.name + "' to be a scalar, got " +
                             format_shape(shape_of(value)));
        counts.emplace_back(c.value, value(0));
    }
    for (auto& [target, value] : tensors)
        *target = std::move(value);
    for (auto& [target, value] : counts)
        *target = value;
}

template <class T>
void save_state(BasicNormalizer<T>& norm, const std::string& path) {
    NpzArchive archive;
    write_state(norm, archive);
    archive.save(path);
}

template <class T>
void load_state(BasicNormalizer<T>& norm, const std::string& path) {
    read_state(norm, NpzArchive::load(path));
}

template <class T>
std::unique_ptr<BasicNormalizer<T>> load_normalizer(const std::string& path) {
    const NpzArchive archive = NpzArchive::load(path);
    const auto features = archive.get<std::int64_t>("num_features");
    if (features.size() != 1 || features(0) < 1)
        throw IoError("'" + path + "': member 'num_features' must be a positive scalar");
    auto norm = make_normalizer<T>(text_member(archive, "__spec__"), std::size_t(features(0)));
    read_state(*norm, archive);
    return norm;
}

#define NORMLAB_INSTANTIATE_STATE_IO(T)                                                      \
    template void write_state<T>(BasicNormalizer<T>&, NpzArchive&, const std::string&);      \
    template void read_state<T>(BasicNormalizer<T>&, const NpzArchive&, const std::string&); \
    template void save_state<T>(BasicNormalizer<T>&, const std::string&);                    \
    template void load_state<T>(BasicNormalizer<T>&, const std::string&);                    \
    template std::unique_ptr<BasicNormalizer<T>> load_normalizer<T>(const std::string&);

NORMLAB_INSTANTIATE_STATE_IO(float)
NORMLAB_INSTANTIATE_STATE_IO(double)

}  // namespace normlab
