/**
 * Test vectors of RFC 8439 (ChaCha20 and Poly1305 for IETF Protocols), Appendix A.1 (ChaCha20
 * block function), A.2 (ChaCha20 encryption) and A.3 (Poly1305), plus the §2.5.2 example.
 * Hex strings; nonces are RFC 8439's 96-bit ones (state words 13–15, little-endian words).
 * @module
 */

/** The text of A.2 #2 and A.3 #2/#3 (375 bytes). */
export const IETF_TEXT = "Any submission to the IETF intended by the Contributor for publication " +
  "as all or part of an IETF Internet-Draft or RFC and any statement made within the context of " +
  'an IETF activity is considered an "IETF Contribution". Such statements include oral ' +
  "statements in IETF sessions, as well as written and electronic communications made at any " +
  "time or place, which are addressed to";

/** The text of A.2 #3 and A.3 #4 (127 bytes). */
export const JABBERWOCKY = "'Twas brillig, and the slithy toves\nDid gyre and gimble in the " +
  "wabe:\nAll mimsy were the borogoves,\nAnd the mome raths outgrabe.";

const Z32 = "00".repeat(32);
const Z12 = "00".repeat(12);

/** A.1: one 64-byte keystream block for key, nonce and block counter. */
export const CHACHA20_BLOCKS: { key: string; nonce: string; counter: number; block: string }[] = [
  {
    key: Z32,
    nonce: Z12,
    counter: 0,
    block: "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7" +
      "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
  },
  {
    key: Z32,
    nonce: Z12,
    counter: 1,
    block: "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed" +
      "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f",
  },
  {
    key: "00".repeat(31) + "01",
    nonce: Z12,
    counter: 1,
    block: "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a" +
      "8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0",
  },
  {
    key: "00ff" + "00".repeat(30),
    nonce: Z12,
    counter: 2,
    block: "72d54dfbf12ec44b362692df94137f328fea8da73990265ec1bbbea1ae9af0ca" +
      "13b25aa26cb4a648cb9b9d1be65b2c0924a66c54d545ec1b7374f4872e99f096",
  },
  {
    key: Z32,
    nonce: "00".repeat(11) + "02",
    counter: 0,
    block: "c2c64d378cd536374ae204b9ef933fcd1a8b2288b3dfa49672ab765b54ee27c7" +
      "8a970e0e955c14f3a88e741b97c286f75f8fc299e8148362fa198a39531bed6d",
  },
];

/** A.2: ChaCha20 encryption from block counter `counter`. `plain` is hex. */
export const CHACHA20_ENCRYPTIONS: {
  key: string;
  nonce: string;
  counter: number;
  plain: string;
  cipher: string;
}[] = [
  {
    key: Z32,
    nonce: Z12,
    counter: 0,
    plain: "00".repeat(64),
    cipher: "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7" +
      "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
  },
  {
    key: "00".repeat(31) + "01",
    nonce: "00".repeat(11) + "02",
    counter: 1,
    plain: textHex(IETF_TEXT),
    cipher: "a3fbf07df3fa2fde4f376ca23e82737041605d9f4f4f57bd8cff2c1d4b7955ec" +
      "2a97948bd3722915c8f3d337f7d370050e9e96d647b7c39f56e031ca5eb6250d" +
      "4042e02785ececfa4b4bb5e8ead0440e20b6e8db09d881a7c6132f420e527950" +
      "42bdfa7773d8a9051447b3291ce1411c680465552aa6c405b7764d5e87bea85a" +
      "d00f8449ed8f72d0d662ab052691ca66424bc86d2df80ea41f43abf937d3259d" +
      "c4b2d0dfb48a6c9139ddd7f76966e928e635553ba76c5c879d7b35d49eb2e62b" +
      "0871cdac638939e25e8a1e0ef9d5280fa8ca328b351c3c765989cbcf3daa8b6c" +
      "cc3aaf9f3979c92b3720fc88dc95ed84a1be059c6499b9fda236e7e818b04b0b" +
      "c39c1e876b193bfe5569753f88128cc08aaa9b63d1a16f80ef2554d7189c411f" +
      "5869ca52c5b83fa36ff216b9c1d30062bebcfd2dc5bce0911934fda79a86f6e6" +
      "98ced759c3ff9b6477338f3da4f9cd8514ea9982ccafb341b2384dd902f3d1ab" +
      "7ac61dd29c6f21ba5b862f3730e37cfdc4fd806c22f221",
  },
  {
    key: "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
    nonce: "00".repeat(11) + "02",
    counter: 42,
    plain: textHex(JABBERWOCKY),
    cipher: "62e6347f95ed87a45ffae7426f27a1df5fb69110044c0d73118effa95b01e5cf" +
      "166d3df2d721caf9b21e5fb14c616871fd84c54f9d65b283196c7fe4f60553eb" +
      "f39c6402c42234e32a356b3e764312a61a5532055716ead6962568f87d3f3f77" +
      "04c6a8d1bcd1bf4d50d6154b6da731b187b58dfd728afa36757a797ac188d1",
  },
];

