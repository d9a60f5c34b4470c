#!/usr/bin/env node
// From a checkout (tsx installed as a devDependency) the TypeScript CLI runs through tsx's loader,
// so it needs no build; a production install (npm ci --omit=dev, the image) has no tsx and runs
// the compiled CLI in dist/ (npm run build).
let register;
try {
  ({ register } = await import("tsx/esm/api"));
} catch {
  register = undefined;
}
if (register) {
  register();
  await import("../src/cli/main.ts");
} else {
  await import("../dist/src/cli/main.js");
}
