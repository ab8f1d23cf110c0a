// The IDX reader (Fashion-MNIST's format), the synthetic set and the mini-batch iterator.
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <gtest/gtest.h>

#include "normlab/data/dataset.hpp"
#include "normlab/errors.hpp"
#include "scratch_path.hpp"

namespace normlab {
namespace {

std::string big_endian(std::uint32_t v) {
    return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

void write_gz(const std::string& path, const std::string& bytes) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
    gzclose(f);
}

std::string image_file(std::uint32_t count, std::uint32_t rows, std::uint32_t cols) {
    std::string b =
        big_endian(0x00000803) + big_endian(count) + big_endian(rows) + big_endian(cols);
    for (std::uint32_t i = 0; i < count * rows * cols; ++i)
        b.push_back(char(i % 256));
    return b;
}

template <class F>
std::string io_error(F&& f) {
    try {
        f();
    } catch (const IoError& e) {
        return e.what();
    }
    return "no error";
}

TEST(Idx, ReadsImagesAndLabels) {
    const auto images = testing::scratch_path("normlab_idx_", "images.gz");
    write_gz(images, image_file(3, 2, 2));
    const auto x = data::read_idx_images(images);
    ASSERT_EQ(shape_of(x), (Shape{3, 4}));
    EXPECT_FLOAT_EQ(x(2, 3), 11.0f / 255.0f);
    const auto labels = testing::scratch_path("normlab_idx_", "labels.gz");
    write_gz(labels, big_endian(0x00000801) + big_endian(4) + std::string{0, 9, 3, 1});
    EXPECT_EQ(data::read_idx_labels(labels), (std::vector<int>{0, 9, 3, 1}));
    // Uncompressed files are read too.
    const auto plain = testing::scratch_path("normlab_idx_", "labels");
    std::ofstream(plain, std::ios::binary)
        << big_endian(0x00000801) + big_endian(2) + std::string{5, 6};
    EXPECT_EQ(data::read_idx_labels(plain), (std::vector<int>{5, 6}));
}

TEST(Idx, RefusesDamagedFiles) {
    const auto path = testing::scratch_path("normlab_idx_", "bad.gz");
    write_gz(path, image_file(3, 2, 2).substr(0, 20));
    EXPECT_NE(io_error([&] { data::read_idx_images(path); }).find("truncated"), std::string::npos);
    write_gz(path, image_file(3, 2, 2) + "xx");
    EXPECT_NE(io_error([&] { data::read_idx_images(path); }).find("trailing"), std::string::npos);
    write_gz(path, image_file(3, 2, 2));
    EXPECT_NE(io_error([&] { data::read_idx_labels(path); }).find("magic"), std::string::npos);
    write_gz(path, "ab");
    EXPECT_NE(io_error([&] { data::read_idx_images(path); }).find("header"), std::string::npos);
    EXPECT_NE(io_error([&] { data::read_idx_images(path + ".missing"); }).find("cannot open"),
              std::string::npos);
    // A gzip stream cut in the middle.
    write_gz(path, image_file(40, 28, 28));
    const auto size = std::filesystem::file_size(path);
    std::filesystem::resize_file(path, size / 2);
    EXPECT_NE(io_error([&] { data::read_idx_images(path); }), "no error");
}

// Debian's dataset-fashion-mnist, installed by scripts/setup.sh.
TEST(Idx, FashionMnistFromTheDebianPackage) {
    const std::string dir = "/usr/share/datasets/fashion-mnist";
    ASSERT_TRUE(std::filesystem::exists(dir)) << dir << " is missing: run scripts/setup.sh";
    const auto split = data::load_fashion_mnist(dir);
    ASSERT_EQ(shape_of(split.train.images), (Shape{60000, 784}));
    ASSERT_EQ(shape_of(split.test.images), (Shape{10000, 784}));
    std::vector<std::size_t> per_class(10, 0);
    for (int label : split.train.labels)
        ++per_class.at(std::size_t(label));
    for (auto count : per_class)
        EXPECT_EQ(count, 6000u);  // the set is balanced
    double sum = 0, sum_sq = 0;
    for (float v : split.train.images) {
        sum += v;
        sum_sq += double(v) * v;
    }
    const double n = double(split.train.images.size()), mean = sum / n;
    EXPECT_NEAR(mean, 0.0, 1e-4);
    EXPECT_NEAR(std::sqrt(sum_sq / n - mean * mean), 1.0, 1e-4);
    EXPECT_THROW(data::load_fashion_mnist("/nonexistent"), IoError);
}

TEST(Synthetic, DeterministicBalancedAndNotTrivial) {
    const auto a = data::make_synthetic(200, 100, 5), b = data::make_synthetic(200, 100, 5);
    EXPECT_EQ(a.train.images, b.train.images);
    EXPECT_EQ(a.test.labels, b.test.labels);
    const auto c = data::make_synthetic(200, 100, 6);
    EXPECT_NE(a.train.images, c.train.images);
    EXPECT_EQ(std::set<int>(a.train.labels.begin(), a.train.labels.end()).size(), 10u);
    EXPECT_EQ(shape_of(a.train.images), (Shape{200, 784}));
}

TEST(BatchIterator, EveryExampleOncePerEpochInASeededOrder) {
    const auto split = data::make_synthetic(103, 10, 1);
    auto order_of = [&](std::size_t batch, std::uint64_t seed, std::size_t epoch, bool drop) {
        data::BatchIterator it(split.train, batch, seed, epoch, drop);
        Array<float> x;
        std::vector<int> y;
        std::vector<float> firsts;
        std::vector<std::size_t> sizes;
        while (it.next(x, y, {784})) {
            sizes.push_back(y.size());
            for (std::size_t i = 0; i < y.size(); ++i)
                firsts.push_back(x(i, 0));
        }
        return std::make_pair(firsts, sizes);
    };
    const auto [keep, keep_sizes] = order_of(10, 3, 0, false);
    EXPECT_EQ(keep.size(), 103u);
    EXPECT_EQ(keep_sizes.size(), 11u);
    EXPECT_EQ(keep_sizes.back(), 3u);
    EXPECT_EQ(std::set<float>(keep.begin(), keep.end()).size(), 103u);
    const auto [drop, drop_sizes] = order_of(10, 3, 0, true);
    EXPECT_EQ(drop_sizes, std::vector<std::size_t>(10, 10));
    EXPECT_EQ(order_of(10, 3, 0, false).first, keep);  // same seed, same epoch: same order
    EXPECT_NE(order_of(10, 3, 1, false).first, keep);  // a new order every epoch
    EXPECT_NE(order_of(10, 4, 0, false).first, keep);
    EXPECT_EQ(order_of(1, 3, 0, false).second.size(), 103u);  // batch size 1 works
    EXPECT_THROW(data::BatchIterator(split.train, 0, 1, 0), OptionError);
}

}  // namespace
}  // namespace normlab
