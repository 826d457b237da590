// XTS-AES with VAES + VPCLMULQDQ on 512-bit registers (AVX-512 F/VL/BW).
//
// Algorithm (IEEE 1619): per data unit, T0 = AES-Enc(Key2, unit number as 128-bit LE); block j
// uses T_j = T0 * x^j in GF(2^128) mod x^128 + x^7 + x^2 + x + 1, and C_j = AES(Key1, P_j ^ T_j)
// ^ T_j. A unit whose length is not a multiple of 16 ends with ciphertext stealing (§5.3).
//
// Register plan (32 zmm). A zmm holds 4 blocks, one per 128-bit lane; vaesenc/vaesdec apply one
// AES round to each lane. Inside the main loop (16 blocks per iteration):
//   k1..k{NR-1}  Key1 middle round keys broadcast to all four lanes, loaded once per group of
//                units and kept in registers (9 or 13 registers)
//   k0l          k0 ^ k_last (see "last-key form" below)
//   tk0..tk3     tweaks of the 16 blocks in flight in last-key form: lane l of tk_i is
//                T_{16n + 4i + l} ^ k_last
//   x0..x3       the 16 blocks being encrypted
//   nt0..nt3     the next iteration's tk, computed during this iteration's rounds
//   poly, c      0x87 in every qword for the carry-less reductions; c = k_last * x^16 ^ k_last
// That is 25-29 registers, under the 32 available, so the loop touches memory only for data.
//
// Why. On this class of CPU (Intel Sapphire Rapids measured: one zmm vaesenc per cycle, latency 3;
// ymm: two per cycle) the AES unit is the limit, 64 bytes x 1 round per cycle, so everything
// else must stay off port 0, the only port that runs zmm vaesenc. Four independent zmm (16
// blocks) cover the latency.
//   Tweak stepping: multiplying by x^16 is a 2-byte shift of each 128-bit lane (vpslldq) XOR the
//   16 bits that left the top times 0x87 (vpsrldq + one vpclmulqdq): no serial chain between
//   blocks and nothing on port 0 (per-qword bit shifts, vpsllq zmm, run only on port 0 and
//   measured ~8% slower).
//   Last-key form: vaesenclast(x, k_last ^ T) applies the last round key and the output tweak at
//   once. Keeping tk = T ^ k_last instead of T makes that XOR disappear: round 0 is one vpternlogd
//   P ^ tk ^ (k0 ^ k_last), and since x^16-stepping is linear, the next tk is
//   step(tk) ^ c, which the stepping's final vpternlogd absorbs. Per 16 blocks that leaves
//   NR*4 AES instructions + 20 others (4 ternlog, 16 for tweaks), all but the AES on port 5.
// Unit setup is software-pipelined across groups of 16 units: the initial tweaks of the next 16
// units are encrypted together under Key2 (4 zmm, instead of one serial AES per unit), and while
// unit u of this group is encrypted, unit u of the next group gets its first 16 tweaks (carry-less
// multiplications of T0 by x^0..x^7 per lane, then a 1-byte shift for x^8..x^15). Nothing at a
// unit or group boundary then waits on a latency chain: with 512-byte units (2 loop iterations
// per unit) this raised throughput from ~88% to ~96% of the 4096-byte figure.
// Leftover blocks (< 16) go through one pass of four masked zmm (AVX-512BW byte masks), and the
// stolen-ciphertext pair is done with xmm AES after the loop, so the main loop has no length tests
// (both in an out-of-line function that reloads keys, leaving the main loop's registers alone).
// Measured on the 2-vCPU Xeon (Sapphire Rapids class, ~3.5 GHz) this runs at ~95% of the AES
// unit limit for 4096-byte units and ~85% for 512-byte units.
// All ymm/zmm code is VEX/EVEX encoded; the compiler emits vzeroupper on return.
#include "xts_internal.h"

#if VMSEAL_X86_64
// GCC 12's AVX-512 headers self-initialise their "undefined" vectors (__m512i __Y = __Y), which
// -Wuninitialized reports wherever such an intrinsic is inlined (GCC PR 105593, fixed in 12.3/13).
// The pragma covers the header text included below and this file's code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

