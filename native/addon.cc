// N-API glue for vmseal's AES-XTS core: argument checking, cipher handles, the async batch API on
// the addon's own thread pool, and the feature report. Policy (defaults, the VMSEAL_XTS_IMPL
// override, friendly errors) lives in TypeScript (src/xts/); this file still checks every argument
// itself, because the .node file can be loaded and called directly.
//
// JS surface (all functions; `cipher` is an opaque handle object made by createCipher):
//   createCipher(key: Uint8Array, impl?: string) -> cipher
//   encrypt / decrypt(cipher, data, unitSize, firstUnit: number | bigint, out) -> undefined
//   encryptAsync / decryptAsync(cipher, data, unitSize, firstUnit, out, threads?) -> Promise<undefined>
//   encryptUnit / decryptUnit(cipher, data, tweak: Uint8Array(16), out) -> undefined
//   allocateBuffer(size) -> Buffer             (zero-filled, native-owned: see "Native-owned memory")
//   dispose(cipher) -> undefined              (idempotent; wipes the key schedule unless async work
//                                             still holds the engine, which then wipes it when done)
//   cipherInfo(cipher) -> { implementation, keyBits, disposed }
//   info() -> { best, available: string[], implementations: string[], cpu: {flag: boolean}, threads }
//   setThreads(n) / getThreads()
//   constants: KEY_BYTES_128, KEY_BYTES_256, MIN_UNIT_SIZE, MAX_UNIT_SIZE, MAX_THREADS
//
// Errors are JS TypeError / RangeError / Error objects with a string `code` property and a message
// of the shape "Expected <what> for <argument> but received <description>"; descriptions never echo
// buffer contents.
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <new>
#include <thread>
#include <unordered_map>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define VMSEAL_HAVE_MMAP 1
#else
#define VMSEAL_HAVE_MMAP 0
#endif

#include "addon_access.h"
#include "backup_chunks.h"
#include "fs_copy.h"
#include "fs_extents.h"
#include "fs_lock.h"
#include "fs_nowait.h"
#include "fs_transfer.h"
#include "fs_writeback.h"
#include "thread_pool.h"
#include "xts_engine.h"

namespace vmseal {
namespace {

constexpr size_t kKeyBytes128 = 32;
constexpr size_t kKeyBytes256 = 64;
constexpr size_t kMinUnitSize = 16;
constexpr size_t kMaxUnitSize = 1 << 20;  // 1 MiB: far above any disk sector or grain
constexpr uint32_t kMaxThreads = 256;
// Async batches are not split into chunks smaller than this: below it the hand-off to a pool
// thread (~ microseconds) costs more than the AES work it spreads.
constexpr size_t kMinChunkBytes = 64 * 1024;
// allocateBuffer() sizes: up to 2 GiB, far above any pipeline chunk.
constexpr size_t kMaxBufferBytes = size_t{1} << 31;
// Blocks start on a cache line: the vector kernels load 64 bytes at a time.
constexpr size_t kBlockAlign = 64;
// allocateBuffer() sizes from which the memory is mapped from the kernel rather than cleared heap
// memory (see Block): below it the memset is cheap and a whole page per buffer would be waste.
constexpr size_t kMapMinBytes = 64 * 1024;

// Distinguishes our cipher handles from any other object (napi_type_tag_object, N-API 8).
constexpr napi_type_tag kCipherTag = {0x766d7365616c5854ULL, 0x5343697068657231ULL};

// ---------------------------------------------------------------------------------------------
// Errors

enum class ErrorKind { kType, kRange, kPlain };

[[noreturn]] void Throw(Napi::Env env, ErrorKind kind, const char* code, const std::string& message) {
  Napi::Error error = kind == ErrorKind::kType    ? Napi::TypeError::New(env, message)
                      : kind == ErrorKind::kRange ? Napi::RangeError::New(env, message)
                                                  : Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  throw error;
}

const char* TypedArrayName(napi_typedarray_type type) {
  switch (type) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_biguint64_array: return "BigUint64Array";
    default: return "TypedArray";
  }
}

// Mirrors describeValue() in src/errors.ts without running user code (no getters, no toString()).
std::string Describe(Napi::Value value) {
  napi_env env = value.Env();
  switch (value.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return value.As<Napi::Boolean>().Value() ? "true of type boolean" : "false of type boolean";
    case napi_number:
    case napi_bigint: {
      napi_value str;
      if (napi_coerce_to_string(env, value, &str) != napi_ok) return "a number";
      return Napi::String(env, str).Utf8Value() + (value.IsNumber() ? " of type number" : " of type bigint");
    }
    case napi_string: {
      size_t len = 0;
      napi_get_value_string_utf16(env, value, nullptr, 0, &len);
      return "a string of length " + std::to_string(len);
    }
    case napi_object: {
      if (value.IsTypedArray()) {
        Napi::TypedArray array = value.As<Napi::TypedArray>();
        return std::string(TypedArrayName(array.TypedArrayType())) + " of length " + std::to_string(array.ByteLength());
      }
      if (value.IsDataView()) return "DataView of length " + std::to_string(value.As<Napi::DataView>().ByteLength());
      if (value.IsArray()) return "an array of length " + std::to_string(value.As<Napi::Array>().Length());
      return "a value of type object";
    }
    case napi_function: return "a value of type function";
    case napi_symbol: return "a value of type symbol";
    default: return "a value of type object";
  }
}

std::string Expected(const std::string& what, const std::string& argument, Napi::Value received) {
  return "Expected " + what + " for " + argument + " but received " + Describe(received);
}

// ---------------------------------------------------------------------------------------------
// Per-environment state

struct AddonData {
  std::shared_ptr<ThreadPool> pool;
  explicit AddonData(size_t threads) : pool(std::make_shared<ThreadPool>(threads)) {}
};

AddonData& Data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

size_t DefaultThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : std::min<size_t>(n, kMaxThreads);
}

