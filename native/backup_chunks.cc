// The data path of ciphertext backups of flat disks (docs/backup.md, "Data path"): one call is a run
// of chunks done as one job on libuv's pool, with no chunk byte crossing into JavaScript and no hop
// back to the event loop between the steps of a chunk. The JS side (src/util/native-backup.ts,
// src/backup/create.ts, restore.ts) keeps two or three runs in flight, so both cores hash.
//
// storeChunks(fdIn, positions, lengths, chunkRoot, tmpSuffixes) -> Promise<Buffer>
//   For chunk i: pread lengths[i] bytes at positions[i] of fdIn; if they are all zeros, nothing more
//   (a hole); else SHA-256 them, and unless `<chunkRoot>/<xx>/<hex>` exists, write them as that
//   file the way createFileAtomicSync (src/util/atomic-file.ts) does: the temp file
//   `<final><tmpSuffixes[i]>` created exclusively (mode 0600), written whole, fchmod 0600, fsync,
//   close, link to the final name (EEXIST: someone stored it first), unlink the temp; on a file
//   system without hard links, an exclusive create of the final name instead. The folder's fsync is
//   the caller's (once per folder per backup, before a manifest names the chunk).
//   Resolves n × 33 bytes: per chunk a status byte — 0 all zeros, 1 present already, 2 written by
//   this call, 3 the input ended before lengths[i] bytes (the run stops there), 255 not reached —
//   then the 32-byte SHA-256 (zeros for statuses 0, 3, 255).
//
// hashChunks(fdIn, positions, lengths) -> Promise<Buffer>
//   storeChunks without the store: the same reads, zero check and SHA-256, nothing written; status 1
//   means hashed. For the quick rollback without a change bitmap (src/backup/restore-over.ts), which
//   compares every chunk of the disk with the point's.
//
// restoreChunks(fdOut, positions, lengths, paths, hashes, block) -> Promise<{bytes, failed, reason, size}>
//   For chunk i: open paths[i], check that it has exactly lengths[i] bytes, read it whole and check
//   that its SHA-256 is hashes[32i..32i+32) — all before any byte of it is written — then pwrite its
//   runs of `block`-sized blocks that are not all zeros at positions[i] of fdOut (zero blocks are left
//   alone: a new flat extent reads as zeros there, and stays a host hole). Resolves `bytes` written
//   and `failed` -1; or, at the first chunk that is missing, of another size or altered, `failed` its
//   index and `reason` 'missing' | 'type' (not a regular file) | 'size' | 'hash' (`size`: the bytes
//   it has), nothing of it written.
//
// Any failed system call rejects with an Error: `code` ERR_BACKUP_CHUNK_IO, `errno`, `syscall`, and
// `path` (the chunk or temp file, or the input/output "fd N") — napi_errors.h's shape; a store may
// leave its temp file behind then (never read; prune deletes it). Bad arguments throw synchronously.
//
// Bounded: at most BACKUP_CHUNKS_MAX chunks of at most 16 MiB per call; each pool thread reuses one
// buffer of the largest chunk it has seen. The arguments are copied into the job before it is
// queued: the pool thread touches no JavaScript memory.
#include "backup_chunks.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "io_fully.h"
#include "napi_errors.h"

#if defined(__linux__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define VMSEAL_POSIX_FILES 1
#endif

namespace vmseal {
namespace {

constexpr size_t kMaxChunks = 64;
constexpr int64_t kMaxChunkBytes = int64_t{16} << 20;
constexpr size_t kHashBytes = 32;

enum StoreStatus : uint8_t { kZero = 0, kPresent = 1, kWritten = 2, kShort = 3, kNotReached = 255 };

// One buffer per pool thread, grown to the largest chunk it has held: no allocation (and no page
// faults on fresh memory) per chunk.
uint8_t* ThreadBuffer(size_t length) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < length) buffer.resize(length);
  return buffer.data();
}

// Whether all `n` bytes are zero: the first 16 bytes, then the rest against itself shifted by 16
// (memcmp runs at memory speed; a ciphertext chunk fails on its first bytes).
bool AllZero(const uint8_t* p, size_t n) {
  size_t head = n < 16 ? n : 16;
  for (size_t i = 0; i < head; i++)
    if (p[i] != 0) return false;
  return n <= 16 || std::memcmp(p, p + 16, n - 16) == 0;
}

bool Sha256(const uint8_t* data, size_t n, uint8_t out[kHashBytes]) {
  unsigned int len = 0;
  return EVP_Digest(data, n, out, &len, EVP_sha256(), nullptr) == 1 && len == kHashBytes;
}

