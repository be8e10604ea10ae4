/* BLAKE2b (RFC 7693), keyed and personalised, as Python's hashlib.blake2b computes it.
 *
 * Written after the BLAKE2 reference implementation (https://github.com/BLAKE2/BLAKE2,
 * ref/blake2b-ref.c, by Jean-Philippe Aumasson, Samuel Neves, Zooko Wilcox-O'Hearn and
 * Christian Winnerlein; CC0 1.0, OpenSSL or Apache 2.0 at the user's choice) and RFC
 * 7693's description: the same IV, message schedule (SIGMA), G function and parameter
 * block. hashlib's own C functions are not callable from an extension module, hence
 * this copy; tests/test_cfirst.py holds it to hashlib on random keys, persons, digest
 * sizes and messages of every length around the block boundaries.
 *
 * Only what trackerd needs: a one-shot digest of a message under a key block hashed
 * once (b2_keyed: the state after the key block, like hashlib's copy() of a keyed
 * hasher), no streaming, no salt (hashlib's default salt is zeros), no tree mode.
 * Every buffer that held key or message bytes is wiped before it goes.
 */
#ifndef TRACKERD_BLAKE2B_H
#define TRACKERD_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define B2_BLOCK 128
#define B2_MAX_OUT 64
#define B2_MAX_KEY 64
#define B2_PERSON 16

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

/* Overwrites n bytes in a way the compiler may not drop as a dead store: a memset
 * the compiler must assume is read (GCC and clang), else a byte at a time. */
static void
b2_wipe(void *p, size_t n)
{
#if defined(__GNUC__) || defined(__clang__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    volatile unsigned char *v = (volatile unsigned char *)p;
    while (n--)
        *v++ = 0;
#endif
}

static uint64_t
b2_load64(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

static uint64_t
b2_rotr(uint64_t x, int n)
{
    return (x >> n) | (x << (64 - n));
}

#define B2_G(a, b, c, d, x, y)                                                                \
    do {                                                                                      \
        a = a + b + (x); d = b2_rotr(d ^ a, 32);                                              \
        c = c + d;       b = b2_rotr(b ^ c, 24);                                              \
        a = a + b + (y); d = b2_rotr(d ^ a, 16);                                              \
        c = c + d;       b = b2_rotr(b ^ c, 63);                                              \
    } while (0)

/* One block into h; t is the byte count so far including this block (< 2^64 here). */
static void
b2_compress(uint64_t h[8], const uint8_t block[B2_BLOCK], uint64_t t, int last)
{
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++)
        m[i] = b2_load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= t; /* the counter's high word stays 0: messages here are short */
    if (last)
        v[14] = ~v[14];
    /* The rounds written out: each SIGMA index is then a constant, and the message
     * words are read at fixed places (about twice as fast as a loop over r). */
#define B2_ROUND(r)                                                                           \
    do {                                                                                      \
        B2_G(v[0], v[4], v[8], v[12], m[B2_SIGMA[r][0]], m[B2_SIGMA[r][1]]);                  \
        B2_G(v[1], v[5], v[9], v[13], m[B2_SIGMA[r][2]], m[B2_SIGMA[r][3]]);                  \
        B2_G(v[2], v[6], v[10], v[14], m[B2_SIGMA[r][4]], m[B2_SIGMA[r][5]]);                 \
        B2_G(v[3], v[7], v[11], v[15], m[B2_SIGMA[r][6]], m[B2_SIGMA[r][7]]);                 \
        B2_G(v[0], v[5], v[10], v[15], m[B2_SIGMA[r][8]], m[B2_SIGMA[r][9]]);                 \
        B2_G(v[1], v[6], v[11], v[12], m[B2_SIGMA[r][10]], m[B2_SIGMA[r][11]]);               \
        B2_G(v[2], v[7], v[8], v[13], m[B2_SIGMA[r][12]], m[B2_SIGMA[r][13]]);                \
        B2_G(v[3], v[4], v[9], v[14], m[B2_SIGMA[r][14]], m[B2_SIGMA[r][15]]);                \
    } while (0)
    B2_ROUND(0); B2_ROUND(1); B2_ROUND(2); B2_ROUND(3); B2_ROUND(4); B2_ROUND(5);
    B2_ROUND(6); B2_ROUND(7); B2_ROUND(8); B2_ROUND(9); B2_ROUND(10); B2_ROUND(11);
#undef B2_ROUND
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
    b2_wipe(m, sizeof m);
    b2_wipe(v, sizeof v);
}