namespace vmseal {
namespace internal {

#if VMSEAL_X86_64

#define VMSEAL_AVX512 \
  VMSEAL_TARGET("aes,sse4.1,avx,avx2,vaes,vpclmulqdq,avx512f,avx512vl,avx512bw")

namespace {

// Round keys repeated in each lane (xts_internal.h).
using WideSchedule = internal::WideSchedule<4>;

VMSEAL_AVX512 VMSEAL_INLINE __m128i Key128(const uint8_t* sched, int r) {
  return _mm_load_si128(reinterpret_cast<const __m128i*>(sched + 64 * r));
}
VMSEAL_AVX512 VMSEAL_INLINE __m512i Key512(const uint8_t* sched, int r) {
  return _mm512_load_si512(reinterpret_cast<const void*>(sched + 64 * r));
}

template <bool ENC>
VMSEAL_AVX512 VMSEAL_INLINE __m512i Round(__m512i x, __m512i k) {
  return ENC ? _mm512_aesenc_epi128(x, k) : _mm512_aesdec_epi128(x, k);
}
template <bool ENC>
VMSEAL_AVX512 VMSEAL_INLINE __m512i LastRound(__m512i x, __m512i k) {
  return ENC ? _mm512_aesenclast_epi128(x, k) : _mm512_aesdeclast_epi128(x, k);
}

// Multiply every lane by x^(8 * BYTES), BYTES <= 7. A shift by whole bytes is a vpslldq of the
// 128-bit lane; the BYTES bytes that leave the top, times 0x87 (vpclmulqdq, at most 63 bits), are
// folded back into the low qword. All three instructions run on the shuffle/clmul port, not on
// port 0 where vaesenc zmm executes, so the AES rounds are not slowed down.
template <int BYTES>
VMSEAL_AVX512 VMSEAL_INLINE __m512i MulXBytes(__m512i t, __m512i poly) {
  return _mm512_xor_si512(_mm512_bslli_epi128(t, BYTES),
                          _mm512_clmulepi64_epi128(_mm512_bsrli_epi128(t, 16 - BYTES), poly, 0x00));
}

// T0 * x^(4i + l) in lane l of out[i]. out[0] and out[1] multiply by x^0..x^7 with carry-less
// products: lo * x^k and hi * x^k (at most 71 bits each) are combined as lo*x^k ^ (hi*x^k << 64),
// and the few bits of hi*x^k beyond bit 127 are folded back times 0x87. This keeps the per-unit
// setup off port 0 (variable bit shifts would compete with vaesenc there). out[2] and out[3] are
// out[0] * x^8 and out[1] * x^8 (byte shifts).
VMSEAL_AVX512 VMSEAL_INLINE void FirstTweaks(__m128i t, __m512i poly, __m512i out[4]) {
  const __m512i b = _mm512_broadcast_i32x4(t);
  VMSEAL_UNROLL
  for (int i = 0; i < 2; ++i) {
    const long long s = 4 * i;
    // x^k in the low qword of each lane, k = s..s+3.
    const __m512i xk =
        _mm512_set_epi64(0, 1ll << (s + 3), 0, 1ll << (s + 2), 0, 1ll << (s + 1), 0, 1ll << s);
    const __m512i lo = _mm512_clmulepi64_epi128(b, xk, 0x00);  // T.lo * x^k
    const __m512i hi = _mm512_clmulepi64_epi128(b, xk, 0x01);  // T.hi * x^k
    out[i] = _mm512_ternarylogic_epi32(lo, _mm512_bslli_epi128(hi, 8),
                                       _mm512_clmulepi64_epi128(hi, poly, 0x01), 0x96);
  }
  out[2] = MulXBytes<1>(out[0], poly);
  out[3] = MulXBytes<1>(out[1], poly);
}

VMSEAL_AVX512 VMSEAL_INLINE __m128i MulX(__m128i t) {
  const __m128i carryMask = _mm_set_epi32(0, 1, 0, 0x87);
  const __m128i signs = _mm_shuffle_epi32(_mm_srai_epi32(t, 31), 0x13);
  return _mm_xor_si128(_mm_slli_epi64(t, 1), _mm_and_si128(signs, carryMask));
}

template <int NR, bool ENC>
VMSEAL_AVX512 VMSEAL_INLINE __m128i Block(const uint8_t* sched, __m128i x) {
  x = _mm_xor_si128(x, Key128(sched, 0));
  VMSEAL_UNROLL
  for (int r = 1; r < NR; ++r) {
    x = ENC ? _mm_aesenc_si128(x, Key128(sched, r)) : _mm_aesdec_si128(x, Key128(sched, r));
  }
  return ENC ? _mm_aesenclast_si128(x, Key128(sched, NR))
             : _mm_aesdeclast_si128(x, Key128(sched, NR));
}

// Ciphertext stealing for the last full block at in/out (tweak t) and the `tail` bytes after it
// (tweak t * x). Decryption uses the two tweaks in the opposite order (IEEE 1619 §5.4.2).
template <int NR, bool ENC>
VMSEAL_AVX512 void StealTail(const uint8_t* sched, const uint8_t* in, uint8_t* out, size_t tail,
                             __m128i t) {
  const __m128i tNext = MulX(t);
  const __m128i tFirst = ENC ? t : tNext;
  const __m128i tSecond = ENC ? tNext : t;
  const __m128i y = _mm_xor_si128(
      Block<NR, ENC>(sched, _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)),
                                          tFirst)),
      tFirst);
  // out tail = first `tail` bytes of y; the block to process again = in tail || rest of y.
  const __mmask16 m = static_cast<__mmask16>((1u << tail) - 1);
  const __m128i partIn = _mm_maskz_loadu_epi8(m, in + 16);
  _mm_mask_storeu_epi8(out + 16, m, y);
  const __m128i z = _mm_mask_blend_epi8(m, y, partIn);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                   _mm_xor_si128(Block<NR, ENC>(sched, _mm_xor_si128(z, tSecond)), tSecond));
}

