// Private declarations shared by the AES-XTS kernel files (not part of the glue contract).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "xts_engine.h"

// VMSEAL_NO_X86_KERNELS builds only the portable engine even on x86-64 (used by the standalone
// tests to check the non-x86 build).
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(VMSEAL_NO_X86_KERNELS)
#define VMSEAL_X86_64 1
#else
#define VMSEAL_X86_64 0
#endif

// Per-function ISA targets. GCC and Clang compile a function marked this way with the extra
// instruction sets even though the translation unit uses the default flags; MSVC needs nothing.
// Only our own functions carry the attribute, so no inline or template code shared with other
// translation units (the standard library) is ever emitted with a wider ISA.
#if defined(__GNUC__) || defined(__clang__)
#define VMSEAL_TARGET(isa) __attribute__((target(isa)))
#define VMSEAL_INLINE inline __attribute__((always_inline))
#define VMSEAL_NOINLINE __attribute__((noinline))
#define VMSEAL_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define VMSEAL_UNROLL VMSEAL_PRAGMA(unroll)
#else
#define VMSEAL_UNROLL VMSEAL_PRAGMA(GCC unroll 16)
#endif
#else
#define VMSEAL_TARGET(isa)
#define VMSEAL_INLINE __forceinline
#define VMSEAL_NOINLINE __declspec(noinline)
#define VMSEAL_UNROLL
#endif

namespace vmseal {
namespace internal {

// Engine factories, one per implementation file. The x86 ones return nullptr on other
// architectures. Key length is checked by CreateXtsEngine; CPU support by the caller.
std::unique_ptr<XtsEngine> CreatePortableXtsEngine(const uint8_t* key, size_t keyLen);
std::unique_ptr<XtsEngine> CreateAesniXtsEngine(const uint8_t* key, size_t keyLen);
std::unique_ptr<XtsEngine> CreateVaesAvx2XtsEngine(const uint8_t* key, size_t keyLen);
std::unique_ptr<XtsEngine> CreateVaesAvx512XtsEngine(const uint8_t* key, size_t keyLen);

// Expanded AES round keys for one XTS key as 16-byte rows, produced with AES-NI (aeskeygenassist,
// aesimc) by xts_aesni.cc and reused by the VAES engines, which widen each row to 32/64 bytes.
//   enc1: Key1 encryption schedule, rows 0..rounds
//   dec1: Key1 "equivalent inverse cipher" schedule for aesdec: row 0 = enc1[rounds],
//         rows 1..rounds-1 = InvMixColumns(enc1[rounds - i]), row rounds = enc1[0]
//   enc2: Key2 encryption schedule (tweaks are only ever encrypted)
struct AesniKeySchedule {
  alignas(64) uint8_t enc1[15 * 16];
  alignas(64) uint8_t dec1[15 * 16];
  alignas(64) uint8_t enc2[15 * 16];
  int rounds;  // 10 (XTS-AES-128) or 14 (XTS-AES-256)
};
// Requires AES-NI; keyLen is 32 or 64. The caller wipes *out when done.
void AesniExpandXtsKey(const uint8_t* key, size_t keyLen, AesniKeySchedule* out);

// Zero a (stack) buffer that held tweak or key material, as one memset the compiler must keep;
// cheaper than SecureWipe's byte loop in per-call paths.
inline void WipeBuffer(void* p, size_t n) {
#if defined(__GNUC__) || defined(__clang__)
  std::memset(p, 0, n);
  __asm__ __volatile__("" : : "r"(p) : "memory");
#else
  SecureWipe(p, n);
#endif
}

// The 16-byte tweak block of data unit n: n as a 128-bit little-endian integer.
inline void UnitTweakBytes(uint64_t n, uint8_t out[16]) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memset(out + 8, 0, 8);
}

// Round keys of one XTS key for the VAES engines: each 16-byte row of an AesniKeySchedule repeated
// kLanes times, so that one aligned load gives the round key in every 128-bit lane (2: ymm, 4: zmm).
template <int kLanes>
struct WideSchedule {
  alignas(64) uint8_t enc1[15 * 16 * kLanes];
  alignas(64) uint8_t dec1[15 * 16 * kLanes];
  alignas(64) uint8_t enc2[15 * 16 * kLanes];
  int rounds;
};

// The XtsEngine of a VAES kernel family. It expands the key once with AES-NI, widens it to kLanes,
// wipes it on destruction, and picks the kernels' instantiation for the round count, so each ISA
// file holds only its kernels. Kernels provides, for NR in {10, 14}:
//   template <int NR, bool ENC> static void Units(const WideSchedule<kLanes>&, const uint8_t* in,
//       uint8_t* out, size_t unitSize, size_t count, uint64_t firstUnit);
//   template <int NR, bool ENC> static void WithTweak(const WideSchedule<kLanes>&, const uint8_t* in,
//       uint8_t* out, size_t len, const uint8_t tweak[16]);
template <int kLanes, XtsImpl kImpl, class Kernels>
class WideXtsEngine final : public XtsEngine {
 public:
  WideXtsEngine(const uint8_t* key, size_t keyLen) {
    AesniKeySchedule narrow;
    AesniExpandXtsKey(key, keyLen, &narrow);
    for (int r = 0; r < 15; ++r) {
      for (int lane = 0; lane < kLanes; ++lane) {
        std::memcpy(ks_.enc1 + 16 * kLanes * r + 16 * lane, narrow.enc1 + 16 * r, 16);
        std::memcpy(ks_.dec1 + 16 * kLanes * r + 16 * lane, narrow.dec1 + 16 * r, 16);
        std::memcpy(ks_.enc2 + 16 * kLanes * r + 16 * lane, narrow.enc2 + 16 * r, 16);
      }
    }
    ks_.rounds = narrow.rounds;
    SecureWipe(&narrow, sizeof(narrow));
  }
  ~WideXtsEngine() override { SecureWipe(&ks_, sizeof(ks_)); }
  XtsImpl impl() const override { return kImpl; }

  void EncryptUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                    uint64_t firstUnit) const override {
    RunUnits<true>(in, out, unitSize, count, firstUnit);
  }
  void DecryptUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                    uint64_t firstUnit) const override {
    RunUnits<false>(in, out, unitSize, count, firstUnit);
  }
  void EncryptWithTweak(const uint8_t* in, uint8_t* out, size_t len,
                        const uint8_t tweak[16]) const override {
    RunWithTweak<true>(in, out, len, tweak);
  }
  void DecryptWithTweak(const uint8_t* in, uint8_t* out, size_t len,
                        const uint8_t tweak[16]) const override {
    RunWithTweak<false>(in, out, len, tweak);
  }

 private:
  template <bool ENC>
  void RunUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                uint64_t firstUnit) const {
    if (ks_.rounds == 14) {
      Kernels::template Units<14, ENC>(ks_, in, out, unitSize, count, firstUnit);
    } else {
      Kernels::template Units<10, ENC>(ks_, in, out, unitSize, count, firstUnit);
    }
  }
  template <bool ENC>
  void RunWithTweak(const uint8_t* in, uint8_t* out, size_t len, const uint8_t tweak[16]) const {
    if (ks_.rounds == 14) {
      Kernels::template WithTweak<14, ENC>(ks_, in, out, len, tweak);
    } else {
      Kernels::template WithTweak<10, ENC>(ks_, in, out, len, tweak);
    }
  }

  WideSchedule<kLanes> ks_;
};

}  // namespace internal
}  // namespace vmseal