void Hex(const uint8_t* hash, char out[2 * kHashBytes + 1]) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < kHashBytes; i++) {
    out[2 * i] = digits[hash[i] >> 4];
    out[2 * i + 1] = digits[hash[i] & 15];
  }
  out[2 * kHashBytes] = '\0';
}

// The jobs of this file: FileWork (napi_errors.h) with code ERR_BACKUP_CHUNK_IO, every failure
// naming its own system call and file (`path`), and the whole-range reads and writes of io_fully.h.
class ChunkWork : public FileWork {
 protected:
  ChunkWork(Napi::Env env, const char* resource)
      : FileWork(env, resource, "ERR_BACKUP_CHUNK_IO", "") {}

#if VMSEAL_POSIX_FILES
  // pread up to `n` bytes at `pos`: the bytes read (fewer when the file ended), or -1 after Fail().
  int64_t ReadFully(int fd, uint8_t* p, size_t n, int64_t pos, const std::string& what) {
    const IoResult r = PreadFully(fd, p, n, pos);
    if (r.error != 0) {
      Fail(r.error, "pread", what);
      return -1;
    }
    return static_cast<int64_t>(r.done);
  }

  bool WriteFully(int fd, const uint8_t* p, size_t n, int64_t pos, const std::string& what) {
    const IoResult r = PwriteFully(fd, p, n, pos);
    return r.error == 0 || Fail(r.error, "pwrite", what);
  }
#endif
};

std::string FdName(int fd) { return "fd " + std::to_string(fd); }

class StoreWork : public ChunkWork {
 public:
  // An empty `root` hashes only (hashChunks): nothing is stored, status kPresent means hashed.
  StoreWork(Napi::Env env, int fd, std::vector<int64_t> positions, std::vector<int64_t> lengths, std::string root, std::vector<std::string> tmp)
      : ChunkWork(env, root.empty() ? "vmseal.hashChunks" : "vmseal.storeChunks"),
        fd_(fd),
        positions_(std::move(positions)),
        lengths_(std::move(lengths)),
        root_(std::move(root)),
        tmp_(std::move(tmp)),
        result_(positions_.size() * (1 + kHashBytes), 0) {
    for (size_t i = 0; i < positions_.size(); i++) result_[i * (1 + kHashBytes)] = kNotReached;
  }

  void Execute() override {
#if VMSEAL_POSIX_FILES
    for (size_t i = 0; i < positions_.size(); i++) {
      uint8_t* out = &result_[i * (1 + kHashBytes)];
      size_t n = static_cast<size_t>(lengths_[i]);
      uint8_t* buf = ThreadBuffer(n);
      int64_t got = ReadFully(fd_, buf, n, positions_[i], FdName(fd_));
      if (got < 0) return;
      if (static_cast<size_t>(got) < n) {
        out[0] = kShort;
        return;
      }
      if (AllZero(buf, n)) {
        out[0] = kZero;
        continue;
      }
      if (!Sha256(buf, n, out + 1)) {
        Fail(EIO, "EVP_Digest", "sha256");
        return;
      }
      if (root_.empty()) {
        out[0] = kPresent;
        continue;
      }
      int stored = Store(buf, n, out + 1, tmp_[i]);
      if (stored < 0) return;
      out[0] = stored == 1 ? kWritten : kPresent;
    }
#else
    Fail(ENOSYS, "storeChunks", "");
#endif
  }

 protected:
  Napi::Value Result(Napi::Env env) override { return Napi::Buffer<uint8_t>::Copy(env, result_.data(), result_.size()); }

 private:
#if VMSEAL_POSIX_FILES
  // 1 written, 0 present already, -1 after Fail().
  int Store(const uint8_t* data, size_t n, const uint8_t* hash, const std::string& suffix) {
    char hex[2 * kHashBytes + 1];
    Hex(hash, hex);
    std::string file = root_ + "/" + std::string(hex, 2) + "/" + hex;
    struct stat st;
    if (::stat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return 0;
    std::string tmp = file + suffix;
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
      Fail(errno, "open", tmp);
      return -1;
    }
    bool ok = WriteSynced(fd, data, n, tmp);
    ::close(fd);
    if (!ok) {
      ::unlink(tmp.c_str());
      return -1;
    }
    int result = 1;
    if (::link(tmp.c_str(), file.c_str()) != 0) {
      int err = errno;
      if (err == EEXIST) {
        result = 0;
      } else if (err == EPERM || err == ENOTSUP || err == EOPNOTSUPP || err == ENOSYS) {
        result = CreateExclusive(file, data, n);  // no hard links on this file system
      } else {
        Fail(err, "link", file);
        result = -1;
      }
    }
    ::unlink(tmp.c_str());  // a leftover temp file is never read: its failure does not matter
    return result;
  }

