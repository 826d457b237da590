// Where a file holds data: lseek(SEEK_DATA / SEEK_HOLE) over a byte range (see native/fs_extents.cc
// and src/util/file-extents.ts). Kept apart from the XTS glue in addon.cc, like fs_lock.h.
#pragma once

#include <napi.h>

namespace vmseal {

// Adds fileDataRanges to the addon's exports.
void InitFileExtents(Napi::Env env, Napi::Object exports);

}  // namespace vmseal