// The end of a unit that is not a whole number of 16-block groups: `left` (0..15) blocks with the
// tweaks in t[0..3], then ciphertext stealing if `tail` != 0. Kept out of line (and reloading the
// keys) so the main loop's register allocation is not burdened by this rare path.
template <int NR, bool ENC>
VMSEAL_AVX512 VMSEAL_NOINLINE void TailBlocks(const uint8_t* sched, const uint8_t* in,
                                                        uint8_t* out, size_t left, size_t tail,
                                                        const __m512i t[4]) {
  if (left != 0) {
    // 1..15 blocks: four masked registers, lanes past the end are zero and never stored.
    __m512i x[4];
    __mmask64 m[4];
    const __m512i k0 = Key512(sched, 0);
    VMSEAL_UNROLL
    for (int i = 0; i < 4; ++i) {
      const size_t have = left > 4u * i ? left - 4u * i : 0;
      m[i] = have >= 4 ? ~0ull : (1ull << (16 * have)) - 1;
      x[i] = _mm512_ternarylogic_epi32(_mm512_maskz_loadu_epi8(m[i], in + 64 * i), t[i], k0, 0x96);
    }
    VMSEAL_UNROLL
    for (int r = 1; r < NR; ++r) {
      const __m512i k = Key512(sched, r);
      VMSEAL_UNROLL
      for (int i = 0; i < 4; ++i) x[i] = Round<ENC>(x[i], k);
    }
    const __m512i kl = Key512(sched, NR);
    VMSEAL_UNROLL
    for (int i = 0; i < 4; ++i) {
      x[i] = LastRound<ENC>(x[i], _mm512_xor_si512(kl, t[i]));
      _mm512_mask_storeu_epi8(out + 64 * i, m[i], x[i]);
    }
    in += 16 * left;
    out += 16 * left;
  }
  if (tail != 0) {
    // The tweak of the block after the last one processed: lane (left % 4) of t[left / 4].
    alignas(64) __m128i tws[16];
    VMSEAL_UNROLL
    for (int i = 0; i < 4; ++i) _mm512_store_si512(reinterpret_cast<void*>(tws + 4 * i), t[i]);
    StealTail<NR, ENC>(sched, in, out, tail, tws[left]);
  }
}

