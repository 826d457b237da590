// fileDataRanges(fd, start, end, maxRanges) -> [[offset, length], ...]: the ranges of [start, end)
// that hold data, in order, found with lseek(SEEK_DATA) / lseek(SEEK_HOLE). A sparse VMDK made by
// qemu-img preallocates its grain tables as holes (1 GiB of them for 16 TiB); knowing the holes lets
// the reader skip tables that can only be zeros without reading them.
//
// Contract (the caller relies on it being conservative: a range reported as a hole reads as zeros):
// - at most maxRanges pairs; when the list is full the scan stops, and everything from the end of
//   the last pair on is unknown (the caller treats it as data);
// - a file system without SEEK_DATA support (EINVAL), and any platform without SEEK_DATA, reports
//   the whole range as data: [[start, end - start]];
// - ENXIO from SEEK_DATA means no data from that offset to the end of the file: the scan ends;
// - lseek moves the fd's file position; vmseal does all its I/O with pread/pwrite, which ignore it.
//
// Synchronous: two lseek calls per data range, no I/O to the data itself.
#include "fs_extents.h"
#include "napi_errors.h"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__linux__) || defined(__APPLE__) || defined(__FreeBSD__)
#include <unistd.h>
#endif

namespace vmseal {
namespace {

constexpr int64_t kMaxRanges = 1 << 24;  // bounds the array built here

void Push(Napi::Env env, Napi::Array& out, int64_t offset, int64_t length) {
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(uint32_t{0}, Napi::Number::New(env, static_cast<double>(offset)));
  pair.Set(uint32_t{1}, Napi::Number::New(env, static_cast<double>(length)));
  out.Set(out.Length(), pair);
}

Napi::Value FileDataRanges(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int64_t start = IntegerArg(info, 1, "start", 0, kMaxSafeInteger);
  int64_t end = IntegerArg(info, 2, "end", 0, kMaxSafeInteger);
  int64_t max = IntegerArg(info, 3, "maxRanges", 1, kMaxRanges);
  if (end < start) throw RangeErr(env, "end is before start");
  Napi::Array out = Napi::Array::New(env);
  if (end == start) return out;
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
  int64_t pos = start;
  while (pos < end && static_cast<int64_t>(out.Length()) < max) {
    off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only holes from pos to the end of the file
      if (errno == EINVAL && pos == start) {
        Push(env, out, start, end - start);  // no SEEK_DATA on this file system: all data
        return out;
      }
      throw SystemError(env, "ERR_FS_EXTENTS_IO", "lseek(SEEK_DATA)", errno);
    }
    if (data >= end) break;
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) throw SystemError(env, "ERR_FS_EXTENTS_IO", "lseek(SEEK_HOLE)", errno);
    int64_t stop = hole < end ? static_cast<int64_t>(hole) : end;
    Push(env, out, data, stop - data);
    pos = stop;
  }
#else
  (void)fd;
  (void)max;
  Push(env, out, start, end - start);
#endif
  return out;
}

}  // namespace

void InitFileExtents(Napi::Env env, Napi::Object exports) {
  exports.Set("fileDataRanges", Napi::Function::New(env, FileDataRanges, "fileDataRanges"));
}

}  // namespace vmseal
