// XTS-AES with VAES + VPCLMULQDQ on 256-bit registers (AVX2; no AVX-512 instructions), for CPUs
// with VAES but without (or with slow) AVX-512, e.g. AMD Zen 3 and Intel Alder Lake.
//
// Algorithm (IEEE 1619): per data unit, T0 = AES-Enc(Key2, unit number as 128-bit LE); block j
// uses T_j = T0 * x^j in GF(2^128) mod x^128 + x^7 + x^2 + x + 1, and C_j = AES(Key1, P_j ^ T_j)
// ^ T_j. A unit whose length is not a multiple of 16 ends with ciphertext stealing (§5.3).
//
// Register plan (16 ymm, 2 blocks each). The main loop keeps 16 blocks in flight:
//   x0..x7   the blocks being encrypted (8 registers)
//   t0..t7   their tweaks, lane l of t_i = T_{16n + 2i + l}; with only 16 registers these live
//            partly in registers and partly on the stack (the compiler decides), which is cheap:
//            each tweak is read twice per 16 blocks, as a folded memory operand
//   keys     Key1 round keys broadcast to both lanes, read from the engine (L1) each round
// vaesenc on ymm issues up to two per cycle with a latency of ~3-4 cycles, so 6-8 independent
// registers are needed to keep the AES units busy.
//
// Tweaks for the next 16 blocks are t_i * x^16: a 2-byte shift of each 128-bit lane (vpslldq) XOR
// the 16 bits that left the top multiplied by 0x87 (vpsrldq + one vpclmulqdq) — no serial chain
// from block to block. The first 16 tweaks of a unit come from T0 with variable shifts
// (vpsllvq/vpsrlvq by 0..7) and a clmul fold, then a 1-byte shift for x^8..x^15. Unit setup is
// software-pipelined: the next 8 units' initial tweaks are encrypted together under Key2, and
// each is expanded while the unit before it is encrypted, so a unit's start never waits.
// The last round is vaesenclast(x, k_last ^ T), which also applies the output tweak. Initial
// tweaks of 8 units are encrypted together under Key2 (4 ymm in flight). Leftover blocks (< 16)
// and ciphertext stealing run in a separate out-of-line function so the main loop stays lean.
// All code here is VEX encoded; the compiler emits vzeroupper on return.
#include "xts_internal.h"

#if VMSEAL_X86_64
#include <immintrin.h>
#endif

