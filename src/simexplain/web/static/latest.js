// The single-flight queue for pointer updates (pure: no DOM): at most one request in flight,
// a newer job replaces a pending one (counted as superseded), and answers that arrive after
// `cancel()` (the pointer left, a new pair) are dropped (counted as stale). `send(job)` returns
// a promise of the answer, `apply(answer, job)` shows it, `onError(error)` hears failures;
// `stats` counts requests (the browser tests read the counters).

export function queueStats() {
  return { pointRequests: 0, pointApplied: 0, inFlight: 0, maxInFlight: 0, superseded: 0,
    stale: 0 };
}

export class Latest {
  constructor(send, apply, { onError, stats = queueStats() } = {}) {
    this.send = send;
    this.apply = apply;
    this.onError = onError || ((error) => console.error(error));
    this.stats = stats;
    this.busy = false;
    this.pending = null;
    this.generation = 0;
  }
  push(job) {
    if (this.pending) this.stats.superseded += 1;
    this.pending = job;
    if (!this.busy) this.next();
  }
  cancel() {
    // drop what is queued and ignore what is in flight
    this.pending = null;
    this.generation += 1;
  }
  async next() {
    const job = this.pending;
    this.pending = null;
    if (!job) return;
    this.busy = true;
    const generation = this.generation;
    const stats = this.stats;
    stats.inFlight += 1;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    stats.pointRequests += 1;
    try {
      const result = await this.send(job);
      if (generation === this.generation) {
        this.apply(result, job);
        stats.pointApplied += 1;
      } else {
        stats.stale += 1;
      }
    } catch (error) {
      if (generation === this.generation) this.onError(error);
    } finally {
      stats.inFlight -= 1;
      this.busy = false;
      if (this.pending) this.next();
    }
  }
}