/** §2.5.2 and A.3 #1–#11: Poly1305 tag of `msg` (hex) under the one-time `key`. */
export const POLY1305_VECTORS: { name: string; key: string; msg: string; tag: string }[] = [
  {
    name: "§2.5.2",
    key: "85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b",
    msg: textHex("Cryptographic Forum Research Group"),
    tag: "a8061dc1305136c6c22b8baf0c0127a9",
  },
  { name: "A.3 #1", key: Z32, msg: "00".repeat(64), tag: "00".repeat(16) },
  {
    name: "A.3 #2",
    key: "00".repeat(16) + "36e5f6b5c5e06070f0efca96227a863e",
    msg: textHex(IETF_TEXT),
    tag: "36e5f6b5c5e06070f0efca96227a863e",
  },
  {
    name: "A.3 #3",
    key: "36e5f6b5c5e06070f0efca96227a863e" + "00".repeat(16),
    msg: textHex(IETF_TEXT),
    tag: "f3477e7cd95417af89a6b8794c310cf0",
  },
  {
    name: "A.3 #4",
    key: "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
    msg: textHex(JABBERWOCKY),
    tag: "4541669a7eaaee61e708dc7cbcc5eb62",
  },
  {
    name: "A.3 #5",
    key: "02" + "00".repeat(31),
    msg: "ff".repeat(16),
    tag: "03" + "00".repeat(15),
  },
  {
    name: "A.3 #6",
    key: "02" + "00".repeat(15) + "ff".repeat(16),
    msg: "02" + "00".repeat(15),
    tag: "03" + "00".repeat(15),
  },
  {
    name: "A.3 #7",
    key: "01" + "00".repeat(31),
    msg: "ff".repeat(16) + "f0" + "ff".repeat(15) + "11" + "00".repeat(15),
    tag: "05" + "00".repeat(15),
  },
  {
    name: "A.3 #8",
    key: "01" + "00".repeat(31),
    msg: "ff".repeat(16) + "fb" + "fe".repeat(15) + "01".repeat(16),
    tag: "00".repeat(16),
  },
  {
    name: "A.3 #9",
    key: "02" + "00".repeat(31),
    msg: "fd" + "ff".repeat(15),
    tag: "faffffffffffffffffffffffffffffff",
  },
  {
    name: "A.3 #10",
    key: "0100000000000000" + "0400000000000000" + "00".repeat(16),
    msg: "e33594d7505e43b9" + "0000000000000000" + "3394d7505e4379cd" + "0100000000000000" +
      "00".repeat(16) + "01" + "00".repeat(15),
    tag: "14000000000000005500000000000000",
  },
  {
    name: "A.3 #11",
    key: "0100000000000000" + "0400000000000000" + "00".repeat(16),
    msg: "e33594d7505e43b9" + "0000000000000000" + "3394d7505e4379cd" + "0100000000000000" +
      "00".repeat(16),
    tag: "13" + "00".repeat(15),
  },
];

/** Bytes of a hex string. */
export function unhex(s: string): Uint8Array {
  return Uint8Array.from(s.match(/../g) ?? [], (h) => parseInt(h, 16));
}

/** Hex of bytes. */
export function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function textHex(s: string): string {
  return hex(new TextEncoder().encode(s));
}