namespace vmseal {
namespace internal {

#if VMSEAL_X86_64

#define VMSEAL_AVX2 VMSEAL_TARGET("aes,sse4.1,avx,avx2,vaes,vpclmulqdq")

namespace {

// Round keys repeated in each lane (xts_internal.h).
using WideSchedule = internal::WideSchedule<2>;

VMSEAL_AVX2 VMSEAL_INLINE __m128i Key128(const uint8_t* sched, int r) {
  return _mm_load_si128(reinterpret_cast<const __m128i*>(sched + 32 * r));
}
VMSEAL_AVX2 VMSEAL_INLINE __m256i Key256(const uint8_t* sched, int r) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(sched + 32 * r));
}
VMSEAL_AVX2 VMSEAL_INLINE __m256i LoadU(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
VMSEAL_AVX2 VMSEAL_INLINE void StoreU(uint8_t* p, __m256i v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
}

template <bool ENC>
VMSEAL_AVX2 VMSEAL_INLINE __m256i Round(__m256i x, __m256i k) {
  return ENC ? _mm256_aesenc_epi128(x, k) : _mm256_aesdec_epi128(x, k);
}
template <bool ENC>
VMSEAL_AVX2 VMSEAL_INLINE __m256i LastRound(__m256i x, __m256i k) {
  return ENC ? _mm256_aesenclast_epi128(x, k) : _mm256_aesdeclast_epi128(x, k);
}

// Multiply both lanes by x^(8 * BYTES), BYTES <= 7: a whole-byte shift of each 128-bit lane
// (vpslldq), XOR the BYTES bytes that left the top times 0x87 (vpsrldq + vpclmulqdq, at most 63
// bits, so it lands in the low qword). Cheaper than per-qword bit shifts plus carry handling.
template <int BYTES>
VMSEAL_AVX2 VMSEAL_INLINE __m256i MulXBytes(__m256i t, __m256i poly) {
  return _mm256_xor_si256(_mm256_bslli_epi128(t, BYTES),
                          _mm256_clmulepi64_epi128(_mm256_bsrli_epi128(t, 16 - BYTES), poly, 0x00));
}

// T0 * x^(2i + l) in lane l of out[i], i = 0..7: out[0..3] with per-lane bit shifts by 0..7
// (vpsllvq/vpsrlvq and a clmul fold of the bits leaving bit 127), out[4..7] = out[0..3] * x^8.
VMSEAL_AVX2 VMSEAL_INLINE void FirstTweaks(__m128i t, __m256i poly, __m256i out[8]) {
  const __m256i b = _mm256_broadcastsi128_si256(t);
  VMSEAL_UNROLL
  for (int i = 0; i < 4; ++i) {
    const long long s = 2 * i;
    const __m256i cnt = _mm256_set_epi64x(s + 1, s + 1, s, s);
    const __m256i rcnt = _mm256_set_epi64x(63 - s, 63 - s, 64 - s, 64 - s);
    const __m256i hi = _mm256_srlv_epi64(b, rcnt);  // shift counts >= 64 give 0
    out[i] = _mm256_xor_si256(
        _mm256_xor_si256(_mm256_sllv_epi64(b, cnt), _mm256_bslli_epi128(hi, 8)),
        _mm256_clmulepi64_epi128(hi, poly, 0x01));
  }
  VMSEAL_UNROLL
  for (int i = 4; i < 8; ++i) out[i] = MulXBytes<1>(out[i - 4], poly);
}

VMSEAL_AVX2 VMSEAL_INLINE __m128i MulX(__m128i t) {
  const __m128i carryMask = _mm_set_epi32(0, 1, 0, 0x87);
  const __m128i signs = _mm_shuffle_epi32(_mm_srai_epi32(t, 31), 0x13);
  return _mm_xor_si128(_mm_slli_epi64(t, 1), _mm_and_si128(signs, carryMask));
}

template <int NR, bool ENC>
VMSEAL_AVX2 VMSEAL_INLINE __m128i Block(const uint8_t* sched, __m128i x) {
  x = _mm_xor_si128(x, Key128(sched, 0));
  VMSEAL_UNROLL
  for (int r = 1; r < NR; ++r) {
    x = ENC ? _mm_aesenc_si128(x, Key128(sched, r)) : _mm_aesdec_si128(x, Key128(sched, r));
  }
  return ENC ? _mm_aesenclast_si128(x, Key128(sched, NR))
             : _mm_aesdeclast_si128(x, Key128(sched, NR));
}

// XTS of one block with tweak t.
template <int NR, bool ENC>
VMSEAL_AVX2 VMSEAL_INLINE __m128i XtsBlock(const uint8_t* sched, __m128i in, __m128i t) {
  return _mm_xor_si128(Block<NR, ENC>(sched, _mm_xor_si128(in, t)), t);
}

// The end of a unit that is not a whole number of 16-block groups: `left` (0..15) blocks with the
// tweaks in t[0..7], then ciphertext stealing if `tail` != 0 (IEEE 1619 §5.3; decryption uses the
// two last tweaks in the opposite order). Rare, so it favours simplicity over speed.
template <int NR, bool ENC>
VMSEAL_AVX2 VMSEAL_NOINLINE void TailBlocks(const uint8_t* sched, const uint8_t* in,
                                                      uint8_t* out, size_t left, size_t tail,
                                                      const __m256i t[8]) {
  alignas(32) __m128i tws[16];
  VMSEAL_UNROLL
  for (int i = 0; i < 8; ++i) _mm256_store_si256(reinterpret_cast<__m256i*>(tws + 2 * i), t[i]);
  for (size_t j = 0; j < left; ++j) {
    const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 16 * j));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * j), XtsBlock<NR, ENC>(sched, p, tws[j]));
  }
  if (tail != 0) {
    in += 16 * left;
    out += 16 * left;
    const __m128i t0 = tws[left];
    const __m128i t1 = MulX(t0);
    alignas(16) uint8_t buf[16];
    const __m128i y =
        XtsBlock<NR, ENC>(sched, _mm_loadu_si128(reinterpret_cast<const __m128i*>(in)),
                          ENC ? t0 : t1);
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), y);
    for (size_t i = 0; i < tail; ++i) {
      const uint8_t b = in[16 + i];  // read before the (possibly in-place) write
      out[16 + i] = buf[i];
      buf[i] = b;
    }
    const __m128i z = _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), XtsBlock<NR, ENC>(sched, z, ENC ? t1 : t0));
    SecureWipe(buf, sizeof(buf));
  }
}

