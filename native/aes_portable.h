// Constant-time portable AES (bitsliced, four or eight blocks at a time).
//
// No table is indexed by secret data and no branch depends on it: SubBytes computes the GF(2^8)
// inverse with bitsliced arithmetic in a tower field, the affine map is a fixed XOR of bit
// planes, and ShiftRows/MixColumns are fixed shifts and masks. Slow next to AES-NI (~0.1 GB/s on
// a 3.5 GHz x86 core) but correct everywhere, for CPUs without AES instructions and for non-x86
// builds.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vmseal {
namespace internal {

// One bit plane word. With GCC/Clang it is a 128-bit vector of two 64-bit lanes (SSE2 on x86-64,
// NEON on Arm; the compiler emulates it elsewhere), so one bitwise instruction covers 8 blocks;
// otherwise a plain 64-bit word covering 4 blocks (VMSEAL_PORTABLE_SCALAR forces that, for tests).
#if (defined(__GNUC__) || defined(__clang__)) && !defined(VMSEAL_PORTABLE_SCALAR)
typedef uint64_t AesWord __attribute__((vector_size(16)));
constexpr size_t kAesPortableLanes = 2;
#else
typedef uint64_t AesWord;
constexpr size_t kAesPortableLanes = 1;
#endif
// Blocks and bytes processed by one call.
constexpr size_t kAesPortableBatchBlocks = 4 * kAesPortableLanes;
constexpr size_t kAesPortableBatchBytes = 16 * kAesPortableBatchBlocks;

// Bit-plane layout: lane L of a plane word covers blocks 4L..4L+3 (64 bytes). Within a lane,
// byte p = 16 * block + i (i in AES order, column-major: i = 4 * column + row) is spread over
// eight words; bit p of lane L of plane[j] is bit j of that byte.
struct AesPlanes {
  AesWord w[8];
};

struct AesPortableKey {
  AesPlanes rk[15];  // round keys, each replicated into every block position, in plane form
  int rounds;        // 10, 12 or 14
};

// keyLen: 16, 24 or 32. The caller wipes *out when done.
void AesPortableExpandKey(const uint8_t* key, size_t keyLen, AesPortableKey* out);

// Encrypt/decrypt kAesPortableBatchBlocks consecutive 16-byte blocks in place.
void AesPortableEncryptBatch(const AesPortableKey& key, uint8_t* blocks);
void AesPortableDecryptBatch(const AesPortableKey& key, uint8_t* blocks);

}  // namespace internal
}  // namespace vmseal