// Per-unit tweak registers, prepared before the unit is processed, in "last-key form":
// tk_i = t_i ^ k_last (see the header comment).
struct UnitTweakRegs {
  __m512i tk[4];
};

// Unit u's first 16 tweaks from its encrypted initial tweak t0, in last-key form.
VMSEAL_AVX512 VMSEAL_INLINE void PrepareUnitTweaks(__m128i t0, __m512i kl, __m512i poly,
                                                   UnitTweakRegs* tw) {
  __m512i t[4];
  FirstTweaks(t0, poly, t);
  VMSEAL_UNROLL
  for (int i = 0; i < 4; ++i) tw->tk[i] = _mm512_xor_si512(t[i], kl);
}

// The XTS loop over `count` units of one group; tw[u] holds unit u's first 16 tweaks. After unit
// u it prepares unit u of the next group (nextT0 -> nextTw, u < nextCount), so that work
// overlaps with the AES rounds of the following unit instead of stalling at the group boundary.
template <int NR, bool ENC>
VMSEAL_AVX512 VMSEAL_INLINE void UnitsWithTweaks(const uint8_t* sched, const UnitTweakRegs* tw,
                                                 const uint8_t* in, uint8_t* out, size_t unitSize,
                                                 size_t count, const __m128i* nextT0,
                                                 size_t nextCount, UnitTweakRegs* nextTw) {
  __m512i k[NR];  // rounds 1..NR-1 (k[0] unused)
  VMSEAL_UNROLL
  for (int r = 1; r < NR; ++r) k[r] = Key512(sched, r);
  const __m512i kl = Key512(sched, NR);
  // Round 0 computes P ^ T ^ k0 = P ^ tk ^ (k0 ^ k_last).
  const __m512i k0l = _mm512_xor_si512(Key512(sched, 0), kl);
  const __m512i poly = _mm512_set1_epi64(0x87);
  // tk * x^16 = t * x^16 ^ k_last * x^16, so the next tk is MulX16(tk) ^ c with c below.
  const __m512i c = _mm512_xor_si512(MulXBytes<2>(kl, poly), kl);
  const size_t tail = unitSize % 16;
  const size_t bulkBlocks = unitSize / 16 - (tail != 0 ? 1 : 0);

  for (size_t u = 0; u < count; ++u) {
    __m512i tk[4];
    VMSEAL_UNROLL
    for (int i = 0; i < 4; ++i) tk[i] = tw[u].tk[i];
    size_t left = bulkBlocks;
    while (left >= 16) {
      __m512i x[4], nt[4];
      VMSEAL_UNROLL
      for (int i = 0; i < 4; ++i) {
        x[i] = _mm512_ternarylogic_epi32(_mm512_loadu_si512(in + 64 * i), tk[i], k0l, 0x96);
      }
      VMSEAL_UNROLL
      for (int r = 1; r < NR; ++r) {
        VMSEAL_UNROLL
        for (int i = 0; i < 4; ++i) x[i] = Round<ENC>(x[i], k[r]);
        if (r >= 2 && r < 6) {
          const __m512i m = tk[r - 2];
          nt[r - 2] = _mm512_ternarylogic_epi32(
              _mm512_bslli_epi128(m, 2),
              _mm512_clmulepi64_epi128(_mm512_bsrli_epi128(m, 14), poly, 0x00), c, 0x96);
        }
      }
      VMSEAL_UNROLL
      for (int i = 0; i < 4; ++i) {
        _mm512_storeu_si512(out + 64 * i, LastRound<ENC>(x[i], tk[i]));
        tk[i] = nt[i];
      }
      in += 256;
      out += 256;
      left -= 16;
    }
    if (left != 0 || tail != 0) {
      __m512i t[4];
      VMSEAL_UNROLL
      for (int i = 0; i < 4; ++i) t[i] = _mm512_xor_si512(tk[i], kl);
      TailBlocks<NR, ENC>(sched, in, out, left, tail, t);
      in += 16 * left + (tail != 0 ? 16 + tail : 0);
      out += 16 * left + (tail != 0 ? 16 + tail : 0);
    }
    if (u < nextCount) PrepareUnitTweaks(_mm_load_si128(nextT0 + u), kl, poly, nextTw + u);
  }
}

