// Non-blocking reads for vmseal's inline I/O (see native/fs_nowait.cc and src/util/inline-io.ts).
// Kept apart from the XTS glue in addon.cc, like the file locks.
#pragma once

#include <napi.h>

namespace vmseal {

// Adds preadNowait to the addon's exports.
void InitFileNowait(Napi::Env env, Napi::Object exports);

}  // namespace vmseal
