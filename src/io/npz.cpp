#include "normlab/npz.hpp"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>

#include <zlib.h>

namespace normlab {
namespace {

constexpr std::uint32_t kLocalHeader = 0x04034b50;
constexpr std::uint32_t kCentralHeader = 0x02014b50;
constexpr std::uint32_t kEndOfCentral = 0x06054b50;
constexpr std::uint16_t kDosDate1980 = 0x21;  // 1980-01-01: archives are byte-for-byte reproducible

void put16(std::string& out, std::uint16_t v) {
    out.push_back(char(v & 0xff));
    out.push_back(char(v >> 8));
}
void put32(std::string& out, std::uint32_t v) {
    for (int i = 0; i < 4; ++i)
        out.push_back(char((v >> (8 * i)) & 0xff));
}

struct Reader {
    const std::string& data;
    const std::string& path;
    std::uint32_t u16(std::size_t at) const {
        need(at, 2);
        return std::uint32_t(std::uint8_t(data[at])) | std::uint32_t(std::uint8_t(data[at + 1]))
                                                           << 8;
    }
    std::uint32_t u32(std::size_t at) const { return u16(at) | u16(at + 2) << 16; }
    void need(std::size_t at, std::size_t len) const {
        if (at > data.size() || len > data.size() - at)
            throw IoError("'" + path + "': truncated or corrupt npz archive (needs byte " +
                          std::to_string(at + len) + ", file has " + std::to_string(data.size()) +
                          ")");
    }
};

std::uint32_t crc_of(const std::string& bytes) {
    return std::uint32_t(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()),
                               uInt(bytes.size())));
}

std::string inflate_raw(const char* src, std::size_t len, std::size_t expected,
                        const std::string& what) {
    std::string out(expected, '\0');
    z_stream zs{};
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) throw IoError(what + ": zlib initialisation failed");
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(src));
    zs.avail_in = uInt(len);
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = uInt(expected);
    const int rc = inflate(&zs, Z_FINISH);
    const std::size_t produced = expected - zs.avail_out;
    inflateEnd(&zs);
    if (rc != Z_STREAM_END || produced != expected)
        throw IoError(what + ": deflated data is corrupt or truncated");
    return out;
}

}  // namespace

std::vector<std::string> NpzArchive::names() const {
    std::vector<std::string> out;
    for (const auto& kv : members_)
        out.push_back(kv.first);
    return out;
}

const std::string& NpzArchive::raw(const std::string& name) const {
    auto it = members_.find(name);
    if (it == members_.end()) {
        std::string have;
        for (const auto& kv : members_)
            have += (have.empty() ? "" : ", ") + kv.first;
        throw IoError("'" + source_ + "': expected a member named '" + name +
                      "', found: " + (have.empty() ? std::string("none") : have));
    }
    return it->second;
}

void NpzArchive::save(const std::string& path) const {
    std::string body, central;
    for (const auto& [name, bytes] : members_) {
        const std::string file = name + ".npy";
        if (bytes.size() >= std::numeric_limits<std::uint32_t>::max() ||
            body.size() >= std::numeric_limits<std::uint32_t>::max())
            throw IoError("'" + path + "': member '" + name + "' is too large for a non-zip64 npz");
        const std::uint32_t crc = crc_of(bytes);
        const auto offset = std::uint32_t(body.size());
        const auto size = std::uint32_t(bytes.size());
        put32(body, kLocalHeader);
        put16(body, 20);  // version needed
        put16(body, 0);   // flags
        put16(body, 0);   // stored
        put16(body, 0);
        put16(body, kDosDate1980);
        put32(body, crc);
        put32(body, size);
        put32(body, size);
        put16(body, std::uint16_t(file.size()));
        put16(body, 0);
        body += file;
        body += bytes;

        put32(central, kCentralHeader);
        put16(central, 20);  // made by
        put16(central, 20);  // needed
        put16(central, 0);
        put16(central, 0);
        put16(central, 0);
        put16(central, kDosDate1980);
        put32(central, crc);
        put32(central, size);
        put32(central, size);
        put16(central, std::uint16_t(file.size()));
        put16(central, 0);  // extra
        put16(central, 0);  // comment
        put16(central, 0);  // disk
        put16(central, 0);  // internal attributes
        put32(central, 0);  // external attributes
        put32(central, offset);
        central += file;
    }
    std::string end;
    put32(end, kEndOfCentral);
    put16(end, 0);
    put16(end, 0);
    put16(end, std::uint16_t(members_.size()));
    put16(end, std::uint16_t(members_.size()));
    put32(end, std::uint32_t(central.size()));
    put32(end, std::uint32_t(body.size()));
    put16(end, 0);

    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw IoError("'" + path + "': cannot open for writing");
        out << body << central << end;
        out.flush();
        if (!out) throw IoError("'" + path + "': write failed (disk full?)");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw IoError("'" + path + "': cannot replace the file");
    }
}

