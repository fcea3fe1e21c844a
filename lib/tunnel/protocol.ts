/**
 * Constants of the agent link shared by proxy and agent (docs/protocol.md §1, §2, §5).
 * @module
 */

/** WebSocket subprotocol of this link version. */
export const WS_PROTOCOL = "kubesphere-v1";

/** SSH channel type of the tunnelled streams the proxy opens towards the agent. */
export const KUBESPHERE_CHANNEL = "kubesphere";

/** RFC 4254 §5.1 channel open failure reason codes. */
export const OPEN_FAILURE = {
  ADMINISTRATIVELY_PROHIBITED: 1,
  CONNECT_FAILED: 2,
  UNKNOWN_CHANNEL_TYPE: 3,
  RESOURCE_SHORTAGE: 4,
} as const;

/**
 * SSH algorithm preferences. ChaCha20-Poly1305 first: under Deno it is about
 * 2.5× faster than AES-GCM. The AES modes stay offered so that any peer,
 * including the original Go tower, finds a cipher in common.
 */
export const SSH_ALGORITHMS = {
  // ssh2's zlib compression throws under Deno; never negotiate it.
  compress: ["none"],
  cipher: [
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
  ],
};
