/**
 * Field errors as k8s.io/apimachinery's `field.Error` renders them, for
 * `Status.details.causes` (the message is the error's body, the field apart)
 * and for `newInvalid`'s message: `Required value: …`, `Invalid value: "x":
 * …`, `Unsupported value: "x": supported values: "a", "b"`, `Too many: n:
 * must have at most m items`, `Duplicate value: "x"`, `Forbidden: …`.
 * @module
 */

import type { StatusCause } from "./types.ts";

/** A bad value as Go prints it: strings quoted, numbers and booleans plain. */
function show(v: unknown): string {
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

/** `field.Required`. */
export function required(field: string, detail = ""): StatusCause {
  return {
    reason: "FieldValueRequired",
    field,
    message: detail ? `Required value: ${detail}` : "Required value",
  };
}

/** `field.Invalid`. */
export function invalidValue(field: string, value: unknown, detail: string): StatusCause {
  return {
    reason: "FieldValueInvalid",
    field,
    message: `Invalid value: ${show(value)}: ${detail}`,
  };
}

/** `field.NotSupported` (the supported values in the order given). */
export function notSupported(field: string, value: unknown, supported: string[]): StatusCause {
  return {
    reason: "FieldValueNotSupported",
    field,
    message: `Unsupported value: ${show(value)}: supported values: ${
      supported.map((s) => JSON.stringify(s)).join(", ")
    }`,
  };
}

/** `field.TooMany`. */
export function tooMany(field: string, actual: number, max: number): StatusCause {
  return {
    reason: "FieldValueTooMany",
    field,
    message: `Too many: ${actual}: must have at most ${max} ${max === 1 ? "item" : "items"}`,
  };
}

/** `field.Duplicate`. */
export function duplicate(field: string, value: unknown): StatusCause {
  return { reason: "FieldValueDuplicate", field, message: `Duplicate value: ${show(value)}` };
}

/** `field.Forbidden`. */
export function forbiddenField(field: string, detail: string): StatusCause {
  return { reason: "FieldValueForbidden", field, message: `Forbidden: ${detail}` };
}

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

const LABEL_MSG = "a lowercase RFC 1123 label must consist of lower case alphanumeric " +
  "characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  " +
  "or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric " +
  "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. " +
  "'example.com', regex used for validation is " +
  "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_MSG = "must consist of alphanumeric characters, '-', '_' or '.', and must " +
  "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', " +
  "regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG = "a valid label must be an empty string or consist of alphanumeric " +
  "characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. " +
  "'MyValue',  or 'my_value',  or '12345', regex used for validation is " +
  "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/** `validation.IsDNS1123Label`: the problems with `v` (none when valid). */
export function dns1123Label(v: string): string[] {
  const out: string[] = [];
  if (v.length > 63) out.push("must be no more than 63 characters");
  if (!DNS1123_LABEL.test(v)) {
    out.push(DNS1123_SUBDOMAIN.test(v) ? "must not contain dots" : LABEL_MSG);
  }
  return out;
}

/** `validation.IsDNS1123Subdomain`. */
export function dns1123Subdomain(v: string): string[] {
  const out: string[] = [];
  if (v.length > 253) out.push("must be no more than 253 characters");
  if (!DNS1123_SUBDOMAIN.test(v)) out.push(SUBDOMAIN_MSG);
  return out;
}

/** `validation.IsQualifiedName` (`[prefix/]name`). */
export function qualifiedName(v: string): string[] {
  const parts = v.split("/");
  if (parts.length > 2) {
    return [
      `a qualified name ${QUALIFIED_MSG} with an optional DNS subdomain prefix and '/' ` +
      `(e.g. 'example.com/MyName')`,
    ];
  }
  const name = parts.at(-1)!;
  const out: string[] = [];
  if (parts.length === 2) {
    if (!parts[0]) out.push("prefix part must be non-empty");
    else out.push(...dns1123Subdomain(parts[0]).map((m) => `prefix part ${m}`));
  }
  if (!name) out.push("name part must be non-empty");
  else if (name.length > 63) out.push("name part must be no more than 63 characters");
  if (!QUALIFIED_NAME.test(name)) out.push(`name part ${QUALIFIED_MSG}`);
  return out;
}

/** `validation.IsValidLabelValue`. */
export function labelValue(v: string): string[] {
  const out: string[] = [];
  if (v.length > 63) out.push("must be no more than 63 characters");
  if (!LABEL_VALUE.test(v)) out.push(LABEL_VALUE_MSG);
  return out;
}

/**
 * `validation.IsFullyQualifiedDomainName`: a DNS subdomain of at least two
 * labels, a trailing dot allowed.
 */
export function fqdn(field: string, v: string): StatusCause[] {
  if (v === "") return [required(field)];
  const name = v.endsWith(".") ? v.slice(0, -1) : v;
  const sub = dns1123Subdomain(name);
  if (sub.length) return [invalidValue(field, name, sub.join(","))];
  const labels = name.split(".");
  if (labels.length < 2) {
    return [
      invalidValue(field, name, "should be a domain with at least two segments separated by dots"),
    ];
  }
  for (const l of labels) {
    const bad = dns1123Label(l);
    if (bad.length) return [invalidValue(field, l, bad.join(","))];
  }
  return [];
}