// Encrypt the initial tweaks of units first..first+15 under Key2 (4 zmm in flight).
template <int NR>
VMSEAL_AVX512 VMSEAL_INLINE void UnitTweaks16(const uint8_t* k2, uint64_t first,
                                              __m128i out[16]) {
  __m512i x[4];
  const __m512i base = _mm512_maskz_set1_epi64(0x55, static_cast<long long>(first));
  const __m512i k0 = Key512(k2, 0);
  VMSEAL_UNROLL
  for (int i = 0; i < 4; ++i) {
    // Lane l gets first + 4i + l in its low qword (wraps harmlessly past the last real unit).
    const __m512i inc = _mm512_set_epi64(0, 4 * i + 3, 0, 4 * i + 2, 0, 4 * i + 1, 0, 4 * i);
    x[i] = _mm512_xor_si512(_mm512_add_epi64(base, inc), k0);
  }
  VMSEAL_UNROLL
  for (int r = 1; r < NR; ++r) {
    const __m512i k = Key512(k2, r);
    VMSEAL_UNROLL
    for (int i = 0; i < 4; ++i) x[i] = _mm512_aesenc_epi128(x[i], k);
  }
  const __m512i kl = Key512(k2, NR);
  VMSEAL_UNROLL
  for (int i = 0; i < 4; ++i) {
    _mm512_store_si512(reinterpret_cast<void*>(out + 4 * i), _mm512_aesenclast_epi128(x[i], kl));
  }
}

template <int NR, bool ENC>
VMSEAL_AVX512 void Units(const WideSchedule& ks, const uint8_t* in, uint8_t* out, size_t unitSize,
                         size_t count, uint64_t first) {
  const uint8_t* sched = ENC ? ks.enc1 : ks.dec1;
  const __m512i kl = Key512(sched, NR);
  const __m512i poly = _mm512_set1_epi64(0x87);
  alignas(64) __m128i t0[16];
  alignas(64) UnitTweakRegs twA[16], twB[16];
  UnitTweakRegs* cur = twA;
  UnitTweakRegs* next = twB;
  const size_t firstGroup = count < 16 ? count : 16;
  UnitTweaks16<NR>(ks.enc2, first, t0);
  for (size_t u = 0; u < firstGroup; ++u) {
    PrepareUnitTweaks(_mm_load_si128(t0 + u), kl, poly, cur + u);
  }
  while (count > 0) {
    const size_t n = count < 16 ? count : 16;
    const size_t rest = count - n;
    const size_t nextN = rest < 16 ? rest : 16;
    if (nextN != 0) UnitTweaks16<NR>(ks.enc2, first + n, t0);
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
VMSEAL_AVX512 void WithTweak(const WideSchedule& ks, const uint8_t* in, uint8_t* out, size_t len,
                             const uint8_t tweak[16]) {
  const uint8_t* sched = ENC ? ks.enc1 : ks.dec1;
  alignas(64) UnitTweakRegs tw[1];
  const __m128i t0 =
      Block<NR, true>(ks.enc2, _mm_loadu_si128(reinterpret_cast<const __m128i*>(tweak)));
  PrepareUnitTweaks(t0, Key512(sched, NR), _mm512_set1_epi64(0x87), tw);
  UnitsWithTweaks<NR, ENC>(sched, tw, in, out, len, 1, nullptr, 0, nullptr);
  WipeBuffer(tw, sizeof(tw));
}

// The kernels above, in the shape WideXtsEngine (xts_internal.h) calls them.
struct VaesAvx512Kernels {
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

std::unique_ptr<XtsEngine> CreateVaesAvx512XtsEngine(const uint8_t* key, size_t keyLen) {
  return std::unique_ptr<XtsEngine>(
      new WideXtsEngine<4, XtsImpl::kVaesAvx512, VaesAvx512Kernels>(key, keyLen));
}

#else  // !VMSEAL_X86_64

std::unique_ptr<XtsEngine> CreateVaesAvx512XtsEngine(const uint8_t*, size_t) { return nullptr; }

#endif

}  // namespace internal
}  // namespace vmseal
