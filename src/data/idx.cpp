#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "normlab/data/dataset.hpp"
#include "normlab/errors.hpp"

namespace normlab::data {
namespace {

// The whole (decompressed) file; zlib reads plain files transparently.
std::string read_gz(const std::string& path) {
    gzFile f = gzopen(path.c_str(), "rb");
    if (!f) throw IoError("'" + path + "': cannot open for reading");
    std::string out;
    char buf[1 << 16];
    int got = 0;
    while ((got = gzread(f, buf, sizeof buf)) > 0)
        out.append(buf, std::size_t(got));
    int err = Z_OK;
    const char* message = gzerror(f, &err);
    const std::string why = message ? message : "";
    gzclose(f);
    if (got < 0 || (err != Z_OK && err != Z_STREAM_END))
        throw IoError("'" + path + "': corrupt or truncated gzip data (" + why + ")");
    return out;
}

std::uint32_t big_endian(const std::string& bytes, std::size_t at) {
    return std::uint32_t(std::uint8_t(bytes[at])) << 24 |
           std::uint32_t(std::uint8_t(bytes[at + 1])) << 16 |
           std::uint32_t(std::uint8_t(bytes[at + 2])) << 8 |
           std::uint32_t(std::uint8_t(bytes[at + 3]));
}

// Checks the magic number and the size the header announces; returns the dimensions.
std::vector<std::size_t> idx_dims(const std::string& bytes, const std::string& path,
                                  std::uint32_t magic, std::size_t rank) {
    const std::size_t header = 4 + 4 * rank;
    if (bytes.size() < header)
        throw IoError("'" + path + "': truncated IDX file (" + std::to_string(bytes.size()) +
                      " bytes, the header alone needs " + std::to_string(header) + ")");
    if (big_endian(bytes, 0) != magic) {
        char got[16], want[16];
        std::snprintf(got, sizeof got, "0x%08x", big_endian(bytes, 0));
        std::snprintf(want, sizeof want, "0x%08x", magic);
        throw IoError("'" + path + "': expected IDX magic number " + want + ", got " + got);
    }
    std::vector<std::size_t> dims;
    std::size_t total = 1;
    for (std::size_t i = 0; i < rank; ++i) {
        dims.push_back(big_endian(bytes, 4 + 4 * i));
        total *= dims.back();
    }
    if (bytes.size() != header + total)
        throw IoError("'" + path + "': the header announces " + std::to_string(total) +
                      " values, the file holds " + std::to_string(bytes.size() - header) +
                      (bytes.size() < header + total ? " (truncated)" : " (trailing data)"));
    return dims;
}

}  // namespace

Array<float> read_idx_images(const std::string& path) {
    const std::string bytes = read_gz(path);
    const auto dims = idx_dims(bytes, path, 0x00000803, 3);
    Array<float> out = Array<float>::from_shape({dims[0], dims[1] * dims[2]});
    for (std::size_t i = 0; i < out.size(); ++i)
        out.data()[i] = float(std::uint8_t(bytes[16 + i])) / 255.0f;
    return out;
}

std::vector<int> read_idx_labels(const std::string& path) {
    const std::string bytes = read_gz(path);
    const auto dims = idx_dims(bytes, path, 0x00000801, 1);
    std::vector<int> out(dims[0]);
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = int(std::uint8_t(bytes[8 + i]));
    return out;
}

Split load_fashion_mnist(const std::string& dir) {
    Split s;
    s.train.images = read_idx_images(dir + "/train-images-idx3-ubyte.gz");
    s.train.labels = read_idx_labels(dir + "/train-labels-idx1-ubyte.gz");
    s.test.images = read_idx_images(dir + "/t10k-images-idx3-ubyte.gz");
    s.test.labels = read_idx_labels(dir + "/t10k-labels-idx1-ubyte.gz");
    for (const Dataset* d : {&s.train, &s.test})
        if (d->images.shape()[0] != d->labels.size())
            throw IoError("'" + dir + "': " + std::to_string(d->images.shape()[0]) +
                          " images but " + std::to_string(d->labels.size()) + " labels");
    double sum = 0, sq = 0;
    for (float v : s.train.images)
        sum += v;
    const double mean = sum / double(s.train.images.size());
    for (float v : s.train.images)
        sq += (v - mean) * (v - mean);
    const double stddev = std::sqrt(sq / double(s.train.images.size()));
    for (Dataset* d : {&s.train, &s.test})
        for (auto& v : d->images)
            v = float((v - mean) / stddev);
    return s;
}

Split make_synthetic(std::size_t train, std::size_t test, std::uint64_t seed) {
    std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ULL + 7);
    std::normal_distribution<double> normal(0.0, 1.0);
    // Smooth class patterns: a few random Gaussian blobs on the 28×28 grid.
    std::vector<std::vector<double>> patterns(10, std::vector<double>(784, 0.0));
    std::uniform_real_distribution<double> where(4.0, 24.0);
    for (auto& p : patterns)
        for (int blob = 0; blob < 4; ++blob) {
            const double cy = where(rng), cx = where(rng), sign = normal(rng);
            for (int y = 0; y < 28; ++y)
                for (int x = 0; x < 28; ++x)
                    p[std::size_t(y * 28 + x)] +=
                        sign * std::exp(-((y - cy) * (y - cy) + (x - cx) * (x - cx)) / 18.0);
        }
    auto make = [&](std::size_t n) {
        Dataset d;
        d.images = Array<float>::from_shape({n, 784});
        d.labels.resize(n);
        for (std::size_t i = 0; i < n; ++i) {
            const int c = int(rng() % 10);
            d.labels[i] = c;
            for (std::size_t j = 0; j < 784; ++j)
                d.images(i, j) = float(0.6 * patterns[std::size_t(c)][j] + normal(rng));
        }
        return d;
    };
    return {make(train), make(test)};
}

