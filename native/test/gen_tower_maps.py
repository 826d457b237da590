#!/usr/bin/env python3
"""Derive the linear maps for aes_portable.cc's tower-field S-box and print them as C code.

The AES field GF(2^8) = GF(2)[x]/(x^8+x^4+x^3+x+1) is isomorphic to the tower
GF((2^4)^2) = GF(16)[y]/(y^2 + y + LAMBDA), GF(16) = GF(2)[z]/(z^4+z+1). A tower element
ah*y + al is stored as bits 0..3 = al, 4..7 = ah. We pick the tower root beta of the AES
polynomial, build the change of basis M (AES -> tower, column i = beta^i), and print:
  ToTower:           M                  (input of SubBytes' inversion)
  FromTowerAffine:   A * M^-1, const 0x63   (inversion result -> S-box output)
  InvToTower:        M * A^-1, const M(0x05)  (InvSubBytes input -> tower)
  FromTower:         M^-1               (inverse result -> AES byte)
where A is the AES affine matrix. Each map is printed as out_j = XOR of in_i.
"""


def gf16_mul(a, b):
    r = 0
    for i in range(4):
        if (b >> i) & 1:
            r ^= a << i
    for i in (6, 5, 4):
        if (r >> i) & 1:
            r ^= 0b10011 << (i - 4)
    return r


def tower_mul(a, b, lam):
    ah, al, bh, bl = a >> 4, a & 15, b >> 4, b & 15
    # (ah y + al)(bh y + bl) = ah bh y^2 + (ah bl + al bh) y + al bl, y^2 = y + lam
    hh = gf16_mul(ah, bh)
    h = hh ^ gf16_mul(ah, bl) ^ gf16_mul(al, bh)
    l = gf16_mul(hh, lam) ^ gf16_mul(al, bl)
    return (h << 4) | l


def tower_pow(a, e, lam):
    r = 1
    for _ in range(e):
        r = tower_mul(r, a, lam)
    return r


def aes_mul(a, b):
    r = 0
    for i in range(8):
        if (b >> i) & 1:
            r ^= a << i
    for i in range(14, 7, -1):
        if (r >> i) & 1:
            r ^= 0x11B << (i - 8)
    return r


def trace16(l):
    t, x = 0, l
    for _ in range(4):
        t ^= x
        x = gf16_mul(x, x)
    return t


def mat_apply(cols, v):
    r = 0
    for i in range(8):
        if (v >> i) & 1:
            r ^= cols[i]
    return r


def mat_from_fn(fn):
    return [fn(1 << i) for i in range(8)]


def invert_cols(cols):
    table = {mat_apply(cols, v): v for v in range(256)}
    assert len(table) == 256
    return [table[1 << i] for i in range(8)]


def emit(name, cols, const=0):
    print('// %s%s' % (name, ' (constant 0x%02x)' % const if const else ''))
    for j in range(8):
        terms = ['in[%d]' % i for i in range(8) if (cols[i] >> j) & 1]
        c = ' ^ kOnes' if (const >> j) & 1 else ''
        print('  out[%d] = %s%s;' % (j, ' ^ '.join(terms), c))


def main():
    lam = next(l for l in range(1, 16) if trace16(l) == 1)
    # beta: a tower root of x^8 + x^4 + x^3 + x + 1
    beta = None
    for b in range(2, 256):
        p = [tower_pow(b, e, lam) for e in (8, 4, 3, 1, 0)]
        if p[0] ^ p[1] ^ p[2] ^ p[3] ^ p[4] == 0:
            beta = b
            break
    M = [tower_pow(beta, i, lam) for i in range(8)]
    Minv = invert_cols(M)
    # check: M is a field isomorphism
    for a in range(256):
        for b in (3, 0x53, 0xCA, a):
            assert mat_apply(M, aes_mul(a, b)) == tower_mul(mat_apply(M, a), mat_apply(M, b), lam)
    rotl = lambda v, k: ((v << k) | (v >> (8 - k))) & 0xFF
    A = mat_from_fn(lambda v: v ^ rotl(v, 1) ^ rotl(v, 2) ^ rotl(v, 3) ^ rotl(v, 4))
    Ainv = invert_cols(A)
    AMinv = [mat_apply(A, c) for c in Minv]
    MAinv = [mat_apply(M, c) for c in Ainv]
    print('// lambda = 0x%x, beta = 0x%02x' % (lam, beta))
    emit('ToTower', M)
    emit('FromTowerAffine', AMinv, 0x63)
    emit('InvToTower', MAinv, mat_apply(M, 0x05))
    emit('FromTower', Minv)
    # lambda * v^2 as a 4x4 map on GF(16)
    cols = [gf16_mul(lam, gf16_mul(1 << i, 1 << i)) for i in range(4)]
    print('// LambdaSquare')
    for j in range(4):
        print('  out[%d] = %s;' % (j, ' ^ '.join('a[%d]' % i for i in range(4) if (cols[i] >> j) & 1)))


main()
