// File locks that die with their holder: Linux open-file-description locks (fcntl F_OFD_SETLK /
// F_OFD_GETLK). Unlike a lock file checked against a pid, an OFD lock belongs to the open file
// description, so the kernel drops it when the last fd of that description closes (process exit,
// SIGKILL, even while the process lingers as a zombie); pid reuse cannot fake it. Unlike classic
// POSIX (F_SETLK) locks, closing an unrelated fd of the same file in the same process does not
// drop it, and two descriptions in one process conflict like two processes do. qemu uses the same
// kind of lock on image files, which is what lets vmseal and qemu see each other.
//
// Everything here is synchronous and cheap (F_OFD_SETLK never waits); waiting is done in JS.
#include "fs_lock.h"
#include "napi_errors.h"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace vmseal {
namespace {

#if defined(__linux__)

short LockTypeArg(const Napi::CallbackInfo& info, size_t i, bool allowUnlock) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsString()) throw TypeErr(env, "type must be 'read', 'write' or 'unlock'");
  std::string t = info[i].As<Napi::String>().Utf8Value();
  if (t == "read") return F_RDLCK;
  if (t == "write") return F_WRLCK;
  if (t == "unlock" && allowUnlock) return F_UNLCK;
  throw RangeErr(env, allowUnlock ? "type must be 'read', 'write' or 'unlock'" : "type must be 'read' or 'write'");
}

struct flock RangeArgs(const Napi::CallbackInfo& info, short type) {
  struct flock fl;
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(IntegerArg(info, 2, "start", 0, kMaxSafeInteger));
  // len 0 means "to the end of the file and beyond", as in fcntl.
  fl.l_len = static_cast<off_t>(IntegerArg(info, 3, "len", 0, kMaxSafeInteger));
  fl.l_pid = 0;  // must be 0 for OFD locks
  return fl;
}

// lockOpen(path) -> fd. O_CLOEXEC: a child process must never inherit (and so keep alive) a lock.
Napi::Value LockOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw TypeErr(env, "path must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.empty() || path.find('\0') != std::string::npos) throw TypeErr(env, "path must be a non-empty string without NUL");
  int flags = O_RDWR | O_CREAT | O_CLOEXEC;
  if (info.Length() >= 2 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value()) {
    // read-only open of an existing file (locks on an input disk, or a file we may not write);
    // read locks need only read access, write locks need write access.
    flags = O_RDONLY | O_CLOEXEC;
  }
  int fd;
  do {
    fd = ::open(path.c_str(), flags, 0600);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    Napi::Error e = SystemError(env, "ERR_LOCK_IO", "open", errno);
    e.Set("path", Napi::String::New(env, path));
    throw e;
  }
  return Napi::Number::New(env, fd);
}

// lockStat(fd) -> { dev, ino } as BigInts (inode numbers can exceed 2^53).
Napi::Value LockStat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  struct stat st;
  if (::fstat(fd, &st) != 0) throw SystemError(env, "ERR_LOCK_IO", "fstat", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("dev", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_dev)));
  out.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_ino)));
  out.Set("nlink", Napi::Number::New(env, static_cast<double>(st.st_nlink)));
  return out;
}

// lockSet(fd, type, start, len) -> true when taken (or released), false when another open file
// description holds a conflicting lock (EAGAIN/EACCES). Never waits.
Napi::Value LockSet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  struct flock fl = RangeArgs(info, LockTypeArg(info, 1, true));
  int rc;
  do {
    rc = ::fcntl(fd, F_OFD_SETLK, &fl);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return Napi::Boolean::New(env, true);
  if (errno == EAGAIN || errno == EACCES) return Napi::Boolean::New(env, false);
  throw SystemError(env, "ERR_LOCK_IO", "fcntl(F_OFD_SETLK)", errno);
}

// lockGet(fd, type, start, len) -> null when a lock of `type` could be taken now, otherwise the
// first conflicting lock { type, start, len } (OFD locks have no owner pid to report).
Napi::Value LockGet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  struct flock fl = RangeArgs(info, LockTypeArg(info, 1, false));
  if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) throw SystemError(env, "ERR_LOCK_IO", "fcntl(F_OFD_GETLK)", errno);
  if (fl.l_type == F_UNLCK) return env.Null();
  Napi::Object out = Napi::Object::New(env);
  out.Set("type", Napi::String::New(env, fl.l_type == F_WRLCK ? "write" : "read"));
  out.Set("start", Napi::Number::New(env, static_cast<double>(fl.l_start)));
  out.Set("len", Napi::Number::New(env, static_cast<double>(fl.l_len)));
  return out;
}

// lockClose(fd): closing the description's last fd drops all its locks. EINTR is not retried
// (on Linux the fd is gone either way).
Napi::Value LockClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  if (::close(fd) != 0 && errno != EINTR) throw SystemError(env, "ERR_LOCK_IO", "close", errno);
  return env.Undefined();
}

#else  // not Linux

Napi::Value NotSupported(const Napi::CallbackInfo& info) {
  Napi::Error e = Napi::Error::New(info.Env(), "open-file-description locks are not supported on this platform (Linux only)");
  e.Set("code", Napi::String::New(info.Env(), "ERR_LOCK_UNSUPPORTED"));
  throw e;
}
Napi::Value LockOpen(const Napi::CallbackInfo& info) { return NotSupported(info); }
Napi::Value LockStat(const Napi::CallbackInfo& info) { return NotSupported(info); }
Napi::Value LockSet(const Napi::CallbackInfo& info) { return NotSupported(info); }
Napi::Value LockGet(const Napi::CallbackInfo& info) { return NotSupported(info); }
Napi::Value LockClose(const Napi::CallbackInfo& info) { return NotSupported(info); }

#endif

}  // namespace

void InitFileLocks(Napi::Env env, Napi::Object exports) {
  exports.Set("lockOpen", Napi::Function::New(env, LockOpen, "lockOpen"));
  exports.Set("lockStat", Napi::Function::New(env, LockStat, "lockStat"));
  exports.Set("lockSet", Napi::Function::New(env, LockSet, "lockSet"));
  exports.Set("lockGet", Napi::Function::New(env, LockGet, "lockGet"));
  exports.Set("lockClose", Napi::Function::New(env, LockClose, "lockClose"));
}

}  // namespace vmseal