// The object behind a cipher handle. `engine` is shared with async jobs so that dispose() or GC
// while a job runs cannot free the key schedule under it; the engine wipes itself when the last
// owner lets go.
struct CipherHandle {
  std::shared_ptr<const XtsEngine> engine;
  XtsImpl impl;
  unsigned keyBits;
};

// ---------------------------------------------------------------------------------------------
// Native-owned memory
//
// Pool threads must never hold pointers into memory JavaScript can take away: an ArrayBuffer can be
// detached (structuredClone/postMessage transfer, ArrayBuffer.prototype.transfer) or a resizable
// one shrunk while the work runs, and Node-API can pin a backing store against neither. So async
// work only touches Blocks: memory this addon allocated and frees when its last owner lets go
// (the JS buffer's finalizer, a job still running). allocateBuffer() hands a Block to JS as an
// external Buffer, which Node will not transfer or detach; the async calls recognise those by the
// address of their memory and work on them in place. Any other buffer is copied into a Block
// before the pool starts and copied back on the JS thread when it is done.

struct Bytes {
  uint8_t* data;
  size_t length;
  const uint8_t* base;  // start of the ArrayBuffer's memory: how native-owned buffers are recognised
};

// Memory for async work. Two kinds, because they are touched differently:
//  - scratch (Block(n)): copies of a caller's buffer, written in full by memcpy on the JS thread
//    right away, so warm heap memory that malloc recycles is best;
//  - zeroed (Block(n, Block::kZeroed)): allocateBuffer()'s, which the caller must see as zeros.
//    Large ones are mapped straight from the kernel, whose pages are zero already: clearing them
//    with memset on the JS thread would fault in every page there, one thread, before any pool
//    thread starts (measured: ~0.7 of a core on the JS thread for 4 buffers per pipeline run,
//    which left the pool idle). Untouched, each page is faulted in by whichever thread first
//    writes it: the pool threads, in parallel, or the reader filling the chunk.
struct Block {
  enum Zeroed { kZeroed };
  explicit Block(size_t n) : data(HeapAllocate(n)), size(n), mapped(false) {}
  Block(size_t n, Zeroed) : data(ZeroedAllocate(n)), size(n), mapped(UseMapping(n)) {}
  ~Block() {
#if VMSEAL_HAVE_MMAP
    if (mapped) {
      munmap(data, size);
      return;
    }
#endif
    ::operator delete(data, std::align_val_t(kBlockAlign));
  }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  uint8_t* const data;
  const size_t size;
  const bool mapped;  // from mmap (ZeroedAllocate), not the heap

 private:
  static bool UseMapping(size_t n) { return VMSEAL_HAVE_MMAP && n >= kMapMinBytes; }
  static uint8_t* HeapAllocate(size_t n) {
    return static_cast<uint8_t*>(::operator new(std::max<size_t>(n, 1), std::align_val_t(kBlockAlign)));
  }
  static uint8_t* ZeroedAllocate(size_t n) {
#if VMSEAL_HAVE_MMAP
    if (UseMapping(n)) {
      // Anonymous mappings are zero-filled by the kernel and page-aligned (so cache-line aligned).
      void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      return static_cast<uint8_t*>(p);
    }
#endif
    uint8_t* p = HeapAllocate(n);
    // The caller must never see what the heap held before (key schedules included).
    std::memset(p, 0, n);
    return p;
  }
};

// The Blocks that back live JS buffers, by address. One table for the process (a buffer belongs to
// one environment, but lookups need no per-environment state); never destroyed, because a
// finalizer may still run while the process exits.
struct BlockRegistry {
  std::mutex mu;
  std::unordered_map<const uint8_t*, std::weak_ptr<Block>> blocks;
};

BlockRegistry& Registry() {
  static BlockRegistry* registry = new BlockRegistry();
  return *registry;
}

// The Block that `bytes` lies in if its ArrayBuffer is one allocateBuffer() made, else null.
std::shared_ptr<Block> OwningBlock(const Bytes& bytes, size_t length) {
  if (bytes.base == nullptr) return nullptr;
  std::shared_ptr<Block> block;
  {
    BlockRegistry& registry = Registry();
    std::lock_guard<std::mutex> lock(registry.mu);
    auto it = registry.blocks.find(bytes.base);
    if (it != registry.blocks.end()) block = it->second.lock();
  }
  // The view must lie inside the Block (it always does for an undetachable, fixed-size buffer;
  // checked so that a mistake here degrades to the copying path, not to a wild write).
  if (block && (bytes.data < block->data || length > block->size ||
                static_cast<size_t>(bytes.data - block->data) > block->size - length)) {
    return nullptr;
  }
  return block;
}

// The external buffer's finalizer: forget the address first, then drop the buffer's share (the
// memory lives on while a job still holds the Block).
void FinalizeBlock(napi_env, void*, void* hint) {
  auto* owner = static_cast<std::shared_ptr<Block>*>(hint);
  {
    BlockRegistry& registry = Registry();
    std::lock_guard<std::mutex> lock(registry.mu);
    registry.blocks.erase((*owner)->data);
  }
  delete owner;
}

