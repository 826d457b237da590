// Write-behind for vmseal's copy jobs (see native/fs_writeback.cc and src/util/write-behind.ts).
// Kept apart from the XTS glue in addon.cc, like the file locks.
#pragma once

#include <napi.h>

namespace vmseal {

// Adds writebackStart to the addon's exports.
void InitFileWriteback(Napi::Env env, Napi::Object exports);

}  // namespace vmseal
