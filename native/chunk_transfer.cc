// See chunk_transfer.h. Why one job per chunk: the streaming engine's read, cipher and write were
// three hand-offs between the event loop and two thread pools for every chunk (each a wake-up of a
// thread and of the loop); here one pool thread does the three in a row on memory it already has
// in its cache, and the JavaScript side only hands out chunks and counts them.
#include "chunk_transfer.h"

#include <algorithm>
#include <cerrno>
#include <numeric>

#include "io_fully.h"

#if defined(__unix__) || defined(__APPLE__)
#define VMSEAL_HAVE_PREAD 1
#else
#define VMSEAL_HAVE_PREAD 0
#endif

namespace vmseal {
namespace {

TransferResult Failed(int error, const char* syscall, size_t bytesRead = 0) {
  TransferResult r;
  r.bytesRead = bytesRead;
  r.error = error;
  r.syscall = syscall;
  return r;
}

// Bytes read, transformed and written at a time inside one chunk: a quarter of the 1 MiB L2 cache
// of the cores we measure on, so a step is still there for the cipher and the write. Measured
// (perf stat task-clock, loaded 2-core EPYC, 1 GiB in tmpfs, 4 MiB chunks): 4-7% less CPU than
// the whole chunk at once.
constexpr size_t kStepBytes = size_t{256} << 10;

// A cipher, whole data units, and unit numbers that stay below 2^64.
bool UnitsValid(const XtsEngine* engine, size_t unitSize, uint64_t firstUnit, size_t length) {
  if (engine == nullptr || unitSize == 0 || length % unitSize != 0) return false;
  const uint64_t count = length / unitSize;
  return count == 0 || firstUnit <= UINT64_MAX - (count - 1);
}

bool Valid(const TransferRequest& q) {
  if (q.fdIn < 0 || q.fdOut < 0 || q.positionIn < 0 || q.positionOut < 0) return false;
  if (q.length > 0 && q.buffer == nullptr) return false;
  // Offsets stay below 2^62: far past any file, and no overflow when the length is added.
  constexpr int64_t kMaxPosition = int64_t{1} << 62;
  if (q.positionIn > kMaxPosition || q.positionOut > kMaxPosition || q.length > static_cast<size_t>(kMaxPosition)) return false;
  if (q.cipher == TransferCipher::kNone) return true;
  if (!UnitsValid(q.engine, q.unitSize, q.firstUnit, q.length)) return false;
  return q.cipher != TransferCipher::kReencrypt || UnitsValid(q.engine2, q.unitSize2, q.firstUnit2, q.length);
}

}  // namespace

TransferResult TransferChunk(const TransferRequest& q) {
  if (!Valid(q)) return Failed(EINVAL, "transfer");
#if VMSEAL_HAVE_PREAD
  // Step by step, each step read, transformed and written before the next is read: a step stays in
  // this core's cache between the three, where a whole chunk (MiBs) would be fetched from memory
  // again by the cipher and again by the write's copy into the page cache.
  //
  // Every step goes through the same first bytes of the buffer, not through the next part of it: the
  // step's lines stay in this core's cache from one step to the next, where walking a whole chunk
  // buffer evicted each step to memory (a write-back of every dirty line, and a fetch of every line
  // the next read fills, for all of the image) and faulted in all of a fresh buffer's pages.
  // Measured (a C loop of pread → touch → pwrite, 2 GiB in tmpfs, loaded 2-core VM, 4 runs each):
  // 0.77 s of CPU against 0.93 s when walking a 16 MiB buffer.
  // A step holds whole units of each cipher.
  const size_t unit = q.cipher == TransferCipher::kNone        ? 1
                      : q.cipher == TransferCipher::kReencrypt ? std::lcm(q.unitSize, q.unitSize2)
                                                               : q.unitSize;
  const size_t step = std::max(unit, kStepBytes / unit * unit);
  uint8_t* const p = q.buffer;
  size_t done = 0;
  while (done < q.length) {
    const size_t len = std::min(step, q.length - done);
    const IoResult got = PreadFully(q.fdIn, p, len, q.positionIn + static_cast<int64_t>(done));
    if (got.error != 0) return Failed(got.error, "pread", done + got.done);
    if (got.done < len) {  // the input ended
      TransferResult r;
      r.bytesRead = done + got.done;
      return r;
    }
    if (q.cipher != TransferCipher::kNone) {
      const size_t count = len / q.unitSize;
      const uint64_t first = q.firstUnit + done / q.unitSize;
      if (q.cipher == TransferCipher::kEncrypt) q.engine->EncryptUnits(p, p, q.unitSize, count, first);
      else q.engine->DecryptUnits(p, p, q.unitSize, count, first);
      if (q.cipher == TransferCipher::kReencrypt) q.engine2->EncryptUnits(p, p, q.unitSize2, len / q.unitSize2, q.firstUnit2 + done / q.unitSize2);
    }
    const IoResult put = PwriteFully(q.fdOut, p, len, q.positionOut + static_cast<int64_t>(done));
    if (put.error != 0) return Failed(put.error, "pwrite", done + len);
    done += len;
  }
  TransferResult r;
  r.bytesRead = done;
  return r;
#else
  return Failed(ENOSYS, "pread");
#endif
}

}  // namespace vmseal
