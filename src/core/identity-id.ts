/**
 * Identity ids: 1 to 128 characters of A-Z a-z 0-9 . _ - (they become part of job ids), but not
 * "." or "..".
 */
export const IDENTITY_ID_PATTERN = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,128}$";
const IDENTITY_ID = new RegExp(IDENTITY_ID_PATTERN);

/** Returns why `value` is not a valid identity id, or undefined when it is one. */
export function identityIdProblem(value: unknown): string | undefined {
  if (typeof value !== "string") return "identity id must be a string";
  if (value.length === 0) return "identity id must not be empty";
  if (value.length > 128)
    return `identity id is ${value.length} characters long; at most 128 are allowed`;
  // "." and ".." are path segments to every URL parser and file system a receiver may use.
  if (value === "." || value === "..") return `identity id must not be "${value}"`;
  if (!IDENTITY_ID.test(value)) {
    return "identity id may contain only letters A-Z a-z, digits 0-9, '.', '_' and '-'";
  }
  return undefined;
}
