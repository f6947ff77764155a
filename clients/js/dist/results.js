/**
 * Plain data the API hands out: how a process ended (`ExecutionResult`), what `Sandbox.run()`
 * returns (`RunResult`), a row of `Sandbox.listProcesses()` (`ProcessInfo`), and what
 * `Sandbox.list()` returns (`SandboxList` of `SandboxInfo`). No behaviour.
 */
export {};
//# sourceMappingURL=results.js.map