// The data path of ciphertext backups (src/backup): storing a run of a flat disk's chunks into a
// repository, and restoring a run of chunks into a flat disk, each as one job on libuv's pool with
// no chunk byte crossing into JavaScript (see native/backup_chunks.cc, src/util/native-backup.ts).
#pragma once

#include <napi.h>

namespace vmseal {

// Adds storeChunks, restoreChunks and BACKUP_CHUNKS_MAX to the addon's exports.
void InitBackupChunks(Napi::Env env, Napi::Object exports);

}  // namespace vmseal