Napi::Value AllocateBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value value = info[0];
  static const std::string what = "an integer from 0 to " + std::to_string(kMaxBufferBytes);
  if (!value.IsNumber()) Throw(env, ErrorKind::kType, "ERR_INVALID_ARG_TYPE", Expected(what, "size", value));
  double d = value.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= static_cast<double>(kMaxBufferBytes)) || d != std::floor(d)) {
    Throw(env, ErrorKind::kRange, "ERR_OUT_OF_RANGE", Expected(what, "size", value));
  }
  const size_t size = static_cast<size_t>(d);
  auto block = std::make_shared<Block>(size, Block::kZeroed);
  auto owner = std::make_unique<std::shared_ptr<Block>>(block);
  {
    BlockRegistry& registry = Registry();
    std::lock_guard<std::mutex> lock(registry.mu);
    registry.blocks[block->data] = block;
  }
  napi_value result;
  if (napi_create_external_buffer(env, size, block->data, FinalizeBlock, owner.get(), &result) != napi_ok) {
    BlockRegistry& registry = Registry();
    std::lock_guard<std::mutex> lock(registry.mu);
    registry.blocks.erase(block->data);
    Throw(env, ErrorKind::kPlain, "ERR_XTS_NATIVE", "Could not create a native-owned buffer");
  }
  owner.release();  // the buffer's finalizer deletes it
  return Napi::Value(env, result);
}

// ---------------------------------------------------------------------------------------------
// Argument readers: each throws a JS error naming the argument.

// A Uint8Array argument. A detached one is refused by name: its length reads as 0 and its data as
// null, which would otherwise pass as an empty batch (or, for `out`, fail with a puzzling size).
Bytes GetBytes(Napi::Value value, const char* argument) {
  napi_env env = value.Env();
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Throw(env, ErrorKind::kType, "ERR_INVALID_ARG_TYPE", Expected("a Uint8Array", argument, value));
  }
  size_t length = 0, offset = 0, bufferLength = 0;
  void* data = nullptr;
  void* base = nullptr;
  napi_value buffer = nullptr;
  bool detached = false;
  if (napi_get_typedarray_info(env, value, nullptr, &length, &data, &buffer, &offset) != napi_ok ||
      napi_is_detached_arraybuffer(env, buffer, &detached) != napi_ok) {
    Throw(env, ErrorKind::kPlain, "ERR_XTS_NATIVE", std::string("Could not read the Uint8Array ") + argument);
  }
  if (detached) {
    Throw(env, ErrorKind::kType, "ERR_XTS_DETACHED",
          Expected("a Uint8Array whose ArrayBuffer is not detached", argument, value));
  }
  if (napi_get_arraybuffer_info(env, buffer, &base, &bufferLength) != napi_ok) {
    Throw(env, ErrorKind::kPlain, "ERR_XTS_NATIVE", std::string("Could not read the ArrayBuffer of ") + argument);
  }
  return {static_cast<uint8_t*>(data), length, static_cast<const uint8_t*>(base)};
}

// The cipher handle behind `value` (type-tagged, so a foreign object is refused), disposed or not.
CipherHandle* UnwrapCipher(Napi::Value value) {
  Napi::Env env = value.Env();
  void* raw = nullptr;
  if (!value.IsObject() || !value.As<Napi::Object>().CheckTypeTag(&kCipherTag) ||
      napi_unwrap(env, value, &raw) != napi_ok || raw == nullptr) {
    Throw(env, ErrorKind::kType, "ERR_INVALID_ARG_TYPE", Expected("a cipher handle made by createCipher", "cipher", value));
  }
  return static_cast<CipherHandle*>(raw);
}

// A cipher handle that can still encrypt: refuses a disposed one.
CipherHandle* GetCipher(Napi::Value value) {
  Napi::Env env = value.Env();
  CipherHandle* cipher = UnwrapCipher(value);
  if (!cipher->engine) {
    Throw(env, ErrorKind::kType, "ERR_XTS_DISPOSED", "The XTS cipher has been disposed; create a new one");
  }
  return cipher;
}

size_t GetUnitSize(Napi::Value value) {
  static const std::string what =
      "an integer from " + std::to_string(kMinUnitSize) + " to " + std::to_string(kMaxUnitSize);
  if (!value.IsNumber()) Throw(value.Env(), ErrorKind::kType, "ERR_INVALID_ARG_TYPE", Expected(what, "unitSize", value));
  double d = value.As<Napi::Number>().DoubleValue();
  if (!(d >= kMinUnitSize && d <= kMaxUnitSize) || d != std::floor(d)) {
    Throw(value.Env(), ErrorKind::kRange, "ERR_XTS_UNIT_SIZE", Expected(what, "unitSize", value));
  }
  return static_cast<size_t>(d);
}

