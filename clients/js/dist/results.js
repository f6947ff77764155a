/**
 * Plain data the API hands out: how a process ended (`ExecutionResult`), what `Sandbox.run()`
 * returns (`RunResult`), and a row of `Sandbox.listProcesses()` (`ProcessInfo`). No behaviour.
 */
export {};
//# sourceMappingURL=results.js.map