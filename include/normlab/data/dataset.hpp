#pragma once
// Classification data: Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX files,
// gzip), an in-process synthetic set, and seeded shuffling mini-batches.

#include <cstdint>
#include <string>
#include <vector>

#include "normlab/tensor.hpp"

namespace normlab::data {

struct Dataset {
    Array<float> images;  // (N, features), standardized
    std::vector<int> labels;
    std::size_t classes = 10;
    // Sequence data: the valid steps of each example (the rest is padding). Empty: every
    // example is full length. Recurrent workloads read them through BatchIterator::next.
    std::vector<std::size_t> lengths;
    std::size_t size() const { return labels.size(); }
    // The examples [first, first + count), copied.
    Dataset slice(std::size_t first, std::size_t count) const;
};

struct Split {
    Dataset train;
    Dataset test;
};

// IDX files, gzip-compressed or not. Throws IoError naming the file when it cannot be read, has
// the wrong magic number, or holds fewer bytes than its header announces.
Array<float> read_idx_images(const std::string& path);  // (N, rows·cols) in [0, 1]
std::vector<int> read_idx_labels(const std::string& path);

// <dir>/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, standardized with the training set's
// pixel mean and standard deviation (the test set uses the same constants).
Split load_fashion_mnist(const std::string& dir = "/usr/share/datasets/fashion-mnist");

// Ten classes of 784 features, deterministic for a seed: each class is a random smooth 28×28
// pattern, each example its class's pattern plus independent noise. Learnable, not trivial.
Split make_synthetic(std::size_t train, std::size_t test, std::uint64_t seed);

// Rows [begin, end) of shard `index` of `count` when `rows` rows are split evenly: the first
// rows % count shards get one row more. Data-parallel replicas split each global batch so.
struct RowRange {
    std::size_t begin = 0;
    std::size_t end = 0;
    std::size_t size() const { return end - begin; }
};
RowRange shard_rows(std::size_t rows, std::size_t index, std::size_t count);

// Mini-batches in an order shuffled by (seed, epoch): the same sequence whatever the model.
// The last partial batch is kept unless drop_last.
class BatchIterator {
  public:
    BatchIterator(const Dataset& data, std::size_t batch_size, std::uint64_t seed,
                  std::size_t epoch, bool drop_last = false, bool shuffle = true);
    // From now on next() fills only shard `index` of `count` of every batch (shard_rows), so
    // that replicas with the same seed read disjoint parts of the same global batches. A last
    // batch with fewer examples than shards ends the iteration: every shard gets at least one.
    void shard(std::size_t index, std::size_t count);
    // Fills x with (b, example_shape...) and y with b labels, and *lengths (when given) with
    // the batch's sequence lengths (empty when the data set has none); false when the epoch is
    // done.
    bool next(Array<float>& x, std::vector<int>& y, const Shape& example_shape,
              std::vector<std::size_t>* lengths = nullptr);
    std::size_t batches() const;
    // The examples of the last batch next() produced, over all shards.
    std::size_t batch_rows() const { return batch_rows_; }

  private:
    const Dataset& data_;
    std::size_t batch_size_;
    bool drop_last_;
    std::size_t shard_index_ = 0, shard_count_ = 1;
    std::size_t batch_rows_ = 0;
    std::vector<std::size_t> order_;
    std::size_t position_ = 0;
};

}  // namespace normlab::data