  bool WriteSynced(int fd, const uint8_t* data, size_t n, const std::string& path) {
    if (!WriteFully(fd, data, n, 0, path)) return false;
    if (::fchmod(fd, 0600) != 0) return Fail(errno, "fchmod", path);  // the umask may have narrowed it
    if (::fsync(fd) != 0) return Fail(errno, "fsync", path);
    return true;
  }

  int CreateExclusive(const std::string& file, const uint8_t* data, size_t n) {
    int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST) return 0;
      Fail(errno, "open", file);
      return -1;
    }
    bool ok = WriteSynced(fd, data, n, file);
    ::close(fd);
    return ok ? 1 : -1;
  }
#endif

  int fd_;
  std::vector<int64_t> positions_;
  std::vector<int64_t> lengths_;
  std::string root_;
  std::vector<std::string> tmp_;
  std::vector<uint8_t> result_;
};

class RestoreWork : public ChunkWork {
 public:
  RestoreWork(Napi::Env env, int fd, std::vector<int64_t> positions, std::vector<int64_t> lengths, std::vector<std::string> paths,
              std::vector<uint8_t> hashes, int64_t block)
      : ChunkWork(env, "vmseal.restoreChunks"),
        fd_(fd),
        positions_(std::move(positions)),
        lengths_(std::move(lengths)),
        paths_(std::move(paths)),
        hashes_(std::move(hashes)),
        block_(static_cast<size_t>(block)) {}

  void Execute() override {
#if VMSEAL_POSIX_FILES
    for (size_t i = 0; i < positions_.size(); i++) {
      size_t n = static_cast<size_t>(lengths_[i]);
      uint8_t* buf = ThreadBuffer(n + 1);
      if (!ReadChunk(i, buf, n)) return;
      if (failed_ >= 0) return;
      // Runs of non-zero blocks, each one pwrite.
      size_t s = 0;
      while (s < n) {
        size_t e = s + block_ < n ? s + block_ : n;
        if (AllZero(buf + s, e - s)) {
          s = e;
          continue;
        }
        size_t run = e;
        while (run < n) {
          size_t next = run + block_ < n ? run + block_ : n;
          if (AllZero(buf + run, next - run)) break;
          run = next;
        }
        if (!WriteFully(fd_, buf + s, run - s, positions_[i] + static_cast<int64_t>(s), FdName(fd_))) return;
        bytes_ += static_cast<int64_t>(run - s);
        s = run;
      }
    }
#else
    Fail(ENOSYS, "restoreChunks", "");
#endif
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Object r = Napi::Object::New(env);
    r.Set("bytes", static_cast<double>(bytes_));
    r.Set("failed", static_cast<double>(failed_));
    r.Set("reason", reason_);
    r.Set("size", static_cast<double>(size_));
    return r;
  }

 private:
#if VMSEAL_POSIX_FILES
  // Read chunk i whole into buf and check it: false after Fail(); a bad chunk sets failed_.
  bool ReadChunk(size_t i, uint8_t* buf, size_t n) {
    const std::string& path = paths_[i];
    // O_NONBLOCK: a FIFO at a chunk's name must not hang the pool thread in open(); it is no chunk.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      if (errno == ENOENT) return Bad(i, "missing", 0);
      return Fail(errno, "open", path);
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      return Fail(err, "fstat", path);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return Bad(i, "type", 0);
    }
    // One byte more than expected: a longer file is caught by the same read.
    int64_t got = ReadFully(fd, buf, n + 1, 0, path);
    ::close(fd);
    if (got < 0) return false;
    if (static_cast<size_t>(got) != n) return Bad(i, "size", got);
    uint8_t hash[kHashBytes];
    if (!Sha256(buf, n, hash)) return Fail(EIO, "EVP_Digest", path);
    if (std::memcmp(hash, &hashes_[i * kHashBytes], kHashBytes) != 0) return Bad(i, "hash", got);
    return true;
  }
#endif

  bool Bad(size_t i, const char* reason, int64_t size) {
    failed_ = static_cast<int64_t>(i);
    reason_ = reason;
    size_ = size;
    return true;
  }

  int fd_;
  std::vector<int64_t> positions_;
  std::vector<int64_t> lengths_;
  std::vector<std::string> paths_;
  std::vector<uint8_t> hashes_;
  size_t block_;
  int64_t bytes_ = 0;
  int64_t failed_ = -1;
  const char* reason_ = "";
  int64_t size_ = 0;
};

// An array argument of 1 to kMaxChunks entries.
Napi::Array ListArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsArray()) throw TypeErr(env, std::string(name) + " must be an array");
  Napi::Array a = info[i].As<Napi::Array>();
  if (a.Length() == 0 || a.Length() > kMaxChunks) throw RangeErr(env, std::string(name) + " must have 1 to " + std::to_string(kMaxChunks) + " entries");
  return a;
}

