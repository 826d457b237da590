// The argument and system errors of the small native calls beside the XTS glue (fs_copy.cc,
// fs_extents.cc, fs_lock.cc, fs_nowait.cc, fs_writeback.cc): one definition of their shapes, so
// that every call reports a bad argument and a failed system call the same way.
//
// - a bad argument type: TypeError, code ERR_INVALID_ARG_TYPE;
// - a value out of range: RangeError, code ERR_OUT_OF_RANGE;
// - a failed system call: Error, the caller's code (ERR_LOCK_IO, ERR_FS_EXTENTS_IO…), `errno` (the
//   positive errno) and `syscall`; the message is "<syscall> failed: <strerror>".
// (addon.cc has its own, richer "Expected … but received …" messages for the XTS API.)
#pragma once

#include <napi.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace vmseal {

// Number.MAX_SAFE_INTEGER: the largest offset or length a JS number carries exactly.
constexpr int64_t kMaxSafeInteger = 9007199254740991LL;

inline Napi::Error TypeErr(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::TypeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  return e;
}

inline Napi::Error RangeErr(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::RangeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  return e;
}

inline Napi::Error SystemError(Napi::Env env, const char* code, const char* syscall, int err) {
  std::string msg = std::string(syscall) + " failed: " + std::strerror(err);
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

// Argument i: a JS number that is an integer in [min, max] (max at most kMaxSafeInteger).
inline int64_t IntegerArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) throw TypeErr(env, std::string(name) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v) || std::floor(v) != v) throw TypeErr(env, std::string(name) + " must be an integer");
  if (v < static_cast<double>(min) || v > static_cast<double>(max)) throw RangeErr(env, std::string(name) + " is out of range");
  return static_cast<int64_t>(v);
}

// Argument i as a file descriptor (a non-negative int).
inline int FdArg(const Napi::CallbackInfo& info, size_t i) { return static_cast<int>(IntegerArg(info, i, "fd", 0, 0x7fffffff)); }

}  // namespace vmseal
