/**
 * A promise with its resolve/reject exposed. Its rejection is marked as handled at birth: the
 * library creates promises the caller may never await (`sandbox.terminate()` without `await`, a
 * process nobody waits for), and a rejection of those must not crash the program as an
 * "unhandled rejection". Whoever does await still receives the rejection.
 */
export declare class Deferred<T> {
    readonly promise: Promise<T>;
    private resolveFn;
    private rejectFn;
    private settledValue;
    constructor();
    get settled(): boolean;
    resolve(value: T): void;
    reject(reason: unknown): void;
}
/** Marks `promise` as handled (see Deferred) and returns it unchanged. */
export declare function handled<T>(promise: Promise<T>): Promise<T>;
//# sourceMappingURL=deferred.d.ts.map