NpzArchive NpzArchive::load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError("'" + path + "': cannot open for reading");
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const Reader r{data, path};
    if (data.size() < 22) throw IoError("'" + path + "': not an npz archive (file too short)");

    // The end-of-central-directory record sits in the last 22 + comment bytes.
    std::size_t eocd = std::string::npos;
    const std::size_t lowest = data.size() > 22 + 65535 ? data.size() - 22 - 65535 : 0;
    for (std::size_t at = data.size() - 22 + 1; at-- > lowest;) {
        if (r.u32(at) == kEndOfCentral) {
            eocd = at;
            break;
        }
    }
    if (eocd == std::string::npos)
        throw IoError("'" + path + "': not an npz archive (no zip directory; truncated?)");
    const std::uint32_t entries = r.u16(eocd + 10);
    const std::uint32_t dir_size = r.u32(eocd + 12);
    const std::uint32_t dir_offset = r.u32(eocd + 16);
    if (dir_offset == 0xffffffffu || entries == 0xffffu)
        throw IoError("'" + path + "': zip64 archives are not supported");
    r.need(dir_offset, dir_size);

    NpzArchive archive;
    archive.source_ = path;
    std::size_t at = dir_offset;
    for (std::uint32_t i = 0; i < entries; ++i) {
        if (r.u32(at) != kCentralHeader)
            throw IoError("'" + path + "': corrupt zip directory (entry " + std::to_string(i) +
                          ")");
        const std::uint32_t method = r.u16(at + 10);
        const std::uint32_t crc = r.u32(at + 16);
        const std::uint32_t packed = r.u32(at + 20);
        const std::uint32_t size = r.u32(at + 24);
        const std::uint32_t name_len = r.u16(at + 28);
        const std::uint32_t extra_len = r.u16(at + 30);
        const std::uint32_t comment_len = r.u16(at + 32);
        const std::uint32_t local = r.u32(at + 42);
        r.need(at + 46, name_len);
        std::string name = data.substr(at + 46, name_len);
        at += 46 + name_len + extra_len + comment_len;
        if (packed == 0xffffffffu || size == 0xffffffffu || local == 0xffffffffu)
            throw IoError("'" + path + "': member '" + name +
                          "' uses zip64, which is not supported");
        if (r.u32(local) != kLocalHeader)
            throw IoError("'" + path + "': corrupt local header for member '" + name + "'");
        const std::size_t start = local + 30 + r.u16(local + 26) + r.u16(local + 28);
        r.need(start, packed);
        const std::string what = "'" + path + "' member '" + name + "'";
        std::string bytes;
        if (method == 0)
            bytes = data.substr(start, packed);
        else if (method == 8)
            bytes = inflate_raw(data.data() + start, packed, size, what);
        else
            throw IoError(what + ": unsupported compression method " + std::to_string(method));
        if (bytes.size() != size || crc_of(bytes) != crc)
            throw IoError(what + ": checksum mismatch (corrupt file)");
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0)
            name.resize(name.size() - 4);
        archive.members_[name] = std::move(bytes);
    }
    return archive;
}

}  // namespace normlab
