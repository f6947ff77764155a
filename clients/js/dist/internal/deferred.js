/**
 * A promise with its resolve/reject exposed. Its rejection is marked as handled at birth: the
 * library creates promises the caller may never await (`sandbox.terminate()` without `await`, a
 * process nobody waits for), and a rejection of those must not crash the program as an
 * "unhandled rejection". Whoever does await still receives the rejection.
 */
export class Deferred {
    promise;
    resolveFn;
    rejectFn;
    settledValue = false;
    constructor() {
        this.promise = new Promise((resolve, reject) => {
            this.resolveFn = resolve;
            this.rejectFn = reject;
        });
        this.promise.catch(() => undefined);
    }
    get settled() {
        return this.settledValue;
    }
    resolve(value) {
        if (this.settledValue)
            return;
        this.settledValue = true;
        this.resolveFn(value);
    }
    reject(reason) {
        if (this.settledValue)
            return;
        this.settledValue = true;
        this.rejectFn(reason);
    }
}
/** Marks `promise` as handled (see Deferred) and returns it unchanged. */
export function handled(promise) {
    promise.catch(() => undefined);
    return promise;
}
//# sourceMappingURL=deferred.js.map