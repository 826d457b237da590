// CPU feature detection for choosing an AES-XTS implementation at run time.
//
// CPUID says what the processor implements; XGETBV(XCR0) says which register state the OS saves
// on context switches. Using ymm/zmm registers when the OS did not enable their state would
// corrupt them on the next context switch (or fault), so osAvx/osAvx512 gate those kernels.
// The family/model check only reorders the kernels on Intel CPUs whose clock drops under 512-bit
// load (Ice Lake, Tiger Lake); Sapphire Rapids and later, and AMD Zen 4, keep AVX-512 first.
#include "xts_engine.h"
#include "xts_internal.h"

#if VMSEAL_X86_64
#if defined(_MSC_VER)
#include <immintrin.h>
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace vmseal {
namespace {

#if VMSEAL_X86_64
void Cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
#if defined(_MSC_VER)
  int regs[4];
  __cpuidex(regs, static_cast<int>(leaf), static_cast<int>(subleaf));
  for (int i = 0; i < 4; ++i) r[i] = static_cast<uint32_t>(regs[i]);
#else
  __cpuid_count(leaf, subleaf, r[0], r[1], r[2], r[3]);
#endif
}

uint64_t ReadXcr0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
#endif
}
#endif

CpuFeatures Detect() {
  CpuFeatures f;
#if VMSEAL_X86_64
  uint32_t r[4];
  Cpuid(0, 0, r);
  const uint32_t maxLeaf = r[0];
  // Vendor string "GenuineIntel" in EBX, EDX, ECX.
  const bool intel = r[1] == 0x756e6547 && r[3] == 0x49656e69 && r[2] == 0x6c65746e;
  if (maxLeaf < 1) return f;
  Cpuid(1, 0, r);
  const uint32_t ecx1 = r[2];
  const uint32_t family = (r[0] >> 8) & 0xF;
  uint32_t model = (r[0] >> 4) & 0xF;
  if (family == 6 || family == 15) model |= ((r[0] >> 16) & 0xF) << 4;
  if (intel && family == 6) {
    switch (model) {
      case 0x6A: case 0x6C: case 0x7D: case 0x7E: case 0x9D:  // Ice Lake server/client/NNPI
      case 0x8C: case 0x8D:                                   // Tiger Lake
        f.preferYmm = true;
        break;
      default:
        break;
    }
  }
  f.pclmulqdq = (ecx1 >> 1) & 1;
  f.sse41 = (ecx1 >> 19) & 1;
  f.aes = (ecx1 >> 25) & 1;
  const bool osxsave = (ecx1 >> 27) & 1;
  const bool avxCpu = (ecx1 >> 28) & 1;
  uint64_t xcr0 = 0;
  if (osxsave) xcr0 = ReadXcr0();
  // XCR0 bit 1 = SSE (xmm) state, bit 2 = AVX (upper ymm) state.
  f.osAvx = osxsave && (xcr0 & 0x6) == 0x6;
  // Bits 5..7 = opmask, upper 256 bits of zmm0..15, zmm16..31.
  f.osAvx512 = f.osAvx && (xcr0 & 0xE0) == 0xE0;
  f.avx = avxCpu;
  if (maxLeaf >= 7) {
    Cpuid(7, 0, r);
    const uint32_t ebx7 = r[1], ecx7 = r[2];
    f.avx2 = (ebx7 >> 5) & 1;
    f.avx512f = (ebx7 >> 16) & 1;
    f.avx512bw = (ebx7 >> 30) & 1;
    f.avx512vl = (ebx7 >> 31) & 1;
    f.vaes = (ecx7 >> 9) & 1;
    f.vpclmulqdq = (ecx7 >> 10) & 1;
  }
#endif
  return f;
}

}  // namespace

const CpuFeatures& GetCpuFeatures() {
  static const CpuFeatures features = Detect();  // thread-safe one-time initialisation
  return features;
}

}  // namespace vmseal
