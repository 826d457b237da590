// pread and pwrite of a whole range: the one loop that chunk_transfer.cc (copy jobs) and
// backup_chunks.cc (backup chunks) both need. No N-API here (chunk_transfer.cc is in the core
// library the C++ harness in native/test links). POSIX only: the callers guard their use.
//
// A short count continues where it stopped and EINTR is retried. PreadFully stops early at the
// end of the file; PwriteFully never returns short without an error: a write that moves no byte
// and reports none is EIO (looping on it could spin for ever). The fd's file offset is neither
// used nor moved.
#pragma once

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace vmseal {

struct IoResult {
  size_t done = 0;  // bytes moved before the end of the file or the error
  int error = 0;    // 0, or the errno of the failed call
};

// Up to `n` bytes at `pos` into `p`: `done` < n with error 0 means the file ended there.
inline IoResult PreadFully(int fd, uint8_t* p, size_t n, int64_t pos) {
  IoResult r;
  while (r.done < n) {
    const off_t at = static_cast<off_t>(pos + static_cast<int64_t>(r.done));
    const ssize_t got = ::pread(fd, p + r.done, n - r.done, at);
    if (got > 0) {
      r.done += static_cast<size_t>(got);
      continue;
    }
    if (got == 0) break;  // the end of the file
    if (errno == EINTR) continue;
    r.error = errno;
    break;
  }
  return r;
}

// All `n` bytes of `p` at `pos`: error 0 means every byte was written.
inline IoResult PwriteFully(int fd, const uint8_t* p, size_t n, int64_t pos) {
  IoResult r;
  while (r.done < n) {
    const off_t at = static_cast<off_t>(pos + static_cast<int64_t>(r.done));
    const ssize_t put = ::pwrite(fd, p + r.done, n - r.done, at);
    if (put > 0) {
      r.done += static_cast<size_t>(put);
      continue;
    }
    if (put < 0 && errno == EINTR) continue;
    r.error = put < 0 ? errno : EIO;
    break;
  }
  return r;
}

}  // namespace vmseal
#endif