// The first 16 tweaks of one unit, prepared before the unit is processed, so the start of a
// unit does not wait for a chain of tweak arithmetic.
struct UnitTweakRegs {
  __m256i t[8];
};

// The XTS loop over `count` units of one group; tw[u] holds unit u's first 16 tweaks. After unit
// u it prepares unit u of the next group (nextT0 -> nextTw, u < nextCount), overlapping that work
// with the next unit's AES rounds.
template <int NR, bool ENC>
VMSEAL_AVX2 VMSEAL_INLINE void UnitsWithTweaks(const uint8_t* sched, const UnitTweakRegs* tw,
                                               const uint8_t* in, uint8_t* out, size_t unitSize,
                                               size_t count, const __m128i* nextT0,
                                               size_t nextCount, UnitTweakRegs* nextTw) {
  const __m256i poly = _mm256_set1_epi64x(0x87);
  const size_t tail = unitSize % 16;
  const size_t bulkBlocks = unitSize / 16 - (tail != 0 ? 1 : 0);
  for (size_t u = 0; u < count; ++u) {
    __m256i t[8];
    VMSEAL_UNROLL
    for (int i = 0; i < 8; ++i) t[i] = tw[u].t[i];
    size_t left = bulkBlocks;
    while (left >= 16) {
      __m256i x[8];
      const __m256i k0 = Key256(sched, 0);
      VMSEAL_UNROLL
      for (int i = 0; i < 8; ++i) {
        x[i] = _mm256_xor_si256(_mm256_xor_si256(LoadU(in + 32 * i), t[i]), k0);
      }
      VMSEAL_UNROLL
      for (int r = 1; r < NR; ++r) {
        const __m256i k = Key256(sched, r);
        VMSEAL_UNROLL
        for (int i = 0; i < 8; ++i) x[i] = Round<ENC>(x[i], k);
      }
      const __m256i kl = Key256(sched, NR);
      VMSEAL_UNROLL
      for (int i = 0; i < 8; ++i) {
        StoreU(out + 32 * i, LastRound<ENC>(x[i], _mm256_xor_si256(kl, t[i])));
        t[i] = MulXBytes<2>(t[i], poly);
      }
      in += 256;
      out += 256;
      left -= 16;
    }
    if (left != 0 || tail != 0) {
      TailBlocks<NR, ENC>(sched, in, out, left, tail, t);
      in += 16 * left + (tail != 0 ? 16 + tail : 0);
      out += 16 * left + (tail != 0 ? 16 + tail : 0);
    }
    if (u < nextCount) FirstTweaks(_mm_load_si128(nextT0 + u), poly, nextTw[u].t);
  }
}

// Encrypt the initial tweaks of units first..first+7 under Key2 (4 ymm in flight).
template <int NR>
VMSEAL_AVX2 VMSEAL_INLINE void UnitTweaks8(const uint8_t* k2, uint64_t first, __m128i out[8]) {
  __m256i x[4];
  const __m256i k0 = Key256(k2, 0);
  VMSEAL_UNROLL
  for (int i = 0; i < 4; ++i) {
    // Lane l gets first + 2i + l (wraps harmlessly past the last real unit).
    const __m256i n = _mm256_set_epi64x(0, static_cast<long long>(first + 2 * i + 1), 0,
                                        static_cast<long long>(first + 2 * i));
    x[i] = _mm256_xor_si256(n, k0);
  }
  VMSEAL_UNROLL
  for (int r = 1; r < NR; ++r) {
    const __m256i k = Key256(k2, r);
    VMSEAL_UNROLL
    for (int i = 0; i < 4; ++i) x[i] = _mm256_aesenc_epi128(x[i], k);
  }
  const __m256i kl = Key256(k2, NR);
  VMSEAL_UNROLL
  for (int i = 0; i < 4; ++i) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 2 * i), _mm256_aesenclast_epi128(x[i], kl));
  }
}

