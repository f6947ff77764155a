// The playground's files panel: the files API over HTTP (docs/protocol.md "Files over HTTP"),
// same origin, authorised by the sandbox token (and the tab's API key, if one is set). The
// browser streams an upload's File as the request body and keeps a download as a Blob.

/** `/sandboxes/{id}/files?path=...&...`. */
export function filesUrl(sandboxId, path, extra = {}) {
  const query = new URLSearchParams({ path, ...extra });
  return `/sandboxes/${encodeURIComponent(sandboxId)}/files?${query}`;
}

/** The error a files request answered with, as a message. */
async function failure(response) {
  try {
    const body = await response.json();
    return `${body.code ?? response.status}: ${body.error ?? response.statusText}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

export class Files {
  /** `headers()`: the tab's Authorization header, if any. */
  constructor(sandboxId, token, headers) {
    this.sandboxId = sandboxId;
    this.token = token;
    this.headers = headers;
  }

  #headers() {
    return { ...this.headers(), 'X-Sandbox-Token': this.token };
  }

  /** The directory's entries (name, path, type, size, mode, mtime_unix_ms). */
  async list(path) {
    const response = await fetch(filesUrl(this.sandboxId, path, { list: '1' }), {
      headers: this.#headers(),
      cache: 'no-store',
    });
    if (!response.ok) throw new Error(await failure(response));
    const { entries = [] } = await response.json();
    return entries;
  }

  /** Writes `file` (a File or Blob) to `path`; its size. */
  async upload(path, file) {
    const response = await fetch(filesUrl(this.sandboxId, path), {
      method: 'PUT',
      headers: this.#headers(),
      body: file,
    });
    if (!response.ok) throw new Error(await failure(response));
    const { size } = await response.json();
    return size;
  }

  /** The file at `path` as a Blob. */
  async download(path) {
    const response = await fetch(filesUrl(this.sandboxId, path), { headers: this.#headers(), cache: 'no-store' });
    if (!response.ok) throw new Error(await failure(response));
    return response.blob();
  }
}