uint64_t GetUnitNumber(Napi::Value value) {
  static const char* what = "a safe integer >= 0 or a bigint from 0 to 2^64-1";
  Napi::Env env = value.Env();
  if (value.IsNumber()) {
    double d = value.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= 9007199254740991.0) || d != std::floor(d)) {
      Throw(env, ErrorKind::kRange, "ERR_XTS_UNIT_NUMBER", Expected(what, "firstUnit", value));
    }
    return static_cast<uint64_t>(d);
  }
  if (value.IsBigInt()) {
    size_t words = 0;
    if (napi_get_value_bigint_words(env, value, nullptr, &words, nullptr) != napi_ok) {
      Throw(env, ErrorKind::kType, "ERR_INVALID_ARG_TYPE", Expected(what, "firstUnit", value));
    }
    int sign = 0;
    uint64_t word = 0;
    size_t count = 1;
    if (words > 1 || napi_get_value_bigint_words(env, value, &sign, &count, &word) != napi_ok ||
        (sign != 0 && word != 0)) {
      Throw(env, ErrorKind::kRange, "ERR_XTS_UNIT_NUMBER", Expected(what, "firstUnit", value));
    }
    return count == 0 ? 0 : word;
  }
  Throw(env, ErrorKind::kType, "ERR_INVALID_ARG_TYPE", Expected(what, "firstUnit", value));
}

uint32_t GetThreadCount(Napi::Value value, const char* argument) {
  static const std::string what = "an integer from 1 to " + std::to_string(kMaxThreads);
  if (!value.IsNumber()) Throw(value.Env(), ErrorKind::kType, "ERR_INVALID_ARG_TYPE", Expected(what, argument, value));
  double d = value.As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= kMaxThreads) || d != std::floor(d)) {
    Throw(value.Env(), ErrorKind::kRange, "ERR_OUT_OF_RANGE", Expected(what, argument, value));
  }
  return static_cast<uint32_t>(d);
}

bool Overlap(const uint8_t* a, const uint8_t* b, size_t length) {
  auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return length > 0 && x != y && x < y + length && y < x + length;
}

// A checked batch request: data split into `count` units of `unitSize` starting at `firstUnit`.
struct Batch {
  CipherHandle* cipher;
  Bytes in, out;
  size_t unitSize, count;
  uint64_t firstUnit;
};

Batch GetBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Batch b{};
  b.cipher = GetCipher(info[0]);
  b.in = GetBytes(info[1], "data");
  b.unitSize = GetUnitSize(info[2]);
  b.firstUnit = GetUnitNumber(info[3]);
  b.out = GetBytes(info[4], "out");
  if (b.in.length % b.unitSize != 0) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_LENGTH",
          Expected("a length that is a multiple of unitSize (" + std::to_string(b.unitSize) + ")", "data", info[1]));
  }
  if (b.out.length < b.in.length) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_OUT_TOO_SMALL",
          Expected("a Uint8Array of at least " + std::to_string(b.in.length) + " bytes", "out", info[4]));
  }
  if (Overlap(b.in.data, b.out.data, b.in.length)) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_OVERLAP",
          Expected("the same memory as data (in place) or memory that does not overlap it", "out", info[4]));
  }
  b.count = b.in.length / b.unitSize;
  if (b.count > 0 && b.firstUnit > UINT64_MAX - (b.count - 1)) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_UNIT_NUMBER",
          Expected("a unit number of at most " + std::to_string(UINT64_MAX - (b.count - 1)) + " (data holds " +
                       std::to_string(b.count) + " units)",
                   "firstUnit", info[3]));
  }
  return b;
}

// Every JS entry point goes through Entry<F>: it turns anything C++ throws into a pending JS
// exception. Not node-addon-api's own wrapper, because that rethrows a C++ exception (and so
// calls std::terminate) when napi_throw fails, which happens while a worker thread is being
// terminated; here such a failure is ignored, as there is no JS left to throw to.
void ThrowQuietly(napi_env env, napi_value error) {
  bool pending = false;
  if (error != nullptr && napi_is_exception_pending(env, &pending) == napi_ok && !pending) napi_throw(env, error);
}

void ThrowQuietly(napi_env env, const char* code, const char* message) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && !pending) napi_throw_error(env, code, message);
}

using EntryFn = Napi::Value (*)(const Napi::CallbackInfo&);

