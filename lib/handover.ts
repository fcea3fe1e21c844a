/**
 * The handover request, Tower's addition to the original protocol (both ends
 * use it): a proxy replica that is shutting down sends the SSH global request
 * {@link DRAIN_REQUEST} to each agent, without asking for a reply. A Tower
 * agent connects a second session at once (through the agent Service, to
 * another replica) and keeps the first until the proxy closes it, so its
 * cluster is served throughout; the original agent ignores the request and
 * reconnects when the session closes, as before.
 * @module
 */

/** Name of the handover global request (no payload, want-reply false). */
export const DRAIN_REQUEST = "drain@tower.kubesphere.io";
