/**
 * What the protocol core tells the I/O layer: one variant per kind of fact ("the sandbox is
 * ready", "request 5 failed with this error", "output arrived for process 1", "reconnect now").
 * `ClientProtocol` returns arrays of these; `Sandbox` applies them.
 */
export {};
//# sourceMappingURL=effects.js.map