std::vector<int64_t> Integers(Napi::Env env, Napi::Array a, const char* name, int64_t min, int64_t max) {
  std::vector<int64_t> out;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsNumber()) throw TypeErr(env, std::string(name) + " must hold numbers");
    double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || std::floor(d) != d) throw TypeErr(env, std::string(name) + " must hold integers");
    if (d < static_cast<double>(min) || d > static_cast<double>(max)) throw RangeErr(env, std::string(name) + " holds a value out of range");
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

std::vector<std::string> Strings(Napi::Env env, Napi::Array a, const char* name) {
  std::vector<std::string> out;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsString()) throw TypeErr(env, std::string(name) + " must hold strings");
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s.find('\0') != std::string::npos) throw TypeErr(env, std::string(name) + " must not hold NUL characters");
    out.push_back(std::move(s));
  }
  return out;
}

std::string PathArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsString()) throw TypeErr(env, std::string(name) + " must be a string");
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s.empty() || s.find('\0') != std::string::npos) throw TypeErr(env, std::string(name) + " must be a non-empty path");
  return s;
}

// The arguments every call starts with: a file descriptor, then the positions and lengths of a run
// of chunks — as many as each other, and position + length exact as a JS number.
struct RunArgs {
  int fd;
  std::vector<int64_t> positions;
  std::vector<int64_t> lengths;
};

RunArgs ReadRunArgs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // A braced initialiser evaluates in order: the errors come as before, fd first.
  RunArgs run{FdArg(info, 0), Integers(env, ListArg(info, 1, "positions"), "positions", 0, kMaxSafeInteger),
              Integers(env, ListArg(info, 2, "lengths"), "lengths", 1, kMaxChunkBytes)};
  if (run.positions.size() != run.lengths.size()) throw RangeErr(env, "positions and lengths must have as many entries");
  for (size_t k = 0; k < run.positions.size(); k++)
    if (run.lengths[k] > kMaxSafeInteger - run.positions[k]) throw RangeErr(env, "position + length is out of range");
  return run;
}

Napi::Value StoreChunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RunArgs run = ReadRunArgs(info);
  std::string root = PathArg(info, 3, "chunkRoot");
  std::vector<std::string> tmp = Strings(env, ListArg(info, 4, "tmpSuffixes"), "tmpSuffixes");
  if (tmp.size() != run.positions.size()) throw RangeErr(env, "tmpSuffixes must have one entry per chunk");
  for (const std::string& s : tmp)
    if (s.empty() || s.find('/') != std::string::npos) throw TypeErr(env, "tmpSuffixes must hold non-empty names without '/'");
  return (new StoreWork(env, run.fd, std::move(run.positions), std::move(run.lengths), std::move(root), std::move(tmp)))->Start();
}

Napi::Value HashChunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RunArgs run = ReadRunArgs(info);
  return (new StoreWork(env, run.fd, std::move(run.positions), std::move(run.lengths), std::string(), {}))->Start();
}

Napi::Value RestoreChunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RunArgs run = ReadRunArgs(info);
  std::vector<std::string> paths = Strings(env, ListArg(info, 3, "paths"), "paths");
  if (paths.size() != run.positions.size()) throw RangeErr(env, "paths must have one entry per chunk");
  if (info.Length() <= 4 || !info[4].IsBuffer()) throw TypeErr(env, "hashes must be a Buffer");
  Napi::Buffer<uint8_t> h = info[4].As<Napi::Buffer<uint8_t>>();
  if (h.Length() != run.positions.size() * kHashBytes) throw RangeErr(env, "hashes must hold 32 bytes per chunk");
  std::vector<uint8_t> hashes(h.Data(), h.Data() + h.Length());
  int64_t block = IntegerArg(info, 5, "block", 512, kMaxChunkBytes);
  return (new RestoreWork(env, run.fd, std::move(run.positions), std::move(run.lengths), std::move(paths), std::move(hashes), block))->Start();
}

}  // namespace

void InitBackupChunks(Napi::Env env, Napi::Object exports) {
  exports.Set("storeChunks", Napi::Function::New(env, StoreChunks, "storeChunks"));
  exports.Set("hashChunks", Napi::Function::New(env, HashChunks, "hashChunks"));
  exports.Set("restoreChunks", Napi::Function::New(env, RestoreChunks, "restoreChunks"));
  exports.Set("BACKUP_CHUNKS_MAX", Napi::Number::New(env, static_cast<double>(kMaxChunks)));
}

}  // namespace vmseal
