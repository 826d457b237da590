// The contract between the N-API glue (addon.cc, thread pool) and the AES-XTS kernels.
//
// An XtsEngine holds one expanded XTS key (Key1 schedule for data, both directions; Key2 schedule
// for tweaks) for one implementation. It owns that memory and wipes it in its destructor. Nothing
// else in the addon keeps a copy of key bytes: callers pass the raw key to CreateXtsEngine and wipe
// their own copy.
//
// Conventions (IEEE 1619 / dm-crypt aes-xts-plain64):
//  - key = Key1 || Key2; 32 bytes (XTS-AES-128) or 64 bytes (XTS-AES-256).
//  - Data unit number n is the tweak as a 128-bit little-endian integer: bytes 0..7 = n (LE), 8..15 = 0.
//  - A unit of length L >= 16 that is not a multiple of 16 uses ciphertext stealing (IEEE 1619 §5.3).
//  - in and out may be the same pointer (in place); partial overlap is not allowed.
//  - Engines are immutable after construction and safe to use from several threads at once.
//
// Source files of the AES-XTS core (owned by the kernels helper; list them all in binding.gyp and
// CMakeLists.txt; every file compiles with the addon's default flags: ISA-specific functions carry
// __attribute__((target(...))), so no per-file compiler flags are needed):
//   native/cpu_features.cc      CPUID + XGETBV feature detection
//   native/xts_dispatch.cc      XtsImplName/ParseXtsImpl/Available/Best/CreateXtsEngine/SecureWipe
//   native/aes_portable.cc      constant-time bitsliced AES (no secret-indexed tables)
//   native/xts_portable.cc      XTS on top of aes_portable (any architecture)
//   native/xts_aesni.cc         AES-NI (xmm, legacy SSE encoding) engine + shared key expansion
//   native/xts_vaes_avx2.cc     VAES + VPCLMULQDQ on ymm (AVX2)
//   native/xts_vaes_avx512.cc   VAES + VPCLMULQDQ on zmm (AVX-512 F/VL/BW)
// Private headers: native/xts_internal.h, native/aes_portable.h.
// Standalone tests and micro-benchmarks: native/test/ (make -C native/test check|bench).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vmseal {

enum class XtsImpl { kPortable = 0, kAesni = 1, kVaesAvx2 = 2, kVaesAvx512 = 3 };

// "portable", "aesni", "vaes-avx2", "vaes-avx512".
const char* XtsImplName(XtsImpl impl);
bool ParseXtsImpl(const std::string& name, XtsImpl* out);

struct CpuFeatures {
  bool aes = false, pclmulqdq = false, sse41 = false, avx = false, avx2 = false;
  bool vaes = false, vpclmulqdq = false, avx512f = false, avx512vl = false, avx512bw = false;
  bool osAvx = false;     // XCR0 has XMM|YMM state enabled
  bool osAvx512 = false;  // XCR0 has opmask|ZMM_Hi256|Hi16_ZMM state enabled
  // Intel Ice Lake / Tiger Lake: 512-bit instructions lower the clock there, so the 256-bit VAES
  // kernel is ranked first (the Linux kernel's zmm exclusion list makes the same call).
  bool preferYmm = false;
};

// Read once (CPUID + XGETBV); all-false on non-x86 builds.
const CpuFeatures& GetCpuFeatures();

// Implementations this CPU and OS can run, fastest first (vaes-avx2 before vaes-avx512 when
// preferYmm). Always contains kPortable.
std::vector<XtsImpl> AvailableXtsImpls();
bool XtsImplAvailable(XtsImpl impl);
// The fastest available one.
XtsImpl BestXtsImpl();

class XtsEngine {
 public:
  virtual ~XtsEngine() = default;
  virtual XtsImpl impl() const = 0;
  // Encrypt/decrypt `count` consecutive units of `unitSize` bytes; unit i uses tweak firstUnit + i.
  // Preconditions (checked by the caller): unitSize >= 16, firstUnit + count - 1 does not overflow.
  virtual void EncryptUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                            uint64_t firstUnit) const = 0;
  virtual void DecryptUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                            uint64_t firstUnit) const = 0;
  // One unit of `len` >= 16 bytes with an explicit 16-byte tweak (before encryption under Key2).
  virtual void EncryptWithTweak(const uint8_t* in, uint8_t* out, size_t len,
                                const uint8_t tweak[16]) const = 0;
  virtual void DecryptWithTweak(const uint8_t* in, uint8_t* out, size_t len,
                                const uint8_t tweak[16]) const = 0;
};

// Build an engine for `impl` from a 32- or 64-byte key. Returns nullptr if keyLen is wrong or the
// implementation is not available on this CPU (the glue checks both first and throws JS errors).
// Does not check for equal halves (the glue does).
std::unique_ptr<XtsEngine> CreateXtsEngine(XtsImpl impl, const uint8_t* key, size_t keyLen);

// Overwrite memory in a way the compiler cannot elide.
void SecureWipe(void* p, size_t n);

}  // namespace vmseal
