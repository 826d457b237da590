// One copy-job chunk read, encrypted (or decrypted, or left as it is) and written on one libuv
// pool thread (see native/fs_transfer.cc and src/pipeline/chunk-transfer.ts).
#pragma once

#include <napi.h>

namespace vmseal {

// Adds transferChunk and TRANSFER_MAX_BYTES to the addon's exports.
void InitFileTransfer(Napi::Env env, Napi::Object exports);

}  // namespace vmseal
