/**
 * `GET /sandboxes`: the sandboxes of a server instance, or the checkpoints in its store; the twin
 * of the Python client's `_listing.py`.
 *
 * The request is plain HTTP (the service's base URL with `http(s)://`) made with the runtime's
 * `fetch`; the parser is separate and does no I/O, so it is tested against recorded answers.
 */
import type { SandboxList } from '../results.js';
/** The `GET /sandboxes` URL (`http(s)://`) for the service's base URL. */
export declare function listUrl(url: string, options: {
    checkpointed?: boolean | undefined;
    limit?: number | undefined;
    after?: string | undefined;
}): string;
/** The answer of `GET /sandboxes`; entries without an id are skipped. */
export declare function parseList(body: string): SandboxList;
/** `GET url` with `headers`; `timeout` in seconds (null: none). */
export declare function fetchList(url: string, headers: Readonly<Record<string, string>>, timeout: number | null): Promise<SandboxList>;
//# sourceMappingURL=listing.d.ts.map