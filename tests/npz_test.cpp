// The .npz reader and writer: archives written by numpy (stored and deflated) load; ours round
// trip bit-exactly; truncated, corrupt or missing files are refused with the file named.
#include <fstream>

#include <gtest/gtest.h>

#include "scratch_path.hpp"

#include "normlab/npz.hpp"

namespace normlab {
namespace {

const std::string kData = NORMLAB_TEST_DATA_DIR;

std::string scratch(const std::string& name) {
    return testing::scratch_path("normlab_npz_", name);
}

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

TEST(Npz, ReadsArchivesWrittenByNumpy) {
    for (const char* file : {"/numpy_stored.npz", "/numpy_compressed.npz"}) {
        const auto a = NpzArchive::load(kData + file);
        const Array<float> floats = a.get<float>("floats");
        ASSERT_EQ(shape_of(floats), (Shape{2, 3}));
        for (std::size_t i = 0; i < 6; ++i)
            EXPECT_EQ(floats.data()[i], float(i) / 7.0f) << file;
        const Array<double> doubles = a.get<double>("doubles");
        ASSERT_EQ(doubles.size(), 5u);
        EXPECT_EQ(doubles(0), -1.0);
        EXPECT_EQ(doubles(2), 0.0);
        EXPECT_EQ(a.get<std::int64_t>("count")(), 42);
    }
}

TEST(Npz, RoundTripIsBitExact) {
    NpzArchive a;
    Array<float> f = {{1.0f / 3, -0.0f, 1e-38f}, {3.4e38f, 7.0f, -2.5f}};
    Array<double> d = {1.0 / 3, 1e-300};
    a.put("f", f);
    a.put("d", d);
    a.put("n", Array<std::int64_t>(std::int64_t(-5)));
    const std::string path = scratch("roundtrip.npz");
    a.save(path);
    const auto b = NpzArchive::load(path);
    EXPECT_EQ(std::memcmp(b.get<float>("f").data(), f.data(), sizeof(float) * 6), 0);
    EXPECT_EQ(b.get<double>("d"), d);
    EXPECT_EQ(b.get<std::int64_t>("n")(), -5);
    EXPECT_EQ(b.names(), (std::vector<std::string>{"d", "f", "n"}));
}

TEST(Npz, TruncatedFilesAreRefusedWithTheFileNamed) {
    const std::string full = read_bytes(kData + "/numpy_stored.npz");
    const std::string path = scratch("truncated.npz");
    for (std::size_t keep : {std::size_t(0), std::size_t(10), full.size() / 2, full.size() - 1}) {
        write_bytes(path, full.substr(0, keep));
        try {
            NpzArchive::load(path);
            FAIL() << "a file cut to " << keep << " bytes was accepted";
        } catch (const IoError& e) {
            EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
        }
    }
}

TEST(Npz, CorruptDataFailsTheChecksum) {
    std::string bytes = read_bytes(kData + "/numpy_stored.npz");
    bytes[200] = char(bytes[200] ^ 0x5a);
    const std::string path = scratch("corrupt.npz");
    write_bytes(path, bytes);
    EXPECT_THROW(NpzArchive::load(path), IoError);
}

TEST(Npz, MissingFileMemberOrWrongTypeIsAnIoError) {
    EXPECT_THROW(NpzArchive::load(scratch("does_not_exist.npz")), IoError);
    const auto a = NpzArchive::load(kData + "/numpy_stored.npz");
    try {
        a.get<float>("nope");
        FAIL();
    } catch (const IoError& e) {
        EXPECT_NE(std::string(e.what()).find("expected a member named 'nope', found: count, "
                                             "doubles, floats"),
                  std::string::npos)
            << e.what();
    }
    EXPECT_THROW(a.get<float>("doubles"), IoError);
}

}  // namespace
}  // namespace normlab