template <EntryFn F>
napi_value Entry(napi_env env, napi_callback_info cbinfo) {
  try {
    Napi::CallbackInfo info(env, cbinfo);
    return F(info);
  } catch (const Napi::Error& e) {
    ThrowQuietly(env, e.IsEmpty() ? nullptr : static_cast<napi_value>(e.Value()));
  } catch (const std::bad_alloc&) {
    ThrowQuietly(env, "ERR_XTS_NATIVE", "Out of memory in the native XTS addon");
  } catch (const std::exception& e) {
    ThrowQuietly(env, "ERR_XTS_NATIVE", e.what());
  } catch (...) {
    ThrowQuietly(env, "ERR_XTS_NATIVE", "Unexpected failure in the native XTS addon");
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Cipher handles

void FinalizeCipher(napi_env, void* data, void*) {
  // GC of the handle: drop our share of the engine (the engine's destructor wipes the schedule).
  delete static_cast<CipherHandle*>(data);
}

Napi::Value CreateCipher(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value keyValue = info[0];
  Bytes key = GetBytes(keyValue, "key");
  if (key.length != kKeyBytes128 && key.length != kKeyBytes256) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_KEY_LENGTH",
          Expected("a key of 32 bytes (XTS-AES-128) or 64 bytes (XTS-AES-256)", "key", keyValue));
  }
  // Key1 == Key2 makes XTS degenerate (IEEE 1619-2018 forbids it). Compare without early exit.
  const size_t half = key.length / 2;
  uint8_t diff = 0;
  for (size_t i = 0; i < half; i++) diff |= key.data[i] ^ key.data[half + i];
  if (diff == 0) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_WEAK_KEY",
          "Expected a key whose two halves differ for key but received one with equal halves");
  }

  XtsImpl impl = BestXtsImpl();
  Napi::Value implValue = info[1];
  if (!implValue.IsUndefined()) {
    static const char* what = "one of \"vaes-avx512\", \"vaes-avx2\", \"aesni\", \"portable\"";
    if (!implValue.IsString()) Throw(env, ErrorKind::kType, "ERR_INVALID_ARG_TYPE", Expected(what, "implementation", implValue));
    char name[32];
    size_t len = 0;
    napi_get_value_string_utf8(env, implValue, name, sizeof name, &len);
    if (len >= sizeof name - 1 || !ParseXtsImpl(std::string(name, len), &impl)) {
      Throw(env, ErrorKind::kType, "ERR_INVALID_ARG_VALUE", Expected(what, "implementation", implValue));
    }
    if (!XtsImplAvailable(impl)) {
      std::string available;
      for (XtsImpl a : AvailableXtsImpls()) available += std::string(available.empty() ? "" : ", ") + XtsImplName(a);
      Throw(env, ErrorKind::kPlain, "ERR_XTS_IMPL_UNAVAILABLE",
            std::string("The XTS implementation \"") + XtsImplName(impl) +
                "\" is not available on this CPU/OS (available: " + available + ")");
    }
  }

  std::unique_ptr<XtsEngine> engine = CreateXtsEngine(impl, key.data, key.length);
  if (!engine) Throw(env, ErrorKind::kPlain, "ERR_XTS_NATIVE", "The native XTS engine could not be created");
  auto handle = std::make_unique<CipherHandle>();
  handle->engine = std::shared_ptr<const XtsEngine>(std::move(engine));
  handle->impl = impl;
  handle->keyBits = key.length == kKeyBytes128 ? 128 : 256;

  Napi::Object object = Napi::Object::New(env);
  object.TypeTag(&kCipherTag);
  napi_status status = napi_wrap(env, object, handle.get(), FinalizeCipher, nullptr, nullptr);
  if (status != napi_ok) Throw(env, ErrorKind::kPlain, "ERR_XTS_NATIVE", "Could not wrap the native XTS cipher");
  handle.release();  // owned by the JS object now
  return object;
}

Napi::Value Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  UnwrapCipher(info[0])->engine.reset();
  return env.Undefined();
}

Napi::Value CipherInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CipherHandle* cipher = UnwrapCipher(info[0]);
  Napi::Object result = Napi::Object::New(env);
  result.Set("implementation", XtsImplName(cipher->impl));
  result.Set("keyBits", cipher->keyBits);
  result.Set("disposed", !cipher->engine);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Sync calls

Napi::Value RunBatch(const Napi::CallbackInfo& info, bool encrypt) {
  Batch b = GetBatch(info);
  if (b.count > 0) {
    if (encrypt) b.cipher->engine->EncryptUnits(b.in.data, b.out.data, b.unitSize, b.count, b.firstUnit);
    else b.cipher->engine->DecryptUnits(b.in.data, b.out.data, b.unitSize, b.count, b.firstUnit);
  }
  return info.Env().Undefined();
}

Napi::Value RunUnit(const Napi::CallbackInfo& info, bool encrypt) {
  Napi::Env env = info.Env();
  CipherHandle* cipher = GetCipher(info[0]);
  Bytes in = GetBytes(info[1], "data");
  Bytes tweak = GetBytes(info[2], "tweak");
  Bytes out = GetBytes(info[3], "out");
  if (in.length < kMinUnitSize || in.length > kMaxUnitSize) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_UNIT_SIZE",
          Expected("a data unit of " + std::to_string(kMinUnitSize) + " to " + std::to_string(kMaxUnitSize) + " bytes",
                   "data", info[1]));
  }
  if (tweak.length != 16) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_TWEAK_LENGTH", Expected("a Uint8Array of 16 bytes", "tweak", info[2]));
  }
  if (out.length < in.length) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_OUT_TOO_SMALL",
          Expected("a Uint8Array of at least " + std::to_string(in.length) + " bytes", "out", info[3]));
  }
  if (Overlap(in.data, out.data, in.length)) {
    Throw(env, ErrorKind::kRange, "ERR_XTS_OVERLAP",
          Expected("the same memory as data (in place) or memory that does not overlap it", "out", info[3]));
  }
  // The tweak may alias data or out: copy it first.
  uint8_t t[16];
  std::memcpy(t, tweak.data, 16);
  if (encrypt) cipher->engine->EncryptWithTweak(in.data, out.data, in.length, t);
  else cipher->engine->DecryptWithTweak(in.data, out.data, in.length, t);
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------
// Async batches
//
// One AsyncJob per call: the batch is split into chunks of whole units, one pool task each. The
// last task to finish signals the JS thread through a thread-safe function (TSFN), which copies
// the result back if need be, settles the promise and drops the references to `data` and `out`.
//
// The pool reads and writes Blocks only (see "Native-owned memory"): `data` and `out` in place
// when allocateBuffer() made them, else copies. A copied-out result is written to `out` on the JS
// thread at completion, after checking that `out` is still attached and still large enough (the
// caller may have transferred or shrunk it meanwhile); if not, the promise rejects and nothing is
// written.
//
// Environment teardown (worker terminated, process exiting) while tasks are in flight: Node
// finalizes the TSFN; our finalizer marks the job cancelled and waits for running tasks, so no
// task touches the TSFN after that. Tasks that had not started skip their work. The Blocks live
// until the job itself is gone, whatever order Node finalizes things in.

