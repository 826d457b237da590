// Kernel-side copies between two files for vmseal's plain copy jobs (see native/fs_copy.cc and
// src/pipeline/kernel-copy.ts). Kept apart from the XTS glue in addon.cc, like the file locks.
#pragma once

#include <napi.h>

namespace vmseal {

// Adds copyFileRange and COPY_RANGE_MAX_BYTES to the addon's exports.
void InitFileCopy(Napi::Env env, Napi::Object exports);

}  // namespace vmseal
