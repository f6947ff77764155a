/**
 * Base64 <-> bytes without depending on Node's Buffer, so the protocol layer also runs where only
 * the web platform exists (atob/btoa are global in Node 16+ and in browsers).
 */
export function bytesToBase64(bytes) {
    // Build the binary string in slices: String.fromCharCode(...hugeArray) overflows the stack.
    let binary = '';
    const slice = 0x8000;
    for (let i = 0; i < bytes.length; i += slice) {
        binary += String.fromCharCode(...bytes.subarray(i, i + slice));
    }
    return btoa(binary);
}
export function base64ToBytes(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++)
        bytes[i] = binary.charCodeAt(i);
    return bytes;
}
//# sourceMappingURL=base64.js.map