struct AsyncJob {
  std::shared_ptr<const XtsEngine> engine;
  std::shared_ptr<Block> inBlock, outBlock;  // keep the memory the tasks use alive
  const uint8_t* in = nullptr;               // inside inBlock
  uint8_t* out = nullptr;                    // inside outBlock
  size_t bytes = 0;
  size_t unitSize = 0;
  uint64_t firstUnit = 0;
  bool encrypt = true;
  bool copyBack = false;  // `out` is not native-owned: copy outBlock into it at completion

  // JS-thread-only.
  napi_env env = nullptr;
  napi_deferred deferred = nullptr;
  napi_ref dataRef = nullptr;
  napi_ref outRef = nullptr;
  napi_threadsafe_function tsfn = nullptr;

  // Shared with the pool threads.
  std::mutex mu;
  std::condition_variable cv;
  size_t remaining = 0;   // tasks not yet finished or skipped
  size_t running = 0;     // tasks inside the engine right now
  bool cancelled = false; // the TSFN is finalized: do not touch it
  bool skipped = false;   // some task did not run (pool shut down)

  void DropReferences(napi_env e) {
    if (dataRef) napi_delete_reference(e, dataRef);
    if (outRef) napi_delete_reference(e, outRef);
    dataRef = outRef = nullptr;
  }
};

void RejectWithCode(napi_env env, napi_deferred deferred, const char* code, const std::string& text) {
  napi_value message, codeValue, error;
  napi_create_string_utf8(env, text.c_str(), text.size(), &message);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &codeValue);
  napi_create_error(env, codeValue, message, &error);
  napi_reject_deferred(env, deferred, error);
}

// Copies a finished result into the caller's `out`; returns the error code if `out` can no longer
// take it (then nothing is written). Runs on the JS thread, so `out` cannot change meanwhile.
const char* CopyBack(napi_env env, AsyncJob* job, std::string* message) {
  napi_value out = nullptr, buffer = nullptr;
  size_t length = 0;
  void* data = nullptr;
  bool detached = false;
  if (napi_get_reference_value(env, job->outRef, &out) != napi_ok || out == nullptr ||
      napi_get_typedarray_info(env, out, nullptr, &length, &data, &buffer, nullptr) != napi_ok ||
      napi_is_detached_arraybuffer(env, buffer, &detached) != napi_ok) {
    *message = "Could not read the output Uint8Array of async XTS work";
    return "ERR_XTS_NATIVE";
  }
  if (detached) {
    *message = "The ArrayBuffer of out was detached (transferred) while async XTS work ran; nothing was written";
    return "ERR_XTS_DETACHED";
  }
  if (length < job->bytes || data == nullptr) {
    *message = "out shrank to " + std::to_string(length) + " bytes while async XTS work ran (it needs " +
               std::to_string(job->bytes) + "); nothing was written";
    return "ERR_XTS_RESIZED";
  }
  std::memcpy(data, job->out, job->bytes);
  return nullptr;
}

// Runs on the JS thread when the last task is done (env == nullptr: the environment is going away).
void SettleJob(napi_env env, napi_value, void* context, void*) {
  AsyncJob* job = static_cast<AsyncJob*>(context);
  if (env == nullptr || job->deferred == nullptr) return;
  napi_deferred deferred = job->deferred;
  job->deferred = nullptr;
  std::string message;
  const char* failure = nullptr;
  if (job->skipped) {
    failure = "ERR_XTS_CANCELLED";
    message = "The XTS thread pool did not run the work (it was shut down, or no thread could start)";
  } else if (job->copyBack) {
    failure = CopyBack(env, job, &message);
  }
  // Every task has finished: the memory can go now rather than when Node finalizes the TSFN.
  job->DropReferences(env);
  job->engine.reset();
  job->inBlock.reset();
  job->outBlock.reset();
  if (failure != nullptr) {
    RejectWithCode(env, deferred, failure, message);
  } else {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, deferred, undefined);
  }
}

// TSFN finalizer: runs on the JS thread after the TSFN is released, or at environment teardown.
void FinalizeJob(napi_env env, void* data, void*) {
  auto* owner = static_cast<std::shared_ptr<AsyncJob>*>(data);
  AsyncJob* job = owner->get();
  {
    std::unique_lock<std::mutex> lock(job->mu);
    job->cancelled = true;
    job->cv.wait(lock, [&] { return job->running == 0; });
  }
  job->DropReferences(env);
  delete owner;
}

void RunChunk(const std::shared_ptr<AsyncJob>& job, size_t firstIndex, size_t units, bool poolCancelled) {
  bool run;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    run = !poolCancelled && !job->cancelled;
    if (run) job->running++;
  }
  if (run) {
    const size_t offset = firstIndex * job->unitSize;
    if (job->encrypt) {
      job->engine->EncryptUnits(job->in + offset, job->out + offset, job->unitSize, units, job->firstUnit + firstIndex);
    } else {
      job->engine->DecryptUnits(job->in + offset, job->out + offset, job->unitSize, units, job->firstUnit + firstIndex);
    }
  }
  std::lock_guard<std::mutex> lock(job->mu);
  if (run) job->running--;
  else job->skipped = true;
  if (--job->remaining == 0 && !job->cancelled) {
    // Still under the lock: FinalizeJob cannot complete (and Node cannot free the TSFN) meanwhile.
    napi_call_threadsafe_function(job->tsfn, nullptr, napi_tsfn_nonblocking);
    napi_release_threadsafe_function(job->tsfn, napi_tsfn_release);
  }
  job->cv.notify_all();
}

