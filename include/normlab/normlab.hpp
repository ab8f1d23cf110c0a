#pragma once
// Everything a user of normlab needs: the Normalizer interface, the registry and state files.

#include "normlab/errors.hpp"
#include "normlab/normalizer.hpp"
#include "normlab/npz.hpp"
#include "normlab/registry.hpp"
#include "normlab/state_io.hpp"
#include "normlab/state_snapshot.hpp"
#include "normlab/tensor.hpp"
