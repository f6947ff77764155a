/**
 * A promise with its resolve/reject exposed. Its rejection is marked as handled at birth: the
 * library creates promises the caller may never await (`sandbox.terminate()` without `await`, a
 * process nobody waits for), and a rejection of those must not crash the program as an
 * "unhandled rejection". Whoever does await still receives the rejection.
 */
export class Deferred<T> {
  readonly promise: Promise<T>;
  private resolveFn!: (value: T) => void;
  private rejectFn!: (reason: unknown) => void;
  private settledValue = false;

  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.resolveFn = resolve;
      this.rejectFn = reject;
    });
    this.promise.catch(() => undefined);
  }

  get settled(): boolean {
    return this.settledValue;
  }

  resolve(value: T): void {
    if (this.settledValue) return;
    this.settledValue = true;
    this.resolveFn(value);
  }

  reject(reason: unknown): void {
    if (this.settledValue) return;
    this.settledValue = true;
    this.rejectFn(reason);
  }
}

/** Marks `promise` as handled (see Deferred) and returns it unchanged. */
export function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}