// Points the job at native-owned memory for `data` and `out`: in place where allocateBuffer() made
// them, else a copy of `data` (taken now, on the JS thread) and a scratch Block for the result.
void PlaceBuffers(AsyncJob& job, const Batch& b) {
  const size_t bytes = job.bytes;
  job.inBlock = OwningBlock(b.in, bytes);
  if (job.inBlock) {
    job.in = b.in.data;
  } else {
    job.inBlock = std::make_shared<Block>(bytes);
    std::memcpy(job.inBlock->data, b.in.data, bytes);
    job.in = job.inBlock->data;
  }
  job.outBlock = OwningBlock(b.out, bytes);
  if (job.outBlock) {
    job.out = b.out.data;
  } else {
    // In place on a copy: the copy of `data` takes the result too.
    job.outBlock = b.in.data == b.out.data ? job.inBlock : std::make_shared<Block>(bytes);
    job.out = b.in.data == b.out.data ? const_cast<uint8_t*>(job.in) : job.outBlock->data;
    job.copyBack = true;
  }
}

Napi::Value RunBatchAsync(const Napi::CallbackInfo& info, bool encrypt) {
  Napi::Env env = info.Env();
  Batch b = GetBatch(info);
  AddonData& addon = Data(env);
  size_t threads = info[5].IsUndefined() ? addon.pool->size() : GetThreadCount(info[5], "threads");

  napi_deferred deferred;
  napi_value promise;
  if (b.count == 0) {
    NAPI_THROW_IF_FAILED(env, napi_create_promise(env, &deferred, &promise), Napi::Value());
    napi_resolve_deferred(env, deferred, env.Undefined());
    return Napi::Value(env, promise);
  }

  auto job = std::make_shared<AsyncJob>();
  job->engine = b.cipher->engine;
  job->bytes = b.count * b.unitSize;
  job->unitSize = b.unitSize;
  job->firstUnit = b.firstUnit;
  job->encrypt = encrypt;
  job->env = env;
  PlaceBuffers(*job, b);  // may throw (out of memory) before anything else is set up
  NAPI_THROW_IF_FAILED(env, napi_create_promise(env, &deferred, &promise), Napi::Value());
  job->deferred = deferred;
  // Keep both buffers alive until the job settles: `out` is written at completion when copied,
  // and a native-owned buffer need not be collected early.
  if (napi_create_reference(env, info[1], 1, &job->dataRef) != napi_ok ||
      napi_create_reference(env, info[4], 1, &job->outRef) != napi_ok) {
    job->DropReferences(env);
    job->deferred = nullptr;
    RejectWithCode(env, deferred, "ERR_XTS_NATIVE", "Could not keep the buffers of async XTS work alive");
    return Napi::Value(env, promise);
  }

  const size_t bytes = job->bytes;
  size_t chunks = std::min<size_t>({threads, b.count, std::max<size_t>(1, bytes / kMinChunkBytes)});
  job->remaining = chunks;

  auto* owner = new std::shared_ptr<AsyncJob>(job);
  napi_value name = Napi::String::New(env, "vmseal.xts");
  napi_status status = napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, owner, FinalizeJob,
                                                       job.get(), SettleJob, &job->tsfn);
  if (status != napi_ok) {
    job->DropReferences(env);
    delete owner;
    job->deferred = nullptr;
    napi_value error = Napi::Error::New(env, "Could not create the completion callback for async XTS work").Value();
    napi_reject_deferred(env, deferred, error);
    return Napi::Value(env, promise);
  }

  std::vector<ThreadPool::Task> tasks;
  tasks.reserve(chunks);
  const size_t base = b.count / chunks, extra = b.count % chunks;
  size_t index = 0;
  for (size_t c = 0; c < chunks; c++) {
    size_t units = base + (c < extra ? 1 : 0);
    tasks.emplace_back([job, index, units](bool cancelled) { RunChunk(job, index, units, cancelled); });
    index += units;
  }
  bool queued = false;
  try {
    queued = addon.pool->Submit(std::move(tasks));
  } catch (const std::exception&) {
    queued = false;  // no worker thread could be started: settle as cancelled rather than hang
  }
  if (!queued) {
    // The environment is shutting down (or no thread could start): settle now as cancelled.
    std::lock_guard<std::mutex> lock(job->mu);
    job->skipped = true;
    job->remaining = 0;
    napi_call_threadsafe_function(job->tsfn, nullptr, napi_tsfn_nonblocking);
    napi_release_threadsafe_function(job->tsfn, napi_tsfn_release);
  }
  return Napi::Value(env, promise);
}

