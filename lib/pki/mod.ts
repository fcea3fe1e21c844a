/**
 * Tower PKI: load or generate the CA, issue serving and client certificates,
 * verify client certificates.
 * @module
 */

export {
  BACKDATE_MS,
  type CA,
  generateCA,
  type GenerateCAOptions,
  type KeyPairPem,
  loadCA,
  subjectName,
} from "./ca.ts";
export {
  type ClientCertOptions,
  issueClientCert,
  issueServingCert,
  type ServingCertOptions,
} from "./issue.ts";
export { type ClientCertVerdict, type VerifiedClient, verifyClientCert } from "./verify.ts";
export {
  type Binding,
  type BindingRole,
  bindingUri,
  credentialEpoch,
  type EpochInput,
  findBinding,
} from "./binding.ts";
export { decodePem, encodePem, firstPemBlock, type PemBlock, sha256Fingerprint } from "./pem.ts";
export { type ImportedKey, importPrivateKeyPem, type KeyAlgorithmName } from "./keys.ts";
