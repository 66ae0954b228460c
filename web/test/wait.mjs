// Waiting helpers shared by the node tests.

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// Polls `check` every 20 ms until it returns something truthy (returned), or throws after
/// `timeoutMs` naming `what`.
export async function until(what, check, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
