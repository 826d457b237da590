// Open-file-description (OFD) byte-range locks for vmseal's disk and keystore locks (see
// native/fs_lock.cc and src/util/lock.ts). Kept apart from the XTS glue in addon.cc.
#pragma once

#include <napi.h>

namespace vmseal {

// Adds lockOpen, lockStat, lockSet, lockGet and lockClose to the addon's exports.
void InitFileLocks(Napi::Env env, Napi::Object exports);

}  // namespace vmseal
