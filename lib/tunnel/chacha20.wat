;; ChaCha20 (the original: 64-bit block counter, 64-bit nonce, as chacha20-poly1305@openssh.com
;; uses it) for WebAssembly with 128-bit SIMD, four blocks at a time, and the SSH packet sealing
;; and opening built on it and on ./poly1305.wat's `mac`, whose memory this module shares.
;;
;; Four blocks run side by side: vector $xN holds state word N of blocks c, c+1, c+2, c+3 (one
;; per i32 lane). After the 20 rounds and the feed-forward, each group of four vectors is
;; transposed so that a vector holds 16 consecutive keystream bytes of one block, and is XORed
;; into (or stored as) the data. Rotations by 16 and 8 are byte shuffles, by 12 and 7 shifts.
;;
;; One SSH packet at a time, in the shared memory: the packet at PKT (4-byte length field,
;; body, then room for the 16-byte MAC), the Poly1305 key at 0, the computed MAC at 32 (see
;; poly1305.wat). The caller copies the two 32-byte ChaCha20 keys of the packet's direction to
;; MAIN_KEY and LEN_KEY first. `seal` encrypts the length field and the body in place and
;; writes the MAC after them; `open` checks the MAC (the length field as received, still
;; encrypted) and only then decrypts the body in place. Both take the sequence number, whose
;; 8 big-endian bytes are the nonce.
;;
;; lib/tunnel/chacha20_wasm.ts holds the assembled module: regenerate it with
;; `deno run -A scripts/gen_wasm.ts` after changing this file (a test checks they match).
(module
  (import "poly1305" "memory" (memory 5))
  (import "poly1305" "mac" (func $mac (param i32 i32 i32 i32)))
  ;; Layout after poly1305.wat's first 64 bytes (its key, MAC and scratch block): MAIN_KEY 64
  ;; and LEN_KEY 96 (32 bytes each), KS 128 (256: four keystream blocks, for the first and last
  ;; pieces of a range), MAIN_V 384 and MIX_V 512 (128 each: the key words as vectors, see
  ;; $keys), and the packet from PKT (1024) to the end of the memory, which the caller grows
  ;; for a packet that does not fit.
  (global $MAIN_KEY i32 (i32.const 64))
  (global $LEN_KEY i32 (i32.const 96))
  (global $KS i32 (i32.const 128))
  (global $MAIN_V i32 (i32.const 384))
  (global $MIX_V i32 (i32.const 512))
  (global $PKT i32 (i32.const 1024))
  (export "MAIN_KEY" (global $MAIN_KEY))
  (export "LEN_KEY" (global $LEN_KEY))
  (export "PKT" (global $PKT))

  (func $rotl16 (param $v v128) (result v128)
    (i8x16.shuffle 2 3 0 1 6 7 4 5 10 11 8 9 14 15 12 13 (local.get $v) (local.get $v)))
  (func $rotl8 (param $v v128) (result v128)
    (i8x16.shuffle 3 0 1 2 7 4 5 6 11 8 9 10 15 12 13 14 (local.get $v) (local.get $v)))
  (func $rotl12 (param $v v128) (result v128)
    (v128.or (i32x4.shl (local.get $v) (i32.const 12)) (i32x4.shr_u (local.get $v) (i32.const 20))))
  (func $rotl7 (param $v v128) (result v128)
    (v128.or (i32x4.shl (local.get $v) (i32.const 7)) (i32x4.shr_u (local.get $v) (i32.const 25))))

  ;; The nonce word (state word 15) for sequence number $s: its bytes big-endian.
  (func $nonce (param $s i32) (result i32)
    (i32.or
      (i32.or (i32.shl (local.get $s) (i32.const 24))
        (i32.shl (i32.and (local.get $s) (i32.const 0xff00)) (i32.const 8)))
      (i32.or (i32.and (i32.shr_u (local.get $s) (i32.const 8)) (i32.const 0xff00))
        (i32.shr_u (local.get $s) (i32.const 24)))))

  ;; Write rows a, b, c, d (state words 4j..4j+3 of the four blocks) of the keystream to $dst
  ;; as bytes 16j..16j+15 of each block (blocks 64 bytes apart), XORed into what is there
  ;; when $xor is set, else stored.
  (func $put (param $dst i32) (param $xor i32) (param $a v128) (param $b v128) (param $c v128) (param $d v128)
    (local $t0 v128) (local $t1 v128) (local $t2 v128) (local $t3 v128)
    (local $r0 v128) (local $r1 v128) (local $r2 v128) (local $r3 v128)
    (local.set $t0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a) (local.get $b)))
    (local.set $t1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a) (local.get $b)))
    (local.set $t2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $c) (local.get $d)))
    (local.set $t3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $c) (local.get $d)))
    (local.set $r0 (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t0) (local.get $t2)))
    (local.set $r1 (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t0) (local.get $t2)))
    (local.set $r2 (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t1) (local.get $t3)))
    (local.set $r3 (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t1) (local.get $t3)))
    (if (local.get $xor)
      (then
        (v128.store (local.get $dst) (v128.xor (v128.load (local.get $dst)) (local.get $r0)))
        (v128.store offset=64 (local.get $dst) (v128.xor (v128.load offset=64 (local.get $dst)) (local.get $r1)))
        (v128.store offset=128 (local.get $dst) (v128.xor (v128.load offset=128 (local.get $dst)) (local.get $r2)))
        (v128.store offset=192 (local.get $dst) (v128.xor (v128.load offset=192 (local.get $dst)) (local.get $r3))))
      (else
        (v128.store (local.get $dst) (local.get $r0))
        (v128.store offset=64 (local.get $dst) (local.get $r1))
        (v128.store offset=128 (local.get $dst) (local.get $r2))
        (v128.store offset=192 (local.get $dst) (local.get $r3)))))

  ;; Four keystream blocks, 256 bytes, XORed into $dst when $xor is set, else stored there:
  ;; lane i's block has the key words in lane i of the eight vectors at $keyv (MAIN_V: the main
  ;; key in every lane; MIX_V: the length key in lane 0), block counter lane i of $ctr, and
  ;; nonce word $n15 (word 13, the counter's high half, and word 14 are 0).
  (func $blocks4 (param $keyv i32) (param $ctr v128) (param $n15 i32) (param $dst i32) (param $xor i32)
    (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128) (local $x4 v128) (local $x5 v128) (local $x6 v128) (local $x7 v128) (local $x8 v128) (local $x9 v128) (local $x10 v128) (local $x11 v128) (local $x12 v128) (local $x13 v128) (local $x14 v128) (local $x15 v128)
    (local $i i32)
    (local.set $x0 (i32x4.splat (i32.const 0x61707865)))
    (local.set $x1 (i32x4.splat (i32.const 0x3320646e)))
    (local.set $x2 (i32x4.splat (i32.const 0x79622d32)))
    (local.set $x3 (i32x4.splat (i32.const 0x6b206574)))
    (local.set $x4 (v128.load offset=0 (local.get $keyv)))
    (local.set $x5 (v128.load offset=16 (local.get $keyv)))
    (local.set $x6 (v128.load offset=32 (local.get $keyv)))
    (local.set $x7 (v128.load offset=48 (local.get $keyv)))
    (local.set $x8 (v128.load offset=64 (local.get $keyv)))
    (local.set $x9 (v128.load offset=80 (local.get $keyv)))
    (local.set $x10 (v128.load offset=96 (local.get $keyv)))
    (local.set $x11 (v128.load offset=112 (local.get $keyv)))
    (local.set $x12 (local.get $ctr))
    (local.set $x13 (v128.const i32x4 0 0 0 0))
    (local.set $x14 (v128.const i32x4 0 0 0 0))
    (local.set $x15 (i32x4.splat (local.get $n15)))
    (local.set $i (i32.const 10))
    (loop $round
      ;; Column round.
      (local.set $x0 (i32x4.add (local.get $x0) (local.get $x4))) (local.set $x12 (call $rotl16 (v128.xor (local.get $x12) (local.get $x0))))
      (local.set $x8 (i32x4.add (local.get $x8) (local.get $x12))) (local.set $x4 (call $rotl12 (v128.xor (local.get $x4) (local.get $x8))))
      (local.set $x0 (i32x4.add (local.get $x0) (local.get $x4))) (local.set $x12 (call $rotl8 (v128.xor (local.get $x12) (local.get $x0))))
      (local.set $x8 (i32x4.add (local.get $x8) (local.get $x12))) (local.set $x4 (call $rotl7 (v128.xor (local.get $x4) (local.get $x8))))
      (local.set $x1 (i32x4.add (local.get $x1) (local.get $x5))) (local.set $x13 (call $rotl16 (v128.xor (local.get $x13) (local.get $x1))))
      (local.set $x9 (i32x4.add (local.get $x9) (local.get $x13))) (local.set $x5 (call $rotl12 (v128.xor (local.get $x5) (local.get $x9))))
      (local.set $x1 (i32x4.add (local.get $x1) (local.get $x5))) (local.set $x13 (call $rotl8 (v128.xor (local.get $x13) (local.get $x1))))
      (local.set $x9 (i32x4.add (local.get $x9) (local.get $x13))) (local.set $x5 (call $rotl7 (v128.xor (local.get $x5) (local.get $x9))))
      (local.set $x2 (i32x4.add (local.get $x2) (local.get $x6))) (local.set $x14 (call $rotl16 (v128.xor (local.get $x14) (local.get $x2))))
      (local.set $x10 (i32x4.add (local.get $x10) (local.get $x14))) (local.set $x6 (call $rotl12 (v128.xor (local.get $x6) (local.get $x10))))
      (local.set $x2 (i32x4.add (local.get $x2) (local.get $x6))) (local.set $x14 (call $rotl8 (v128.xor (local.get $x14) (local.get $x2))))
      (local.set $x10 (i32x4.add (local.get $x10) (local.get $x14))) (local.set $x6 (call $rotl7 (v128.xor (local.get $x6) (local.get $x10))))
      (local.set $x3 (i32x4.add (local.get $x3) (local.get $x7))) (local.set $x15 (call $rotl16 (v128.xor (local.get $x15) (local.get $x3))))
      (local.set $x11 (i32x4.add (local.get $x11) (local.get $x15))) (local.set $x7 (call $rotl12 (v128.xor (local.get $x7) (local.get $x11))))
      (local.set $x3 (i32x4.add (local.get $x3) (local.get $x7))) (local.set $x15 (call $rotl8 (v128.xor (local.get $x15) (local.get $x3))))
      (local.set $x11 (i32x4.add (local.get $x11) (local.get $x15))) (local.set $x7 (call $rotl7 (v128.xor (local.get $x7) (local.get $x11))))
      ;; Diagonal round.
      (local.set $x0 (i32x4.add (local.get $x0) (local.get $x5))) (local.set $x15 (call $rotl16 (v128.xor (local.get $x15) (local.get $x0))))
      (local.set $x10 (i32x4.add (local.get $x10) (local.get $x15))) (local.set $x5 (call $rotl12 (v128.xor (local.get $x5) (local.get $x10))))
      (local.set $x0 (i32x4.add (local.get $x0) (local.get $x5))) (local.set $x15 (call $rotl8 (v128.xor (local.get $x15) (local.get $x0))))
      (local.set $x10 (i32x4.add (local.get $x10) (local.get $x15))) (local.set $x5 (call $rotl7 (v128.xor (local.get $x5) (local.get $x10))))
      (local.set $x1 (i32x4.add (local.get $x1) (local.get $x6))) (local.set $x12 (call $rotl16 (v128.xor (local.get $x12) (local.get $x1))))
      (local.set $x11 (i32x4.add (local.get $x11) (local.get $x12))) (local.set $x6 (call $rotl12 (v128.xor (local.get $x6) (local.get $x11))))
      (local.set $x1 (i32x4.add (local.get $x1) (local.get $x6))) (local.set $x12 (call $rotl8 (v128.xor (local.get $x12) (local.get $x1))))
      (local.set $x11 (i32x4.add (local.get $x11) (local.get $x12))) (local.set $x6 (call $rotl7 (v128.xor (local.get $x6) (local.get $x11))))
      (local.set $x2 (i32x4.add (local.get $x2) (local.get $x7))) (local.set $x13 (call $rotl16 (v128.xor (local.get $x13) (local.get $x2))))
      (local.set $x8 (i32x4.add (local.get $x8) (local.get $x13))) (local.set $x7 (call $rotl12 (v128.xor (local.get $x7) (local.get $x8))))
      (local.set $x2 (i32x4.add (local.get $x2) (local.get $x7))) (local.set $x13 (call $rotl8 (v128.xor (local.get $x13) (local.get $x2))))
      (local.set $x8 (i32x4.add (local.get $x8) (local.get $x13))) (local.set $x7 (call $rotl7 (v128.xor (local.get $x7) (local.get $x8))))
      (local.set $x3 (i32x4.add (local.get $x3) (local.get $x4))) (local.set $x14 (call $rotl16 (v128.xor (local.get $x14) (local.get $x3))))
      (local.set $x9 (i32x4.add (local.get $x9) (local.get $x14))) (local.set $x4 (call $rotl12 (v128.xor (local.get $x4) (local.get $x9))))
      (local.set $x3 (i32x4.add (local.get $x3) (local.get $x4))) (local.set $x14 (call $rotl8 (v128.xor (local.get $x14) (local.get $x3))))
      (local.set $x9 (i32x4.add (local.get $x9) (local.get $x14))) (local.set $x4 (call $rotl7 (v128.xor (local.get $x4) (local.get $x9))))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $round (local.get $i)))
    ;; Feed-forward: add the input state.
    (local.set $x0 (i32x4.add (local.get $x0) (i32x4.splat (i32.const 0x61707865))))
    (local.set $x1 (i32x4.add (local.get $x1) (i32x4.splat (i32.const 0x3320646e))))
    (local.set $x2 (i32x4.add (local.get $x2) (i32x4.splat (i32.const 0x79622d32))))
    (local.set $x3 (i32x4.add (local.get $x3) (i32x4.splat (i32.const 0x6b206574))))
    (local.set $x4 (i32x4.add (local.get $x4) (v128.load offset=0 (local.get $keyv))))
    (local.set $x5 (i32x4.add (local.get $x5) (v128.load offset=16 (local.get $keyv))))
    (local.set $x6 (i32x4.add (local.get $x6) (v128.load offset=32 (local.get $keyv))))
    (local.set $x7 (i32x4.add (local.get $x7) (v128.load offset=48 (local.get $keyv))))
    (local.set $x8 (i32x4.add (local.get $x8) (v128.load offset=64 (local.get $keyv))))
    (local.set $x9 (i32x4.add (local.get $x9) (v128.load offset=80 (local.get $keyv))))
    (local.set $x10 (i32x4.add (local.get $x10) (v128.load offset=96 (local.get $keyv))))
    (local.set $x11 (i32x4.add (local.get $x11) (v128.load offset=112 (local.get $keyv))))
    (local.set $x12 (i32x4.add (local.get $x12) (local.get $ctr)))
    (local.set $x15 (i32x4.add (local.get $x15) (i32x4.splat (local.get $n15))))
    (call $put (i32.add (local.get $dst) (i32.const 0)) (local.get $xor) (local.get $x0) (local.get $x1) (local.get $x2) (local.get $x3))
    (call $put (i32.add (local.get $dst) (i32.const 16)) (local.get $xor) (local.get $x4) (local.get $x5) (local.get $x6) (local.get $x7))
    (call $put (i32.add (local.get $dst) (i32.const 32)) (local.get $xor) (local.get $x8) (local.get $x9) (local.get $x10) (local.get $x11))
    (call $put (i32.add (local.get $dst) (i32.const 48)) (local.get $xor) (local.get $x12) (local.get $x13) (local.get $x14) (local.get $x15))
  )

  ;; XOR $len bytes at $p with KS from byte $from on (at most 256 - $from bytes).
  (func $xorks (param $p i32) (param $len i32) (param $from i32)
    (local $k i32) (local $i i32)
    (local.set $k (i32.add (global.get $KS) (local.get $from)))
    (block $done
      (loop $v
        (br_if $done (i32.lt_u (i32.sub (local.get $len) (local.get $i)) (i32.const 16)))
        (v128.store (i32.add (local.get $p) (local.get $i))
          (v128.xor (v128.load (i32.add (local.get $p) (local.get $i)))
            (v128.load (i32.add (local.get $k) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $v)))
    (block $end
      (loop $b
        (br_if $end (i32.ge_u (local.get $i) (local.get $len)))
        (i32.store8 (i32.add (local.get $p) (local.get $i))
          (i32.xor (i32.load8_u (i32.add (local.get $p) (local.get $i)))
            (i32.load8_u (i32.add (local.get $k) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $b))))

  ;; XOR $len bytes at $p in place with the main key's keystream from block $ctr on, for nonce
  ;; word $n15.
  (func $stream (param $ctr i32) (param $n15 i32) (param $p i32) (param $len i32)
    (local $c v128)
    (local.set $c (i32x4.add (i32x4.splat (local.get $ctr)) (v128.const i32x4 0 1 2 3)))
    (block $done
      (loop $groups
        (br_if $done (i32.lt_u (local.get $len) (i32.const 256)))
        (call $blocks4 (global.get $MAIN_V) (local.get $c) (local.get $n15) (local.get $p) (i32.const 1))
        (local.set $c (i32x4.add (local.get $c) (i32x4.splat (i32.const 4))))
        (local.set $p (i32.add (local.get $p) (i32.const 256)))
        (local.set $len (i32.sub (local.get $len) (i32.const 256)))
        (br $groups)))
    (if (local.get $len)
      (then
        (call $blocks4 (global.get $MAIN_V) (local.get $c) (local.get $n15) (global.get $KS) (i32.const 0))
        (call $xorks (local.get $p) (local.get $len) (i32.const 0)))))

  ;; The key vectors from the keys at MAIN_KEY and LEN_KEY: MAIN_V (the main key in every
  ;; lane) and MIX_V (the same with the length key in lane 0).
  (func $keys
    (local $i i32) (local $v v128)
    (loop $words
      (local.set $v (v128.load32_splat (i32.add (global.get $MAIN_KEY) (local.get $i))))
      (v128.store (i32.add (global.get $MAIN_V) (i32.shl (local.get $i) (i32.const 2))) (local.get $v))
      (v128.store (i32.add (global.get $MIX_V) (i32.shl (local.get $i) (i32.const 2)))
        (i32x4.replace_lane 0 (local.get $v) (i32.load (i32.add (global.get $LEN_KEY) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br_if $words (i32.lt_u (local.get $i) (i32.const 32)))))

  ;; The first four blocks of a packet into KS: the length key's block 0 (bytes 0-63), then the
  ;; main key's blocks 0 (the Poly1305 key, also copied to 0), 1 and 2 (bytes 128-255, the
  ;; body's first 128 bytes). Also sets up the key vectors.
  (func $head (param $n15 i32)
    (call $keys)
    (call $blocks4 (global.get $MIX_V) (v128.const i32x4 0 0 1 2) (local.get $n15) (global.get $KS) (i32.const 0))
    (v128.store (i32.const 0) (v128.load offset=64 (global.get $KS)))
    (v128.store (i32.const 16) (v128.load offset=80 (global.get $KS))))

  ;; XOR the $len body bytes at PKT+4 with the main key's keystream from block 1: blocks 1 and
  ;; 2 are in KS (see $head), the rest from block 3 on.
  (func $body (param $n15 i32) (param $len i32)
    (call $xorks (i32.add (global.get $PKT) (i32.const 4))
      (select (local.get $len) (i32.const 128) (i32.lt_u (local.get $len) (i32.const 128)))
      (i32.const 128))
    (if (i32.gt_u (local.get $len) (i32.const 128))
      (then
        (call $stream (i32.const 3) (local.get $n15)
          (i32.add (global.get $PKT) (i32.const 132)) (i32.sub (local.get $len) (i32.const 128))))))

  ;; XOR $len bytes at $p with the main key's keystream from block $ctr for SSH sequence number
  ;; $seqno (for tests).
  (func (export "xor") (param $ctr i32) (param $seqno i32) (param $p i32) (param $len i32)
    (call $keys)
    (call $stream (local.get $ctr) (call $nonce (local.get $seqno)) (local.get $p) (local.get $len)))

  ;; The packet length in the (encrypted) length field at PKT for sequence number $seqno.
  (func (export "length") (param $seqno i32) (result i32)
    (local $w i32)
    (call $keys)
    (call $blocks4 (global.get $MIX_V) (v128.const i32x4 0 0 1 2) (call $nonce (local.get $seqno))
      (global.get $KS) (i32.const 0))
    (local.set $w (i32.xor (i32.load (global.get $PKT)) (i32.load (global.get $KS))))
    ;; big-endian on the wire
    (i32.or
      (i32.or (i32.shl (local.get $w) (i32.const 24))
        (i32.shl (i32.and (local.get $w) (i32.const 0xff00)) (i32.const 8)))
      (i32.or (i32.and (i32.shr_u (local.get $w) (i32.const 8)) (i32.const 0xff00))
        (i32.shr_u (local.get $w) (i32.const 24)))))

  ;; Seal the packet at PKT (length field and $len body bytes) in place for sequence number
  ;; $seqno, and write its MAC after it.
  (func (export "seal") (param $len i32) (param $seqno i32)
    (local $n15 i32)
    (local.set $n15 (call $nonce (local.get $seqno)))
    (call $head (local.get $n15))
    (i32.store (global.get $PKT) (i32.xor (i32.load (global.get $PKT)) (i32.load (global.get $KS))))
    (call $body (local.get $n15) (local.get $len))
    (call $mac (global.get $PKT) (i32.add (local.get $len) (i32.const 4)) (i32.const 0)
      (i32.add (global.get $PKT) (i32.add (local.get $len) (i32.const 4)))))

  ;; Check the MAC of the packet at PKT (length field as received, $len body bytes, then its
  ;; MAC) for sequence number $seqno: 1 if right, else 0; nothing is decrypted (the caller
  ;; decrypts a long body itself, with the keystream from block 1).
  (func (export "check") (param $len i32) (param $seqno i32) (result i32)
    (call $head (call $nonce (local.get $seqno)))
    (call $mac (global.get $PKT) (i32.add (local.get $len) (i32.const 4)) (i32.const 0) (i32.const 32))
    (i32.eqz (v128.any_true (v128.xor (v128.load (i32.const 32))
      (v128.load (i32.add (global.get $PKT) (i32.add (local.get $len) (i32.const 4))))))))

  ;; Open the packet at PKT (length field as received, $len body bytes, then its MAC) for
  ;; sequence number $seqno: 1 and the body decrypted in place, or 0 (MAC wrong: nothing
  ;; decrypted). Every byte of both MACs is compared whatever they hold.
  (func (export "open") (param $len i32) (param $seqno i32) (result i32)
    (local $n15 i32)
    (local.set $n15 (call $nonce (local.get $seqno)))
    (call $head (local.get $n15))
    (call $mac (global.get $PKT) (i32.add (local.get $len) (i32.const 4)) (i32.const 0) (i32.const 32))
    (if (v128.any_true (v128.xor (v128.load (i32.const 32))
          (v128.load (i32.add (global.get $PKT) (i32.add (local.get $len) (i32.const 4))))))
      (then (return (i32.const 0))))
    (call $body (local.get $n15) (local.get $len))
    (i32.const 1))
)
