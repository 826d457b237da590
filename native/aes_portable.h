// Constant-time portable AES (bitsliced, four blocks at a time).
//
// No table is indexed by secret data and no branch depends on it: SubBytes computes the GF(2^8)
// inverse as x^254 with bitsliced multiplications, the affine map is a fixed XOR of bit planes,
// and ShiftRows/MixColumns are fixed shifts and masks. Slow next to AES-NI (tens of MB/s) but
// correct everywhere, for CPUs without AES instructions and for non-x86 builds.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vmseal {
namespace internal {

// Bit-plane layout of four blocks (64 bytes): byte p = 16 * block + i (i in AES order,
// column-major: i = 4 * column + row) is spread over eight words; bit p of plane[j] is bit j
// of byte p.
struct AesPlanes {
  uint64_t w[8];
};

struct AesPortableKey {
  AesPlanes rk[15];  // round keys, each replicated into all four blocks, in plane form
  int rounds;        // 10, 12 or 14
};

// keyLen: 16, 24 or 32. The caller wipes *out when done.
void AesPortableExpandKey(const uint8_t* key, size_t keyLen, AesPortableKey* out);

// Encrypt/decrypt four consecutive 16-byte blocks (64 bytes) in place.
void AesPortableEncrypt4(const AesPortableKey& key, uint8_t blocks[64]);
void AesPortableDecrypt4(const AesPortableKey& key, uint8_t blocks[64]);

}  // namespace internal
}  // namespace vmseal