// ---------------------------------------------------------------------------------------------
// Feature report and pool size

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object result = Napi::Object::New(env);
  result.Set("best", XtsImplName(BestXtsImpl()));
  std::vector<XtsImpl> available = AvailableXtsImpls();
  Napi::Array list = Napi::Array::New(env, available.size());
  for (size_t i = 0; i < available.size(); i++) list.Set(static_cast<uint32_t>(i), XtsImplName(available[i]));
  result.Set("available", list);
  Napi::Array all = Napi::Array::New(env, 4);
  const XtsImpl known[] = {XtsImpl::kVaesAvx512, XtsImpl::kVaesAvx2, XtsImpl::kAesni, XtsImpl::kPortable};
  for (uint32_t i = 0; i < 4; i++) all.Set(i, XtsImplName(known[i]));
  result.Set("implementations", all);
  const CpuFeatures& f = GetCpuFeatures();
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("aes", f.aes);
  cpu.Set("pclmulqdq", f.pclmulqdq);
  cpu.Set("sse41", f.sse41);
  cpu.Set("avx", f.avx);
  cpu.Set("avx2", f.avx2);
  cpu.Set("vaes", f.vaes);
  cpu.Set("vpclmulqdq", f.vpclmulqdq);
  cpu.Set("avx512f", f.avx512f);
  cpu.Set("avx512vl", f.avx512vl);
  cpu.Set("avx512bw", f.avx512bw);
  cpu.Set("osAvx", f.osAvx);
  cpu.Set("osAvx512", f.osAvx512);
  result.Set("cpu", cpu);
  result.Set("threads", static_cast<double>(Data(env).pool->size()));
  return result;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  Data(info.Env()).pool->Resize(GetThreadCount(info[0], "threads"));
  return info.Env().Undefined();
}

Napi::Value GetThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Data(info.Env()).pool->size()));
}

// ---------------------------------------------------------------------------------------------
// Module

// The hook owns its own reference to the pool: Node may delete the instance data first.
void ShutdownPool(void* arg) {
  auto* pool = static_cast<std::shared_ptr<ThreadPool>*>(arg);
  (*pool)->Shutdown();
  delete pool;
}

template <Napi::Value (*F)(const Napi::CallbackInfo&, bool), bool Encrypt>
Napi::Value Directional(const Napi::CallbackInfo& info) {
  return F(info, Encrypt);
}

void Export(napi_env env, napi_value exports, const char* name, napi_callback cb) {
  napi_value fn;
  NAPI_THROW_IF_FAILED_VOID(env, napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, nullptr, &fn));
  NAPI_THROW_IF_FAILED_VOID(env, napi_set_named_property(env, exports, name, fn));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Instance data (deleted by Node when this environment goes away) and a cleanup hook that joins
  // the pool's threads before the environment's memory is torn down.
  auto* data = new AddonData(DefaultThreads());
  env.SetInstanceData<AddonData>(data);
  napi_add_env_cleanup_hook(env, ShutdownPool, new std::shared_ptr<ThreadPool>(data->pool));

  Export(env, exports, "createCipher", Entry<CreateCipher>);
  Export(env, exports, "dispose", Entry<Dispose>);
  Export(env, exports, "cipherInfo", Entry<CipherInfo>);
  Export(env, exports, "encrypt", Entry<Directional<RunBatch, true>>);
  Export(env, exports, "decrypt", Entry<Directional<RunBatch, false>>);
  Export(env, exports, "encryptAsync", Entry<Directional<RunBatchAsync, true>>);
  Export(env, exports, "decryptAsync", Entry<Directional<RunBatchAsync, false>>);
  Export(env, exports, "encryptUnit", Entry<Directional<RunUnit, true>>);
  Export(env, exports, "decryptUnit", Entry<Directional<RunUnit, false>>);
  Export(env, exports, "allocateBuffer", Entry<AllocateBuffer>);
  Export(env, exports, "info", Entry<Info>);
  Export(env, exports, "setThreads", Entry<SetThreads>);
  Export(env, exports, "getThreads", Entry<GetThreads>);
  exports.Set("KEY_BYTES_128", static_cast<double>(kKeyBytes128));
  exports.Set("KEY_BYTES_256", static_cast<double>(kKeyBytes256));
  exports.Set("MIN_UNIT_SIZE", static_cast<double>(kMinUnitSize));
  exports.Set("MAX_UNIT_SIZE", static_cast<double>(kMaxUnitSize));
  exports.Set("MAX_THREADS", static_cast<double>(kMaxThreads));
  InitFileLocks(env, exports);
  InitFileExtents(env, exports);
  InitFileWriteback(env, exports);
  InitFileNowait(env, exports);
  InitFileCopy(env, exports);
  InitFileTransfer(env, exports);
  InitBackupChunks(env, exports);
  return exports;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Lent to the other N-API sources (addon_access.h)

std::shared_ptr<const XtsEngine> CipherEngineArg(Napi::Value value) { return GetCipher(value)->engine; }

std::shared_ptr<uint8_t> NativeOwnedArg(Napi::Value value, const char* argument, size_t* length) {
  Bytes bytes = GetBytes(value, argument);
  std::shared_ptr<Block> block = OwningBlock(bytes, bytes.length);
  if (!block) {
    Throw(value.Env(), ErrorKind::kType, "ERR_INVALID_ARG_VALUE",
          Expected("a Uint8Array over memory from allocateBuffer", argument, value));
  }
  *length = bytes.length;
  return std::shared_ptr<uint8_t>(block, bytes.data);  // aliasing: owns the block, points at the view
}

size_t UnitSizeArg(Napi::Value value) { return GetUnitSize(value); }
uint64_t UnitNumberArg(Napi::Value value) { return GetUnitNumber(value); }

}  // namespace vmseal

// The module entry point (also per environment: main thread and each worker), guarded like Entry.
NAPI_MODULE_INIT() {
  try {
    return vmseal::Init(Napi::Env(env), Napi::Object(env, exports));
  } catch (const Napi::Error& e) {
    vmseal::ThrowQuietly(env, e.IsEmpty() ? nullptr : static_cast<napi_value>(e.Value()));
  } catch (const std::exception& e) {
    vmseal::ThrowQuietly(env, "ERR_XTS_NATIVE", e.what());
  }
  return nullptr;
}