template <int NR, bool ENC>
VMSEAL_AVX2 void Units(const WideSchedule& ks, const uint8_t* in, uint8_t* out, size_t unitSize,
                       size_t count, uint64_t first) {
  const uint8_t* sched = ENC ? ks.enc1 : ks.dec1;
  const __m256i poly = _mm256_set1_epi64x(0x87);
  alignas(32) __m128i t0[8];
  alignas(32) UnitTweakRegs twA[8], twB[8];
  UnitTweakRegs* cur = twA;
  UnitTweakRegs* next = twB;
  const size_t firstGroup = count < 8 ? count : 8;
  UnitTweaks8<NR>(ks.enc2, first, t0);
  for (size_t u = 0; u < firstGroup; ++u) FirstTweaks(_mm_load_si128(t0 + u), poly, cur[u].t);
  while (count > 0) {
    const size_t n = count < 8 ? count : 8;
    const size_t rest = count - n;
    const size_t nextN = rest < 8 ? rest : 8;
    if (nextN != 0) UnitTweaks8<NR>(ks.enc2, first + n, t0);
    UnitsWithTweaks<NR, ENC>(sched, cur, in, out, unitSize, n, t0, nextN, next);
    in += n * unitSize;
    out += n * unitSize;
    first += n;
    count = rest;
    UnitTweakRegs* done = cur;
    cur = next;
    next = done;
  }
  WipeBuffer(t0, sizeof(t0));
  WipeBuffer(twA, firstGroup * sizeof(UnitTweakRegs));
  WipeBuffer(twB, firstGroup * sizeof(UnitTweakRegs));
}

template <int NR, bool ENC>
VMSEAL_AVX2 void WithTweak(const WideSchedule& ks, const uint8_t* in, uint8_t* out, size_t len,
                           const uint8_t tweak[16]) {
  alignas(32) UnitTweakRegs tw[1];
  const __m128i t0 =
      Block<NR, true>(ks.enc2, _mm_loadu_si128(reinterpret_cast<const __m128i*>(tweak)));
  FirstTweaks(t0, _mm256_set1_epi64x(0x87), tw[0].t);
  UnitsWithTweaks<NR, ENC>(ENC ? ks.enc1 : ks.dec1, tw, in, out, len, 1, nullptr, 0, nullptr);
  WipeBuffer(tw, sizeof(tw));
}

// The kernels above, in the shape WideXtsEngine (xts_internal.h) calls them.
struct VaesAvx2Kernels {
  template <int NR, bool ENC>
  static void Units(const WideSchedule& ks, const uint8_t* in, uint8_t* out, size_t unitSize,
                    size_t count, uint64_t firstUnit) {
    internal::Units<NR, ENC>(ks, in, out, unitSize, count, firstUnit);
  }
  template <int NR, bool ENC>
  static void WithTweak(const WideSchedule& ks, const uint8_t* in, uint8_t* out, size_t len,
                        const uint8_t tweak[16]) {
    internal::WithTweak<NR, ENC>(ks, in, out, len, tweak);
  }
};

}  // namespace

std::unique_ptr<XtsEngine> CreateVaesAvx2XtsEngine(const uint8_t* key, size_t keyLen) {
  return std::unique_ptr<XtsEngine>(
      new WideXtsEngine<2, XtsImpl::kVaesAvx2, VaesAvx2Kernels>(key, keyLen));
}

#else  // !VMSEAL_X86_64

std::unique_ptr<XtsEngine> CreateVaesAvx2XtsEngine(const uint8_t*, size_t) { return nullptr; }

#endif

}  // namespace internal
}  // namespace vmseal
