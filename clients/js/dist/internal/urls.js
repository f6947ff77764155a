/** Endpoint URLs from the user's base URL (`ws://`, `wss://`, `http://` or `https://`). */
function base(url) {
    let parsed;
    try {
        parsed = new URL(url);
    }
    catch {
        throw new TypeError(`invalid sandbox server url: ${JSON.stringify(url)}`);
    }
    if (parsed.protocol === 'http:')
        parsed.protocol = 'ws:';
    else if (parsed.protocol === 'https:')
        parsed.protocol = 'wss:';
    else if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
        throw new TypeError(`unsupported url scheme ${JSON.stringify(parsed.protocol)} in ${url}: use ws://, wss://, http:// or https://`);
    }
    parsed.hash = '';
    parsed.search = '';
    return parsed;
}
/** The base URL's path without trailing slashes ('' for the root), to append endpoints to. */
function prefix(u) {
    return u.pathname.replace(/\/+$/, '');
}
export function createUrl(url) {
    const u = base(url);
    u.pathname = `${prefix(u)}/create`;
    return u.toString();
}
export function attachUrl(url, sandboxId, token) {
    const u = base(url);
    u.pathname = `${prefix(u)}/attach/${encodeURIComponent(sandboxId)}`;
    // encodeURIComponent, as Python's quote(safe=""): "/" "+" and " " are percent-encoded.
    u.search = `?sandbox_token=${encodeURIComponent(token)}`;
    return u.toString();
}
//# sourceMappingURL=urls.js.map