/* A key, a person and a digest size, with the key block hashed once. */
typedef struct {
    uint64_t initial[8]; /* after the parameter block: for an empty message under a key */
    uint64_t keyed[8];   /* after the key block (or the initial state without a key) */
    uint8_t key_block[B2_BLOCK];
    size_t key_length;
    size_t out_length;
} b2_keyed;

/* 0, or -1 for a size out of range (key <= 64, person <= 16, 1 <= out <= 64). */
static int
b2_init(b2_keyed *k, const uint8_t *key, size_t key_length, const uint8_t *person,
        size_t person_length, size_t out_length)
{
    if (key_length > B2_MAX_KEY || person_length > B2_PERSON || out_length < 1 ||
        out_length > B2_MAX_OUT)
        return -1;
    uint8_t padded[B2_PERSON] = {0}; /* hashlib pads a short person with zeros */
    memcpy(padded, person, person_length);
    for (int i = 0; i < 8; i++)
        k->initial[i] = B2_IV[i];
    /* digest length, key length, fanout 1, depth 1; no leaf length, offset, salt */
    k->initial[0] ^= (uint64_t)out_length | (uint64_t)key_length << 8 | 1ULL << 16 | 1ULL << 24;
    k->initial[6] ^= b2_load64(padded);
    k->initial[7] ^= b2_load64(padded + 8);
    memset(k->key_block, 0, sizeof k->key_block);
    memcpy(k->key_block, key, key_length);
    memcpy(k->keyed, k->initial, sizeof k->keyed);
    if (key_length > 0)
        b2_compress(k->keyed, k->key_block, B2_BLOCK, 0);
    k->key_length = key_length;
    k->out_length = out_length;
    return 0;
}

static void
b2_clear(b2_keyed *k)
{
    b2_wipe(k, sizeof *k);
}

/* The digest of message[0:length] into out[0:k->out_length]. */
static void
b2_digest(const b2_keyed *k, const uint8_t *message, size_t length, uint8_t *out)
{
    uint64_t h[8];
    uint8_t block[B2_BLOCK];
    if (length == 0) {
        /* The last block is the key block (or, without a key, a block of zeros). */
        memcpy(h, k->initial, sizeof h);
        if (k->key_length > 0)
            memcpy(block, k->key_block, B2_BLOCK);
        else
            memset(block, 0, B2_BLOCK);
        b2_compress(h, block, k->key_length > 0 ? B2_BLOCK : 0, 1);
    }
    else {
        memcpy(h, k->keyed, sizeof h);
        uint64_t t = k->key_length > 0 ? B2_BLOCK : 0;
        /* Every block but the last is full and not final; the last may be full. */
        while (length > B2_BLOCK) {
            t += B2_BLOCK;
            b2_compress(h, message, t, 0);
            message += B2_BLOCK;
            length -= B2_BLOCK;
        }
        memset(block, 0, B2_BLOCK);
        memcpy(block, message, length);
        t += length;
        b2_compress(h, block, t, 1);
    }
    uint8_t bytes[B2_MAX_OUT];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++)
            bytes[8 * i + j] = (uint8_t)(h[i] >> (8 * j));
    memcpy(out, bytes, k->out_length);
    b2_wipe(bytes, sizeof bytes);
    b2_wipe(h, sizeof h);
    b2_wipe(block, sizeof block);
}

#endif