Dataset Dataset::slice(std::size_t first, std::size_t count) const {
    if (first + count > size())
        throw ShapeError("dataset: asked for examples [" + std::to_string(first) + ", " +
                         std::to_string(first + count) + ") of " + std::to_string(size()));
    Dataset d;
    const std::size_t features = images.shape()[1];
    d.images = Array<float>::from_shape({count, features});
    std::copy(images.data() + first * features, images.data() + (first + count) * features,
              d.images.data());
    d.labels.assign(labels.begin() + std::ptrdiff_t(first),
                    labels.begin() + std::ptrdiff_t(first + count));
    if (!lengths.empty())
        d.lengths.assign(lengths.begin() + std::ptrdiff_t(first),
                         lengths.begin() + std::ptrdiff_t(first + count));
    d.classes = classes;
    return d;
}

BatchIterator::BatchIterator(const Dataset& data, std::size_t batch_size, std::uint64_t seed,
                             std::size_t epoch, bool drop_last, bool shuffle)
    : data_(data), batch_size_(batch_size), drop_last_(drop_last), order_(data.size()) {
    if (batch_size == 0) throw OptionError("batches: the batch size must be at least 1, got 0");
    if (!data.lengths.empty() && data.lengths.size() != data.size())
        throw ShapeError("batches: the data set has " + std::to_string(data.size()) +
                         " examples but " + std::to_string(data.lengths.size()) +
                         " sequence lengths");
    for (std::size_t i = 0; i < order_.size(); ++i)
        order_[i] = i;
    if (shuffle) {
        std::mt19937_64 rng(seed * 1000003ULL + epoch * 7919ULL + 1);
        for (std::size_t i = order_.size(); i > 1; --i)
            std::swap(order_[i - 1], order_[std::size_t(rng() % i)]);
    }
}

RowRange shard_rows(std::size_t rows, std::size_t index, std::size_t count) {
    if (count == 0 || index >= count)
        throw ShapeError("shard_rows: expected 0 <= shard < shards, got shard " +
                         std::to_string(index) + " of " + std::to_string(count));
    const std::size_t base = rows / count, extra = rows % count;
    const std::size_t begin = index * base + std::min(index, extra);
    return {begin, begin + base + (index < extra ? 1 : 0)};
}

void BatchIterator::shard(std::size_t index, std::size_t count) {
    shard_rows(batch_size_, index, count);  // checks the arguments
    if (count > batch_size_)
        throw OptionError("batches: " + std::to_string(count) + " shards of batches of " +
                          std::to_string(batch_size_) + " would leave some shards empty");
    shard_index_ = index;
    shard_count_ = count;
}

std::size_t BatchIterator::batches() const {
    const std::size_t full = order_.size() / batch_size_, rest = order_.size() % batch_size_;
    return full + (!drop_last_ && rest >= shard_count_ && rest > 0 ? 1 : 0);
}

bool BatchIterator::next(Array<float>& x, std::vector<int>& y, const Shape& example_shape,
                         std::vector<std::size_t>* lengths) {
    const std::size_t left = order_.size() - position_;
    if (left == 0 || (drop_last_ && left < batch_size_) || left < shard_count_) return false;
    const std::size_t global = std::min(batch_size_, left);
    const RowRange rows = shard_rows(global, shard_index_, shard_count_);
    const std::size_t b = rows.size(), first = position_ + rows.begin;
    const std::size_t features = data_.images.shape()[1];
    Shape shape{b};
    shape.insert(shape.end(), example_shape.begin(), example_shape.end());
    x = Array<float>::from_shape(shape);
    y.resize(b);
    if (lengths) {
        lengths->clear();
        if (!data_.lengths.empty())
            for (std::size_t i = 0; i < b; ++i)
                lengths->push_back(data_.lengths[order_[first + i]]);
    }
    for (std::size_t i = 0; i < b; ++i) {
        const std::size_t idx = order_[first + i];
        std::memcpy(x.data() + i * features, data_.images.data() + idx * features,
                    features * sizeof(float));
        y[i] = data_.labels[idx];
    }
    position_ += global;
    batch_rows_ = global;
    return true;
}

}  // namespace normlab::data
