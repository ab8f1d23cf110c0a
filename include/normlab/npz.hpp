#pragma once
// NumPy .npz archives (a zip of .npy members), read and written with xtensor's xnpy.hpp for the
// members and zlib for checksums and deflated members. Files written here load with numpy.load;
// files written by numpy.savez / savez_compressed load here.

#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <xtensor/xnpy.hpp>

#include "normlab/errors.hpp"
#include "normlab/tensor.hpp"

namespace normlab {

class NpzArchive {
  public:
    template <class T>
    void put(const std::string& name, const Array<T>& value) {
        members_[name] = xt::dump_npy(value);
    }

    // Throws IoError when the member is missing, holds another dtype, or is truncated.
    template <class T>
    Array<T> get(const std::string& name) const {
        std::istringstream in(raw(name));
        Array<T> out;
        try {
            out = xt::load_npy<T>(in);
        } catch (const std::exception& e) {
            throw IoError(describe(name) + ": cannot be read as " + dtype_name<T>() + " (" +
                          e.what() + ")");
        }
        if (in.fail()) throw IoError(describe(name) + ": array data is truncated");
        return out;
    }

    bool contains(const std::string& name) const { return members_.count(name) != 0; }
    std::vector<std::string> names() const;

    // Writes to path + ".tmp" and renames, so an existing file is never left half-written.
    void save(const std::string& path) const;
    static NpzArchive load(const std::string& path);

  private:
    const std::string& raw(const std::string& name) const;
    std::string describe(const std::string& name) const {
        return "'" + source_ + "' member '" + name + "'";
    }
    template <class T>
    static std::string dtype_name() {
        if constexpr (std::is_same_v<T, float>) return "float32";
        if constexpr (std::is_same_v<T, double>) return "float64";
        if constexpr (std::is_same_v<T, std::int64_t>) return "int64";
        return "the requested type";
    }

    std::map<std::string, std::string> members_;  // name without ".npy" -> .npy bytes
    std::string source_ = "npz archive";
};

}  // namespace normlab
